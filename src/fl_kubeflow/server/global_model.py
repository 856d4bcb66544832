"""The global model and its message: encoded once per round, sent to every client.

The first model fixes the signature (names, shapes, dtypes) every update must
match. Messages are model-sized and made every round, so their memory is used
again once no request is still sending an old one (fresh pages cost page
faults: see recycling.py). Not locked: the Federation reads and replaces the
model under its lock and makes the next message outside it.
"""

from __future__ import annotations

from fl_kubeflow import wire
from fl_kubeflow.recycling import Recycler
from fl_kubeflow.server.updates import Signature
from fl_kubeflow.wire import Weights


class GlobalModel:
    """The current global model (None before the first), its message and signature.

    Args:
        wire_dtype: How float32 tensors travel in the message.
    """

    def __init__(self, wire_dtype: str) -> None:
        self.wire_dtype = wire_dtype
        self.weights: Weights | None = None
        self.body: wire.Buffer = b""
        self.signature: Signature = {}
        # Where the messages' memory comes from (and is used again).
        self.bodies = Recycler()

    def start(self, weights: Weights) -> None:
        """Make ``weights`` (already checked) the first global model, fixing the signature."""
        self.replace(*self.message(weights, self.frame(weights)))
        self.signature = wire.describe(weights)

    def replace(self, weights: Weights, body: wire.Buffer) -> None:
        """Install a model and its message, both made by ``message``."""
        self.weights, self.body = weights, body

    def frame(self, template: Weights) -> wire.Frame:
        """The next global model's message, laid out like ``template``, to be filled."""
        return wire.Frame(template, self.wire_dtype, allocate=self.bodies.empty)

    def message(self, weights: Weights, frame: wire.Frame) -> tuple[Weights, wire.Buffer]:
        """The global model and its message, from ``weights`` (some perhaps in ``frame``).

        With float32 on the wire the model's tensors are the message's: one copy of the
        model in memory, and an aggregator can write its result straight there.
        Half-precision messages hold other values, so the model stays apart.
        """
        frame.fill(weights)
        body = frame.seal()
        return (frame.tensors if self.wire_dtype == "float32" else weights), body

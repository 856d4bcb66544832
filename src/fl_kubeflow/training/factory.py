"""Trainer factories: ``keras``, ``torch`` or a user's ``MODULE:FACTORY``.

A factory is any callable ``factory(options: TrainerOptions) -> Trainer`` (a class
whose constructor takes the options is one). Built-in names map to import paths so
that neither TensorFlow nor PyTorch is imported until a client builds its trainer.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from fl_kubeflow.client.trainer import Trainer
from fl_kubeflow.training.options import TrainerOptions

TrainerFactory = Callable[[TrainerOptions], Trainer]

BUILTIN_TRAINERS = {
    "keras": "fl_kubeflow.training.keras_trainer:KerasTrainer",
    "torch": "fl_kubeflow.training.torch_trainer:TorchTrainer",
}
TRAINER_METHODS = ("initial_weights", "fit", "evaluate")


class TrainerFactoryError(ValueError):
    """A trainer spec that cannot be imported, called, or does not give a Trainer."""


def is_builtin(spec: str) -> bool:
    """Whether ``spec`` names a built-in trainer rather than ``MODULE:FACTORY``."""
    return spec in BUILTIN_TRAINERS


def exports_keras(spec: str) -> bool:
    """Whether a run of this trainer's clients can end with a ``model.keras``.

    Only the built-in Keras trainer's models (mlp, cnn, a ``.keras`` file) can be
    rebuilt from the final weights without the clients' own code; other trainers'
    runs give ``weights.safetensors`` (and ``history.json``) only.
    """
    return spec == "keras"


def framework(spec: str) -> str:
    """What the trainer's weights belong to, for a model's metadata: keras, torch or custom."""
    return spec if is_builtin(spec) else "custom"


def _split(spec: str) -> tuple[str, str]:
    """``(module, attribute)`` of a built-in name or ``MODULE:ATTRIBUTE``; raise if neither."""
    module_name, sep, attribute = BUILTIN_TRAINERS.get(spec, spec).partition(":")
    if not sep or not module_name or not attribute:
        raise TrainerFactoryError(
            f"trainer {spec!r} is neither a built-in ({', '.join(BUILTIN_TRAINERS)}) "
            "nor MODULE:FACTORY, e.g. my_package.trainers:build"
        )
    return module_name, attribute


def check_findable(spec: str) -> None:
    """Raise unless ``spec`` is well formed and its module can be found, without running it.

    For checks before any process starts (``fl-kubeflow local``): the module itself,
    which may import a framework, is imported only by the clients.
    """
    module_name, _ = _split(spec)
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:  # a missing parent package, or a bad name
        found, reason = None, f": {exc}"
    else:
        reason = ""
    if found is None:
        raise TrainerFactoryError(
            f"trainer {spec!r}: cannot find module {module_name!r}{reason} "
            "(is the package installed in this image or on PYTHONPATH?)"
        )


def load_factory(spec: str) -> TrainerFactory:
    """Import the factory ``spec`` names: a built-in name or ``MODULE:ATTRIBUTE[.ATTR...]``."""
    module_name, attribute = _split(spec)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise TrainerFactoryError(
            f"trainer {spec!r}: cannot import module {module_name!r}: {exc} "
            "(is the package installed in this image or on PYTHONPATH?)"
        ) from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise TrainerFactoryError(
                f"trainer {spec!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not callable(target):
        raise TrainerFactoryError(
            f"trainer {spec!r}: {attribute!r} is a {type(target).__name__}, not a callable "
            "factory(options) -> Trainer"
        )
    return target


def check_trainer(trainer: object, origin: str) -> Trainer:
    """Return ``trainer`` if it has the Trainer methods, else raise naming what is missing.

    Args:
        trainer: What a factory returned, or what a caller passed as a trainer.
        origin: Where it came from, for the message, e.g. "trainer 'pkg:build' returned".
    """
    missing = [m for m in TRAINER_METHODS if not callable(getattr(trainer, m, None))]
    if missing:
        raise TrainerFactoryError(
            f"{origin} a {type(trainer).__name__}, not a Trainer: "
            f"it has no {', '.join(missing)} method(s) (see docs/trainers.md)"
        )
    return trainer  # type: ignore[return-value]


def build_trainer(spec: str, options: TrainerOptions) -> Trainer:
    """Build the trainer ``spec`` names for ``options``; errors name the spec and the problem."""
    factory = load_factory(spec)
    return check_trainer(factory(options), f"trainer {spec!r} returned")

"""Protocol v1 for any virtual client, over one keep-alive connection.

A ``FederatedClient`` holds a session per client and runs its whole life in a loop;
a worker drives thousands of clients step by step, so each call here names the
client it speaks for (``X-FL-Client-Id`` per request) and one ``Transport`` serves
them all. The requests and their bodies are the ones docs/protocol.md describes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fl_kubeflow import protocol, wire
from fl_kubeflow.client.trainer import EvaluateResult, FitResult
from fl_kubeflow.client.transport import BufferBody, ServerError, Transport


@dataclass
class RoundModel:
    """A global model as GET /v1/model answered it."""

    phase: str
    server_round: int
    weights: wire.Weights
    config: dict[str, Any]
    wire_dtype: str


@dataclass
class Sampled:
    """GET /v1/sampled's answer: the open round's sample, or the final evaluators."""

    phase: str
    server_round: int
    fit: list[str]
    evaluate: list[str]


class Calls:
    """The requests of protocol v1, each for the client it names.

    Args:
        url: The server's base URL.
        headers: Headers of every request (the run's Authorization).
        retry_timeout: How long a request retries an unreachable server.
    """

    def __init__(self, url: str, headers: dict[str, str], retry_timeout: float) -> None:
        self.transport = Transport(url, retry_timeout=retry_timeout, headers=headers)

    def close(self) -> None:
        self.transport.close()

    def join(self, client: str) -> dict[str, Any]:
        return self._post_json(protocol.JOIN_PATH, client, {"client_id": client})

    def propose_initial(self, client: str, weights: wire.Weights) -> None:
        self.transport.request(
            "POST",
            protocol.INITIAL_PATH,
            data=BufferBody(wire.encode_parts(weights)),
            headers=_as(client),
        )

    def sampled(self, server_round: int, wait: float) -> Sampled | None:
        """Who round ``server_round`` or later samples; None if no answer within ``wait``."""
        response = self.transport.request(
            "GET",
            protocol.SAMPLED_PATH,
            params={protocol.ROUND_PARAM: server_round, protocol.WAIT_PARAM: f"{wait:.3f}"},
            read_timeout=wait + self.transport.request_timeout,
        )
        if response.status_code == 204:
            return None
        body = response.json()
        return Sampled(body["phase"], body["round"], body["fit"], body["evaluate"])

    def model(self, client: str, server_round: int, wait: float) -> RoundModel | None:
        """The global model for ``client`` (round ``server_round`` or later); None on 204."""
        response = self.transport.request(
            "GET",
            protocol.MODEL_PATH,
            params={protocol.ROUND_PARAM: server_round, protocol.WAIT_PARAM: f"{wait:.3f}"},
            headers=_as(client),
            read_timeout=wait + self.transport.request_timeout,
            into_buffer=True,
        )
        if response.status_code == 204:
            return None
        wire_dtype = response.headers.get(protocol.WIRE_DTYPE_HEADER, "float32")
        return RoundModel(
            phase=response.headers[protocol.PHASE_HEADER],
            server_round=int(response.headers[protocol.ROUND_HEADER]),
            weights=wire.decode(response.buffer, wire_dtype=wire_dtype),
            config=json.loads(response.headers.get(protocol.CONFIG_HEADER) or "{}"),
            wire_dtype=wire_dtype,
        )

    def update(self, client: str, model: RoundModel, result: FitResult) -> bool:
        """Send ``client``'s update; False if the round closed without it (wrong_round) or
        already counted one of this client's (conflict), which then stands."""
        headers = {
            **_as(client),
            protocol.ROUND_HEADER: str(model.server_round),
            protocol.NUM_EXAMPLES_HEADER: str(result.num_examples),
            protocol.METRICS_HEADER: json.dumps(result.metrics),
            "Content-Type": wire.CONTENT_TYPE,
        }
        body = BufferBody(wire.encode_parts(result.weights, wire_dtype=model.wire_dtype))
        try:
            self.transport.request("POST", protocol.UPDATE_PATH, data=body, headers=headers)
        except ServerError as exc:
            if exc.code not in (protocol.WRONG_ROUND, protocol.CONFLICT):
                raise
            return False
        return True

    def evaluate(self, client: str, server_round: int, result: EvaluateResult) -> None:
        payload = {
            "client_id": client,
            "round": server_round,
            "num_examples": result.num_examples,
            "metrics": result.metrics,
        }
        self._post_json(protocol.EVALUATE_PATH, client, payload)

    def leave_all(self, clients: Sequence[str]) -> None:
        """``clients`` (at most protocol.MAX_LEAVE_IDS) leave in one request."""
        payload = {protocol.LEAVE_IDS_KEY: list(clients)}
        self.transport.request("POST", protocol.LEAVE_PATH, json=payload)

    def _post_json(self, path: str, client: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self.transport.request("POST", path, json=payload, headers=_as(client)).json()


def _as(client: str) -> dict[str, str]:
    return {protocol.CLIENT_ID_HEADER: client}

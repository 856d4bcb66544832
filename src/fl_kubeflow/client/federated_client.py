"""The client side of a run: join, then fetch -> fit -> submit until "finished"."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fl_kubeflow import defaults, protocol, wire
from fl_kubeflow.client.clipping import clip_for_config
from fl_kubeflow.client.secure_aggregation import (
    AnnouncedKeys,
    ClientRound,
    RoundAbandoned,
    run_secure_round,
)
from fl_kubeflow.client.signature import ModelMismatch, check_matches
from fl_kubeflow.client.trainer import FitResult, Trainer
from fl_kubeflow.client.transport import (
    Answer,
    BufferBody,
    ServerError,
    ServerUnreachable,
    Transport,
)
from fl_kubeflow.recycling import Recycler

log = logging.getLogger("fl_kubeflow.client")

# After "finished", how long the final evaluation and leave may keep retrying.
GOODBYE_RETRY_S = 10.0


class FederationFailed(Exception):
    """The server reported that the run failed; the message is its reason."""


@dataclass
class ClientSummary:
    """What one client did: per round, its training and evaluation metrics."""

    client_id: str
    rounds_trained: list[int] = field(default_factory=list)
    fit_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    eval_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    stale_rounds: list[int] = field(default_factory=list)
    final_round: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "rounds_trained": self.rounds_trained,
            "stale_rounds": self.stale_rounds,
            "final_round": self.final_round,
            "fit": {str(k): v for k, v in self.fit_metrics.items()},
            "evaluate": {str(k): v for k, v in self.eval_metrics.items()},
        }


@dataclass
class _Model:
    phase: str
    server_round: int
    weights: wire.Weights
    config: dict[str, Any]
    wire_dtype: str = "float32"


class FederatedClient:
    """Drives one ``Trainer`` through a federated run.

    Args:
        server_url: Base URL of the aggregation server, e.g. http://fl-abc.ns.svc:8080.
        client_id: This client's id, unique in the run.
        trainer: The model and data (see ``fl_kubeflow.client.trainer``).
        retry_timeout: How long a request keeps retrying an unreachable server.
        round_wait_timeout: Longest wait for the next round to open.
        poll_wait: Seconds each long-poll asks the server to hold.
        request_timeout: Read timeout of ordinary requests.
        headers: Extra headers on every request (the run's Authorization).
        verify: TLS verification: True (certifi's CA bundle, or REQUESTS_CA_BUNDLE /
            CURL_CA_BUNDLE), a CA bundle path, or False.
        refresh_headers: Called when the server answers 401, e.g. to re-read the run's
            token after the server pod was replaced; its headers replace the old ones
            and the request is tried once more.
        wire_dtype: How this client sends float32 tensors (float32, float16, bfloat16);
            None: as the server sends the model (its X-FL-Wire-Dtype header).
        check_model: Compare the first global model's tensor names, shapes and dtypes
            with the trainer's initial weights and raise ModelMismatch before any
            training if they differ.
    """

    def __init__(
        self,
        server_url: str,
        client_id: str,
        trainer: Trainer,
        *,
        retry_timeout: float = defaults.RETRY_TIMEOUT,
        round_wait_timeout: float = defaults.ROUND_WAIT_TIMEOUT,
        poll_wait: float = 30.0,
        request_timeout: float = 120.0,
        headers: dict[str, str] | None = None,
        verify: bool | str = True,
        refresh_headers: Callable[[], dict[str, str]] | None = None,
        wire_dtype: str | None = None,
        check_model: bool = True,
    ) -> None:
        self.client_id = client_id
        self.check_model = check_model
        self.wire_dtype = None if wire_dtype is None else wire.check_wire_dtype(wire_dtype)
        self.refresh_headers = refresh_headers
        self.trainer = trainer
        self.round_wait_timeout = round_wait_timeout
        self.poll_wait = poll_wait
        self.transport = Transport(
            server_url,
            retry_timeout=retry_timeout,
            request_timeout=request_timeout,
            headers={protocol.CLIENT_ID_HEADER: client_id, **(headers or {})},
            verify=verify,
        )
        # Keys announced in a secure round's reveal, for the round after it only.
        self._announced: AnnouncedKeys | None = None
        # A secure round's masked vector, its memory used again the next round.
        self._secure_vectors = Recycler(per_kind=1)

    def run(self) -> ClientSummary:
        """Take part in the run until the server says it is finished.

        Raises:
            ModelMismatch: the server's model does not fit the trainer (when
                ``check_model``), before any training or evaluation.
            SecAggViolation: in a secure round, the server asked for what would break
                this client's privacy (client/secure_aggregation.py says what it refuses).
        """
        summary = ClientSummary(self.client_id)
        try:
            info = self._join()
            log.info("client %s joined (%d rounds)", self.client_id, info["num_rounds"])
            evaluated: set[int] = set()
            checked = not self.check_model
            model = self._wait_for_model(1)
            while True:
                if not checked:
                    self._check_model(model.weights)
                    checked = True
                if model.phase == protocol.Phase.FINISHED.value:
                    summary.final_round = model.server_round
                    self._say_goodbye(model, summary, evaluated)
                    log.info(
                        "client %s: finished after round %d", self.client_id, model.server_round
                    )
                    return summary
                if model.config.get("evaluate", True):  # fraction_evaluate may skip us
                    self._evaluate(model.weights, model.server_round - 1, summary, evaluated)
                # The update's answer is the next model when the server has it in time.
                answered = self._fit(model, summary)
                model = answered or self._wait_for_model(model.server_round + 1)
        finally:
            self.transport.close()

    def _check_model(self, weights: wire.Weights) -> None:
        """Raise ModelMismatch if the server's model does not fit the trainer; leave first.

        The leave is best effort: it tells the server not to wait for this client.
        """
        try:
            check_matches(weights, self.trainer.initial_weights(), self.client_id)
        except ModelMismatch:
            self.transport.retry_timeout = min(self.transport.retry_timeout, GOODBYE_RETRY_S)
            try:
                self._post_json(protocol.LEAVE_PATH, {"client_id": self.client_id})
            except (ServerError, ServerUnreachable, FederationFailed) as exc:
                log.warning("client %s: could not leave the run: %s", self.client_id, exc)
            raise

    def _say_goodbye(self, model: _Model, summary: ClientSummary, evaluated: set[int]) -> None:
        """Send the final evaluation and leave: best effort, the run is over already.

        The server waits for this only up to its grace period; if it has gone, the
        client has done its part and must not spend its retry timeout (or fail) on it.
        """
        self.transport.retry_timeout = min(self.transport.retry_timeout, GOODBYE_RETRY_S)
        try:
            if model.config.get("evaluate", True):
                self._evaluate(model.weights, model.server_round, summary, evaluated)
            self._post_json(protocol.LEAVE_PATH, {"client_id": self.client_id})
        except (ServerError, ServerUnreachable) as exc:
            log.warning(
                "client %s: the run is finished; the goodbye was lost: %s", self.client_id, exc
            )

    def _fit(self, model: _Model, summary: ClientSummary) -> _Model | None:
        """Train on ``model`` and send the update; the next model if its answer was that."""
        result = self.trainer.fit(model.weights, model.server_round, model.config)
        # Client-side DP clipping, when the round's config asks for it (else unchanged).
        weights, clip_metrics = clip_for_config(result.weights, model.weights, model.config)
        result = FitResult(weights, result.num_examples, {**result.metrics, **clip_metrics})
        answered = None
        try:
            if protocol.SECAGG_CONFIG_KEY in model.config:
                result, answered = self._submit_secure(model, result)
            else:
                answered = self._submit(model, result)
        except RoundAbandoned as exc:
            log.warning("client %s: leaving the secure round: %s", self.client_id, exc)
            summary.stale_rounds.append(model.server_round)
            return None
        except ServerError as exc:
            if exc.code == protocol.RUN_FAILED:
                raise FederationFailed(exc.message) from None
            if exc.code == protocol.CONFLICT:
                # The round already counted another update (or keys) from this id: ours
                # from before a restart (trained again, so not the same bytes). That stands.
                log.warning(
                    "client %s: round %d already has our update: %s",
                    self.client_id,
                    model.server_round,
                    exc.message,
                )
                return None
            if exc.code != protocol.WRONG_ROUND:
                raise
            # Too late: the round (or a secure round's stage) closed without us. Catch up
            # with the next one.
            log.warning(
                "client %s: update for round %d refused: %s",
                self.client_id,
                model.server_round,
                exc.message,
            )
            summary.stale_rounds.append(model.server_round)
            return None
        summary.rounds_trained.append(model.server_round)
        summary.fit_metrics[model.server_round] = result.metrics
        log.info(
            "client %s: round %d trained on %d examples %s",
            self.client_id,
            model.server_round,
            result.num_examples,
            _fmt(result.metrics),
        )
        return answered

    def _submit(self, model: _Model, result: FitResult) -> _Model | None:
        """Send the update (POST /v1/update), asking for the next model as its answer.

        Returns that model, or None when the answer is the update's JSON alone: the
        next round had not opened within the wait (202), or the server is one that
        ignores ``next`` (200 JSON); the client then long-polls for it as ever.
        """
        headers = {
            protocol.ROUND_HEADER: str(model.server_round),
            protocol.NUM_EXAMPLES_HEADER: str(result.num_examples),
            protocol.METRICS_HEADER: json.dumps(result.metrics),
            "Content-Type": wire.CONTENT_TYPE,
        }
        # Sent from the trainer's arrays as they are: no message-sized copy.
        wire_dtype = self.wire_dtype or model.wire_dtype
        body = BufferBody(wire.encode_parts(result.weights, wire_dtype=wire_dtype))
        wait = min(self.poll_wait, self.round_wait_timeout)
        response = self._call(
            "POST",
            protocol.UPDATE_PATH,
            data=body,
            headers=headers,
            params={protocol.NEXT_PARAM: "1", protocol.WAIT_PARAM: f"{wait:.3f}"},
            read_timeout=wait + self.transport.request_timeout,
            into_buffer=True,
        )
        if response.headers.get("Content-Type", "").split(";")[0] != wire.CONTENT_TYPE:
            return None
        return self._model_from(response)

    def _submit_secure(self, model: _Model, result: FitResult) -> tuple[FitResult, _Model | None]:
        """Take part in the round's secure aggregation; the result with its metrics as
        sent, and the next model if the reveal's answer was that.

        The change is against the model as this client decoded it: the server's base is
        the same decoding of its round message, so half-precision wire stays exact.
        """
        announced, self._announced = self._announced, None
        secure = ClientRound.from_config(
            self.client_id, model.server_round, model.config, announced
        )
        try:
            outcome = run_secure_round(
                self._call,
                secure,
                result.weights,
                model.weights,
                result.num_examples,
                result.metrics,
                poll_wait=self.poll_wait,
                request_timeout=self.transport.request_timeout,
                timeout=self.round_wait_timeout,
                arrays=self._secure_vectors,
            )
        except BaseException:
            # The next round's secrets, if made, go with this round's failure.
            if secure.next_keys is not None:
                secure.next_keys.close_ahead()
            raise
        self._announced = outcome.next_keys
        answered = None if outcome.next_model is None else self._model_from(outcome.next_model)
        return FitResult(result.weights, result.num_examples, outcome.metrics), answered

    def _evaluate(
        self, weights: wire.Weights, server_round: int, summary: ClientSummary, done: set[int]
    ) -> None:
        if server_round in done:
            return
        done.add(server_round)
        result = self.trainer.evaluate(weights, server_round)
        if result is None:
            return
        summary.eval_metrics[server_round] = result.metrics
        payload = {
            "client_id": self.client_id,
            "round": server_round,
            "num_examples": result.num_examples,
            "metrics": result.metrics,
        }
        try:
            self._post_json(protocol.EVALUATE_PATH, payload)
        except ServerError as exc:
            if exc.code != protocol.WRONG_ROUND:
                raise
            # A server restarted from an older checkpoint has not seen that round yet:
            # the evaluation is lost, the training goes on.
            log.warning(
                "client %s: evaluation of round %d refused: %s",
                self.client_id,
                server_round,
                exc.message,
            )

    def _wait_for_model(self, server_round: int) -> _Model:
        deadline = time.monotonic() + self.round_wait_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"client {self.client_id}: round {server_round} did not open within "
                    f"round_wait_timeout={self.round_wait_timeout:g}s"
                )
            wait = min(self.poll_wait, remaining)
            try:
                response = self._call(
                    "GET",
                    protocol.MODEL_PATH,
                    params={protocol.ROUND_PARAM: server_round, protocol.WAIT_PARAM: f"{wait:.3f}"},
                    read_timeout=wait + self.transport.request_timeout,
                    into_buffer=True,
                )
            except ServerError as exc:
                if exc.code == protocol.RUN_FAILED:
                    raise FederationFailed(exc.message) from None
                raise
            if response.status_code == 204:
                continue
            return self._model_from(response)

    def _model_from(self, response: Answer) -> _Model:
        """The model of a 200 answer read with ``into_buffer`` (GET /v1/model, or an
        update's answer with ``next``)."""
        # The server says how it sent float32 tensors; absent (an older server): as is.
        wire_dtype = response.headers.get(protocol.WIRE_DTYPE_HEADER, "float32")
        if wire_dtype not in wire.WIRE_DTYPES:
            raise FederationFailed(f"the server sends weights as {wire_dtype!r}, unknown here")
        return _Model(
            phase=response.headers.get(protocol.PHASE_HEADER, protocol.Phase.FIT.value),
            server_round=int(response.headers[protocol.ROUND_HEADER]),
            # Views of the buffer the body was read into: no copy.
            weights=wire.decode(response.buffer, wire_dtype=wire_dtype),
            config=json.loads(response.headers.get(protocol.CONFIG_HEADER) or "{}"),
            wire_dtype=wire_dtype,
        )

    def _call(self, method: str, path: str, *, refreshed: bool = False, **kwargs: Any) -> Answer:
        """A request; if the server restarted and no longer knows us, join again and retry."""
        try:
            return self.transport.request(method, path, **kwargs)
        except ServerError as exc:
            if exc.code == protocol.UNAUTHORIZED and self.refresh_headers and not refreshed:
                log.warning("client %s: token refused; reading it again", self.client_id)
                self.transport.headers.update(self.refresh_headers())
                return self._call(method, path, refreshed=True, **kwargs)
            if exc.code != protocol.UNKNOWN_CLIENT or path == protocol.JOIN_PATH:
                raise
            log.warning(
                "client %s: the server does not know us (restarted?); rejoining", self.client_id
            )
            self._join()
            return self.transport.request(method, path, **kwargs)

    def _join(self) -> dict[str, Any]:
        """Join (or rejoin); a server with no model yet gets our initial weights.

        On a rejoin too: a server restarted without a checkpoint has no model, and
        would otherwise wait for an initial proposal that never comes.
        """
        info = self._post_json(protocol.JOIN_PATH, {"client_id": self.client_id})
        if info.get("propose_initial"):
            parts = wire.encode_parts(self.trainer.initial_weights())
            try:
                self.transport.request("POST", protocol.INITIAL_PATH, data=BufferBody(parts))
            except ServerError as exc:
                # The run may fail between the join and the proposal (its join timeout).
                if exc.code == protocol.RUN_FAILED:
                    raise FederationFailed(exc.message) from None
                raise
        return info

    def _post_json(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._call("POST", path, json=payload).json()
        except ServerError as exc:
            if exc.code == protocol.RUN_FAILED:
                raise FederationFailed(exc.message) from None
            raise


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())

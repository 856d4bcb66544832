"""The HTTP face of a Federation: a Flask app factory, no module-level state.

Protocol v1 is documented in docs/protocol.md. Weights travel as safetensors
bodies; everything else is small JSON or headers.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import wrap_file

from fl_kubeflow import metrics as metrics_lib
from fl_kubeflow import protocol, wire
from fl_kubeflow.protocol import Phase, SecAggStage
from fl_kubeflow.secagg import keys, messages, shamir
from fl_kubeflow.server import body_transport, prometheus_text
from fl_kubeflow.server.buffer_file import BufferFile
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.errors import BadRequest, RequestError, TooLarge
from fl_kubeflow.server.federation import Federation, ModelAnswer
from fl_kubeflow.server.identity import Identities, identities_for
from fl_kubeflow.server.model_waits import PARKED_KEY

log = logging.getLogger("fl_kubeflow.server")

MAX_JSON_BYTES = 64 * 1024
# Integers in headers and query parameters: a decimal of at most this many digits, so a
# thousand-digit value is refused before int() and nothing downstream meets a huge number.
MAX_INT_DIGITS = 40
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
MAX_METRICS_HEADER = 4096
# Bytes per piece when a server without a file wrapper (cheroot) sends the model.
SEND_PIECE = 1 << 20


def create_app(
    federation: Federation, config: ServerConfig, identities: Identities | None = None
) -> Flask:
    """Build the Flask app serving ``federation``.

    Args:
        federation: The run.
        config: Its configuration.
        identities: Who may call /v1 (server/identity.py); None: those ``config`` names
            (its credential registry, not reloaded, or its shared token).
    """
    if identities is None:
        identities = identities_for(config)
    app = Flask("fl_kubeflow.server")
    # Backstop only: handlers check sizes themselves to answer with a JSON reason.
    app.config["MAX_CONTENT_LENGTH"] = config.max_update_bytes + MAX_JSON_BYTES

    @app.before_request
    def _authenticate() -> None:
        # On the headers alone, before any body is read: 401, then 403.
        with _counted(federation):
            g.principal = identities.authenticate(
                request.headers.get("Authorization"),
                request.headers.get(protocol.CLIENT_ID_HEADER),
                request.path,
            )

    def claimed_id(body: dict[str, Any]) -> str:
        """A JSON body's ``client_id``, which the request's credential must be (403)."""
        client_id = _str_field(body, "client_id")
        with _counted(federation):
            identities.check_claim(g.principal, client_id)
        return client_id

    @app.errorhandler(RequestError)
    def _request_error(exc: RequestError) -> tuple[Response, int]:
        return jsonify(exc.body()), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        code = exc.code or 500
        return jsonify(
            protocol.error_body(exc.name.lower().replace(" ", "_"), exc.description)
        ), code

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unexpected error handling %s %s", request.method, request.path)
        return jsonify(protocol.error_body(protocol.INTERNAL, f"{type(exc).__name__}: {exc}")), 500

    @app.get(protocol.HEALTH_PATH)
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get(protocol.READY_PATH)
    def readyz() -> tuple[Response, int]:
        phase = federation.phase
        ready = phase is not Phase.FAILED
        return jsonify({"ready": ready, "phase": phase.value}), 200 if ready else 503

    @app.get(protocol.METRICS_PATH)
    def prometheus() -> Response:
        text = prometheus_text.exposition(federation.metrics())
        return Response(text, mimetype=prometheus_text.CONTENT_TYPE)

    @app.get(protocol.STATUS_PATH)
    def status() -> Response:
        since = request.args.get(protocol.SINCE_PARAM)
        return jsonify(federation.status(None if since is None else _int_arg(protocol.SINCE_PARAM)))

    @app.get(protocol.SAMPLED_PATH)
    def sampled() -> Response:
        server_round = _int_arg(protocol.ROUND_PARAM)
        wait = _float_arg(protocol.WAIT_PARAM, default=config.poll_timeout)
        answer = federation.wait_sampled(server_round, wait)
        if answer is None:
            return Response(status=204, headers={"Retry-After": "0"})
        return jsonify(answer)

    @app.post(protocol.JOIN_PATH)
    def join() -> Response:
        return jsonify(federation.join(claimed_id(_json_body())))

    bodies_in_memory = body_transport.memory_gate(config)
    # Updates and reveals waiting for the next model in a worker thread (config.update_holds).
    update_holds = threading.BoundedSemaphore(config.update_holds)

    @app.post(protocol.INITIAL_PATH)
    def initial() -> tuple[Response, int]:
        client_id = _client_id()
        with bodies_in_memory:
            accepted = federation.propose_initial(client_id, _weights_body(config))
        return jsonify({"accepted": accepted}), 201 if accepted else 200

    @app.get(protocol.MODEL_PATH)
    def model() -> Response:
        client_id = _client_id()
        server_round = _int_arg(protocol.ROUND_PARAM)
        wait = _float_arg(protocol.WAIT_PARAM, default=config.poll_timeout)
        parked = request.environ.get(PARKED_KEY)
        if parked is not None:  # waited for without a thread already (server/parking.py)
            answer = parked.result()
        else:
            answer = federation.wait_for_model(client_id, server_round, wait)
        if answer is None:
            return Response(status=204, headers={"Retry-After": "0"})
        return _model_response(answer, config)

    @app.post(protocol.UPDATE_PATH)
    def update() -> tuple[Response, int]:
        client_id = _client_id()
        server_round = _int_header(protocol.ROUND_HEADER)
        num_examples = _int_header(protocol.NUM_EXAMPLES_HEADER)
        metrics = _metrics_header()
        next_wait = _next_wait(config)
        with bodies_in_memory:
            accepted = federation.submit_update(
                client_id,
                server_round,
                num_examples,
                metrics,
                _weights_body(config),
                identities.limit_for(client_id),
            )
        if next_wait is not None:
            # The update is folded: while its answer waits for the next round, its body's
            # receive slot must not (the other clients' updates would queue behind it).
            body_transport.release_slot(request)
        return then_next_model(client_id, server_round, accepted, next_wait)

    def then_next_model(
        client_id: str, server_round: int, accepted: dict[str, Any], next_wait: float | None
    ) -> tuple[Response, int]:
        """A round's last submission answered (an update, or a secure round's reveal):
        with ``accepted`` alone (``next`` not asked), or with the next model exactly as
        GET /v1/model?round=k+1 gives it: the same rule of who gets which model
        (Federation._try_model), in either mode. At most ``config.update_holds`` wait
        for it in a worker thread; with every hold taken it is only looked up: none yet
        is 202, and the client long-polls."""
        if next_wait is None:
            return jsonify(accepted), 200
        held = update_holds.acquire(blocking=False)
        try:
            answer = federation.wait_for_model(
                client_id, server_round + 1, next_wait if held else 0.0
            )
        finally:
            if held:
                update_holds.release()
        if answer is None:
            return jsonify(accepted), 202
        return _model_response(answer, config, {protocol.UPDATE_HEADER: json.dumps(accepted)}), 200

    @app.post(protocol.EVALUATE_PATH)
    def evaluate() -> Response:
        body = _json_body()
        client_id = claimed_id(body)
        result = federation.submit_evaluation(
            client_id,
            _int_field(body, "round"),
            _int_field(body, "num_examples"),
            _validated_metrics(body.get("metrics", {})),
            identities.limit_for(client_id),
        )
        return jsonify(result)

    @app.post(protocol.LEAVE_PATH)
    def leave() -> Response:
        body = _json_body()
        if protocol.LEAVE_IDS_KEY not in body:
            federation.leave(claimed_id(body))
            return jsonify({"left": True})
        if "client_id" in body:
            raise BadRequest(f"give 'client_id' or {protocol.LEAVE_IDS_KEY!r}, not both")
        client_ids = _id_list(body, protocol.LEAVE_IDS_KEY, protocol.MAX_LEAVE_IDS)
        # Each id as if it came alone: the shared token may act for any client, a
        # client's own credential only for itself (403 before anyone leaves).
        with _counted(federation):
            for client_id in client_ids:
                identities.check_claim(g.principal, client_id)
        federation.leave_all(client_ids)
        return jsonify({"left": True, "clients": len(client_ids)})

    # Secure aggregation (docs/secure_aggregation.md): each POST answers with the next
    # stage's input if it is ready within ``wait`` (200), else 202; each GET long-polls
    # for that input (204 if not yet), as /v1/model does.

    def post_wait() -> float:
        return _float_arg(protocol.WAIT_PARAM, default=0.0)

    def get_wait() -> float:
        return _float_arg(protocol.WAIT_PARAM, default=config.poll_timeout)

    @app.post(protocol.SECAGG_KEYS_PATH)
    def secagg_keys() -> tuple[Response, int]:
        body = _json_body()
        client_id, server_round = claimed_id(body), _int_field(body, "round")
        federation.submit_keys(
            client_id,
            server_round,
            _binary_field(body, "encryption_key", keys.KEY_BYTES),
            _binary_field(body, "masking_key", keys.KEY_BYTES),
        )
        roster = federation.wait_roster(client_id, server_round, post_wait())
        return _staged(roster, {"round": server_round, "stage": SecAggStage.KEYS.value})

    @app.get(protocol.SECAGG_ROSTER_PATH)
    def secagg_roster() -> Response:
        return _polled(
            federation.wait_roster(_client_id(), _int_arg(protocol.ROUND_PARAM), get_wait())
        )

    @app.post(protocol.SECAGG_SHARES_PATH)
    def secagg_shares() -> tuple[Response, int]:
        body = _json_body()
        client_id, server_round = claimed_id(body), _int_field(body, "round")
        shares = _binary_map(body, "shares", keys.CIPHERTEXT_BYTES)
        federation.submit_shares(client_id, server_round, shares)
        inbox = federation.wait_inbox(client_id, server_round, post_wait())
        return _staged(inbox, {"round": server_round, "stage": SecAggStage.SHARES.value})

    @app.get(protocol.SECAGG_INBOX_PATH)
    def secagg_inbox() -> Response:
        return _polled(
            federation.wait_inbox(_client_id(), _int_arg(protocol.ROUND_PARAM), get_wait())
        )

    @app.post(protocol.SECAGG_MASKED_PATH)
    def secagg_masked() -> tuple[Response, int]:
        client_id = _client_id()
        server_round = _int_header(protocol.ROUND_HEADER)
        metrics = _metrics_header()
        next_keys = _next_keys_header()
        with bodies_in_memory:
            accepted = federation.submit_masked(
                client_id, server_round, metrics, _weights_body(config), next_keys
            )
        # The answer waits for the stage's end: the folded body's receive slot must not,
        # or the other clients' masked inputs queue behind it for --slot-patience.
        body_transport.release_slot(request)
        survivors = federation.wait_unmask(client_id, server_round, post_wait())
        return _staged(None if survivors is None else {**accepted, **survivors}, accepted)

    @app.get(protocol.SECAGG_UNMASK_PATH)
    def secagg_unmask() -> Response:
        return _polled(
            federation.wait_unmask(_client_id(), _int_arg(protocol.ROUND_PARAM), get_wait())
        )

    @app.post(protocol.SECAGG_REVEAL_PATH)
    def secagg_reveal() -> tuple[Response, int]:
        # Checked before the body, as an update's: a bad ``next`` changes nothing.
        next_wait = _next_wait(config)
        body = _json_body()
        client_id, server_round = claimed_id(body), _int_field(body, "round")
        federation.submit_reveal(
            client_id,
            server_round,
            _binary_map(body, "self_mask_shares", shamir.SHARE_BYTES),
            _binary_map(body, "mask_key_shares", shamir.SHARE_BYTES),
            _next_keys(body),
            _next_shares(body),
        )
        # The round's last message from this client: with ``next=1`` its answer is the
        # next round's model, as an update's is (docs/protocol.md, Update and next model).
        return then_next_model(client_id, server_round, {"accepted": True}, next_wait)

    return app


def _model_response(
    answer: ModelAnswer, config: ServerConfig, headers: dict[str, str] | None = None
) -> Response:
    """A model answer as GET /v1/model sends it (and an update's answer with ``next``)."""
    # The cached body goes out through the server's file wrapper (as send_file does):
    # waitress then sends it from the one cached message, where a plain body would be
    # copied into an in-memory buffer and then a temporary file per client.
    body = BufferFile(answer.body, views="wsgi.file_wrapper" in request.environ)
    response = Response(
        wrap_file(request.environ, body, buffer_size=SEND_PIECE),
        mimetype=wire.CONTENT_TYPE,
        headers={
            protocol.ROUND_HEADER: str(answer.server_round),
            protocol.PHASE_HEADER: answer.phase.value,
            protocol.CONFIG_HEADER: json.dumps(answer.config),
            protocol.WIRE_DTYPE_HEADER: config.wire_dtype,
            **(headers or {}),
        },
        direct_passthrough=True,
    )
    response.content_length = len(answer.body)
    return response


def _next_wait(config: ServerConfig) -> float | None:
    """An update's ``next`` and ``wait``: how long its answer may wait for the next
    round's model (at most --poll-timeout, as the long-poll's); None: answer at once."""
    raw = request.args.get(protocol.NEXT_PARAM)
    if raw is None or raw == "0":
        return None
    if raw != "1":
        raise BadRequest(
            f"query parameter {protocol.NEXT_PARAM!r} must be 0 or 1, got {raw[:40]!r}"
        )
    return _float_arg(protocol.WAIT_PARAM, default=config.poll_timeout)


def _staged(ready: dict[str, Any] | None, pending: dict[str, Any]) -> tuple[Response, int]:
    """A stage POST's answer: the next stage's input (200), or what was accepted (202)."""
    return (jsonify(ready), 200) if ready is not None else (jsonify(pending), 202)


def _polled(ready: dict[str, Any] | None) -> Response:
    """A stage GET's answer: the input it waited for, or 204 (ask again)."""
    if ready is None:
        return Response(status=204, headers={"Retry-After": "0"})
    return jsonify(ready)


@contextmanager
def _counted(federation: Federation) -> Iterator[None]:
    """Count a refusal by its code in the run's /metrics, and let it go on."""
    try:
        yield
    except RequestError as exc:
        federation.count_rejection(exc.code)
        raise


def _client_id() -> str:
    value = request.headers.get(protocol.CLIENT_ID_HEADER)
    if not value:
        raise BadRequest(f"missing header {protocol.CLIENT_ID_HEADER}")
    return value


def _parse_int(raw: str) -> int | None:
    """``raw`` as an integer if it is a decimal of at most MAX_INT_DIGITS digits; else None."""
    text = raw.strip()
    if len(text) > MAX_INT_DIGITS + 1 or not _INT_TEXT.fullmatch(text):
        return None
    return int(text)


def _int_header(name: str) -> int:
    raw = request.headers.get(name)
    if raw is None:
        raise BadRequest(f"missing header {name}")
    value = _parse_int(raw)
    if value is None:
        raise BadRequest(
            f"header {name} must be an integer of at most {MAX_INT_DIGITS} digits, got {raw[:40]!r}"
        )
    return value


def _int_arg(name: str) -> int:
    raw = request.args.get(name)
    if raw is None:
        raise BadRequest(f"missing query parameter {name!r}")
    value = _parse_int(raw)
    if value is None:
        raise BadRequest(
            f"query parameter {name!r} must be an integer of at most {MAX_INT_DIGITS} "
            f"digits, got {raw[:40]!r}"
        )
    return value


def _float_arg(name: str, default: float) -> float:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be a number, got {raw[:40]!r}") from None
    if not value >= 0:
        raise BadRequest(f"query parameter {name!r} must be >= 0, got {raw[:40]!r}")
    return value


def _metrics_header() -> dict[str, float]:
    name = protocol.METRICS_HEADER
    raw = request.headers.get(name, "{}")
    if len(raw) > MAX_METRICS_HEADER:
        raise BadRequest(f"header {name} is {len(raw)} bytes; at most {MAX_METRICS_HEADER}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"header {name} is not JSON: {exc}") from None
    return _validated_metrics(value)


def _validated_metrics(value: Any) -> dict[str, float]:
    try:
        return metrics_lib.validate(value)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _weights_body(config: ServerConfig) -> memoryview:
    """The request's model body, in one buffer (server/body_transport.py)."""
    return body_transport.read_body(request, config.max_update_bytes)


def _json_body() -> dict[str, Any]:
    if (request.content_length or 0) > MAX_JSON_BYTES:
        raise TooLarge(f"JSON body exceeds {MAX_JSON_BYTES} bytes")
    value = request.get_json(silent=True, force=True)
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object")
    return value


def _str_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"field {name!r} must be a non-empty string")
    return value


def _id_list(body: dict[str, Any], name: str, most: int) -> list[str]:
    """A field that is a list of 1 to ``most`` client ids; 400 otherwise."""
    value = body.get(name)
    if not isinstance(value, list) or not 1 <= len(value) <= most:
        raise BadRequest(f"field {name!r} must be a list of 1 to {most} client ids")
    for client_id in value:
        if not isinstance(client_id, str) or not protocol.valid_client_id(client_id):
            raise BadRequest(f"field {name!r} holds {client_id!r:.70}, not a client id")
    return value


def _binary_field(body: dict[str, Any], name: str, size: int) -> bytes:
    """A base64 field of ``size`` bytes (secagg.messages); 400 otherwise."""
    try:
        return messages.decode(body.get(name), size, name)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _binary_map(body: dict[str, Any], name: str, size: int) -> dict[str, bytes]:
    """A field mapping client ids to base64 values of ``size`` bytes each; 400 otherwise."""
    value = body.get(name, {})
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise BadRequest(f"field {name!r} must map client ids to base64 values")
    return {peer: _binary_field(value, peer, size) for peer in value}


def _next_keys(body: dict[str, Any]) -> tuple[bytes, bytes] | None:
    """A reveal's optional announced keys for the next round; 400 if malformed."""
    value = body.get(protocol.SECAGG_NEXT_KEYS_FIELD)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest(
            f"field {protocol.SECAGG_NEXT_KEYS_FIELD!r} must be an object of two base64 keys"
        )
    return (
        _binary_field(value, "encryption_key", keys.KEY_BYTES),
        _binary_field(value, "masking_key", keys.KEY_BYTES),
    )


def _next_keys_header() -> tuple[bytes, bytes] | None:
    """A masked input's optional announced keys for the next round (a header holding the
    JSON object of a reveal's ``next_keys``); 400 if malformed."""
    text = request.headers.get(protocol.SECAGG_NEXT_KEYS_HEADER)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise BadRequest(f"header {protocol.SECAGG_NEXT_KEYS_HEADER} is not JSON") from None
    return _next_keys({protocol.SECAGG_NEXT_KEYS_FIELD: value})


def _next_shares(body: dict[str, Any]) -> dict[str, bytes] | None:
    """A reveal's optional shares for the next round's neighbours; 400 if malformed."""
    if body.get(protocol.SECAGG_NEXT_SHARES_FIELD) is None:
        return None
    return _binary_map(body, protocol.SECAGG_NEXT_SHARES_FIELD, keys.CIPHERTEXT_BYTES)


def _int_field(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"field {name!r} must be an integer, got {value!r:.40}")
    return value

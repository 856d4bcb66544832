"""The names both ends of protocol v1 agree on: paths, headers, phases and error codes.

Imported by the server (``server/app.py``, ``server/errors.py``) and the client
(``client/federated_client.py``, ``client/transport.py``) alike, so it imports
neither, nor anything beyond the standard library. What the names mean is in
docs/protocol.md.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

# Paths. Everything under /v1 belongs to a run (and needs the token, when there is one).
RUN_PREFIX = "/v1/"
JOIN_PATH = "/v1/join"
INITIAL_PATH = "/v1/initial"
MODEL_PATH = "/v1/model"
UPDATE_PATH = "/v1/update"
EVALUATE_PATH = "/v1/evaluate"
LEAVE_PATH = "/v1/leave"
# POST /v1/leave's body names one client (``client_id``) or several (``client_ids``, at
# most this many: a simulation worker's clients in a few requests; 500 ids of the
# longest form, 63 characters, fit the 64 KiB a JSON body may take).
LEAVE_IDS_KEY = "client_ids"
MAX_LEAVE_IDS = 500
STATUS_PATH = "/v1/status"
# GET: which clients the open round sampled (long-polls, as /v1/model does): one request
# tells a simulation worker which of its many virtual clients train (docs/protocol.md).
SAMPLED_PATH = "/v1/sampled"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
# Secure aggregation (docs/secure_aggregation.md): one round's stages after training.
# Each POST may hold (query ``wait``) until the next stage's input is ready and then
# answers with it (200), else 202; the GET of that input long-polls like /v1/model.
SECAGG_PREFIX = "/v1/secagg/"
SECAGG_KEYS_PATH = "/v1/secagg/keys"  # POST JSON: this round's two public keys
SECAGG_ROSTER_PATH = "/v1/secagg/roster"  # GET: everyone's keys and the graph's k, t
SECAGG_SHARES_PATH = "/v1/secagg/shares"  # POST JSON: encrypted shares, one per neighbour
SECAGG_INBOX_PATH = "/v1/secagg/inbox"  # GET: the shares neighbours encrypted to me
SECAGG_MASKED_PATH = "/v1/secagg/masked"  # POST safetensors: the masked input
SECAGG_UNMASK_PATH = "/v1/secagg/unmask"  # GET: who survived, who dropped
SECAGG_REVEAL_PATH = "/v1/secagg/reveal"  # POST JSON: the shares that remove the masks

# Query parameters: of GET /v1/model (round, wait), GET /v1/status (since) and
# POST /v1/update (next, wait: answer with the next round's model, see docs/protocol.md).
ROUND_PARAM = "round"
WAIT_PARAM = "wait"
SINCE_PARAM = "since"
NEXT_PARAM = "next"

# Headers.
CLIENT_ID_HEADER = "X-FL-Client-Id"
ROUND_HEADER = "X-FL-Round"
NUM_EXAMPLES_HEADER = "X-FL-Num-Examples"
METRICS_HEADER = "X-FL-Metrics"
PHASE_HEADER = "X-FL-Phase"
CONFIG_HEADER = "X-FL-Config"
WIRE_DTYPE_HEADER = "X-FL-Wire-Dtype"
# On an update's answer that is the next model: the update's own JSON answer.
UPDATE_HEADER = "X-FL-Update"


class Phase(str, Enum):
    """Where a run is: in ``X-FL-Phase``, /v1/status and /readyz."""

    WAITING = "waiting"
    FIT = "fit"
    AGGREGATING = "aggregating"
    FINISHED = "finished"
    FAILED = "failed"


class SecAggStage(str, Enum):
    """Where a secure-aggregation round is (``secagg_stage`` in /v1/status): the stage
    whose submissions the server is collecting. Training happens before KEYS."""

    KEYS = "keys"
    SHARES = "shares"
    MASKED = "masked"
    REVEAL = "reveal"


# The round config's key (X-FL-Config) carrying a secure round's parameters to clients.
SECAGG_CONFIG_KEY = "secagg"
# Within it, next to SecAggParams.to_config(): how clients weight their updates
# (Strategy.secure_weighting): by their example count, or 1 each.
SECAGG_WEIGHTING_KEY = "weighting"
SECAGG_BY_EXAMPLES = "examples"
SECAGG_UNIFORM = "uniform"
SECAGG_WEIGHTINGS = (SECAGG_BY_EXAMPLES, SECAGG_UNIFORM)
# The masked input's one tensor in its safetensors body.
SECAGG_MASKED_TENSOR = "masked"
# A reveal's optional field: the client's two public keys for the next round, announced
# so that round's key stage needs no request (docs/secure_aggregation.md).
SECAGG_NEXT_KEYS_FIELD = "next_keys"
# Round-config keys of a secure round's model answer: true when the keys this client
# announced are the round's (it sends no keys); the roster, when it is fixed already.
SECAGG_ANNOUNCED_KEY = "secagg_keys_announced"
SECAGG_ROSTER_KEY = "secagg_roster"
# Shares ahead (docs/secure_aggregation.md): a masked input's header announcing the
# client's keys for the next round (the JSON object of ``next_keys``); the unmask
# request's field with the next round's roster of those keys; the reveal's field with
# the client's shares for that round; and the round-config key of the next round's
# model answer with the inbox those shares made (its share stage is over as it opens).
SECAGG_NEXT_KEYS_HEADER = "X-FL-Next-Keys"
SECAGG_NEXT_ROSTER_FIELD = "next_roster"
SECAGG_NEXT_SHARES_FIELD = "next_shares"
SECAGG_INBOX_KEY = "secagg_inbox"


# A client id: 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit.
CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def valid_client_id(client_id: str) -> bool:
    """Whether ``client_id`` is a whole client id (fullmatch: no trailing newline)."""
    return isinstance(client_id, str) and CLIENT_ID_PATTERN.fullmatch(client_id) is not None


# Error codes: the ``error`` of a refusal's JSON body.
BAD_REQUEST = "bad_request"
UNAUTHORIZED = "unauthorized"
# The token is known but its credential was revoked (during the run, or before it).
REVOKED = "revoked"
# The token is valid but not for this: another client's id, or an observer on a client path.
FORBIDDEN = "forbidden"
UNKNOWN_CLIENT = "unknown_client"
WRONG_ROUND = "wrong_round"
CONFLICT = "conflict"
RUN_FAILED = "run_failed"
TOO_LARGE = "too_large"
INVALID_UPDATE = "invalid_update"
INTERNAL = "internal"
# What a client calls a refusal whose body names no code (not JSON, or not ours).
HTTP_ERROR = "http_error"

# A refusal's JSON body: {ERROR_FIELD: code, MESSAGE_FIELD: reason, ...details}.
ERROR_FIELD = "error"
MESSAGE_FIELD = "message"


def error_body(code: str, message: str | None, **details: Any) -> dict[str, Any]:
    """The JSON body of a refusal."""
    return {ERROR_FIELD: code, MESSAGE_FIELD: message, **details}

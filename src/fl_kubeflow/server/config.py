"""Server configuration: one immutable value passed to the app factory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fl_kubeflow import defaults, protocol
from fl_kubeflow.async_params import AsyncParams
from fl_kubeflow.cpus import usable_cpus
from fl_kubeflow.secagg.params import SecAggParams
from fl_kubeflow.server.records import CLIENT_ID_RULE

# As in fl_kubeflow.wire, which this module does not import (it needs no numpy).
WIRE_DTYPES = ("float32", "float16", "bfloat16")
MIN_TOKEN_LENGTH = 22  # 128 bits in URL-safe base64
DEFAULT_MAX_IO_THREADS = 4
MAX_IO_THREADS = 64
MAX_RECEIVE_SLOTS = 64
# Worker threads when model long-polls are parked without one (server_threads).
PARKED_SERVER_THREADS = 32
# Most updates waiting for the next model in worker threads of their own (update_holds).
MAX_UPDATE_HOLDS = 1024
# Below 2**53: every count, and the sum of a round's counts, stays exact as a float64 weight.
MAX_EXAMPLES_CEILING = 10**15


@dataclass(frozen=True)
class ServerConfig:
    """How one federated run is conducted.

    Attributes:
        num_clients: Clients expected to join (N).
        num_rounds: Training rounds (R).
        min_clients: Quorum: fewest contributions a round may close with (None or 0: N).
        join_timeout: Seconds to wait for N clients (and an initial model) before starting.
        round_timeout: Seconds a round stays open for updates.
        max_update_bytes: Largest update body accepted (HTTP 413 above).
        max_examples: The most examples one update or evaluation may claim (HTTP 400
            above); a client enrolled with a lower limit gets its own.
        host: Interface to bind; 0.0.0.0 because the server runs in a pod.
        port: TCP port; 0 picks a free one.
        client_ids: If given, only these ids may join.
        initial_weights: Safetensors file with the starting model; else the first client's.
        output_dir: Where the final weights and history are written.
        grace_period: Seconds to wait after the last round for clients to hear "finished".
        poll_timeout: Longest a model long-poll is held before answering 204.
        strategy: Aggregation rule name.
        strategy_options: Keyword options for the strategy.
        token: The legacy shared bearer token every /v1 request must carry (any
            client id may use it); None and no ``credentials`` leave the run open.
        credentials: Credential registry file (``fl-kubeflow credentials issue``):
            one token per client, each acting only as itself; read again when it
            changes, so a client revoked there is refused and dropped from the run.
        credentials_reload: Seconds between checks of ``credentials`` for changes.
        checkpoint_dir: Where the run is saved after every round, and resumed from.
        tls_cert: PEM certificate (chain) to serve HTTPS with; needs tls_key.
        tls_key: PEM private key of tls_cert.
        wire_dtype: How float32 tensors travel: float32, or float16/bfloat16 for half
            the bytes. The model and the aggregation stay float32 on the server.
        io_threads: Socket loops (waitress I/O threads) sharing the listening socket;
            None: one per usable CPU (affinity, capped by a cgroup CPU limit), at
            most 4. Not used with TLS (cheroot).
        receive_slots: Large bodies (updates) received straight into memory at once;
            other uploads wait (TCP back-pressure). Each costs one update's size in
            memory; 0 spools every large body to a temporary file instead. Not used
            with TLS (cheroot). Also how many bodies the app decodes and folds at
            once (at least one), with TLS too.
        slot_patience: Seconds an upload waits for a receive slot while none frees
            before it is received into a temporary file instead.
        head_timeout: Seconds a request's line and headers may take from its first
            byte; a connection not yet shown to be a client's must send each within
            this of its accept (TLS handshake included) or of its last response.
        idle_timeout: Seconds a client's connection may stay idle between requests.
        max_pending_connections: Connections not yet shown to be a client's (by a /v1
            request that passed authentication) held at once; beyond, the oldest idle
            one is closed.
        secure_aggregation: SecAgg+ options (docs/secure_aggregation.md); None: plain
            aggregation, the server sees every update.
        asynchronous: FedBuff options (docs/asynchronous.md): clients train whenever
            ready and every K updates make a new model version; None: synchronous
            rounds.
    """

    num_clients: int
    num_rounds: int
    min_clients: int | None = None
    join_timeout: float = defaults.JOIN_TIMEOUT
    round_timeout: float = defaults.ROUND_TIMEOUT
    max_update_bytes: int = int(defaults.MAX_UPDATE_MB * 1024 * 1024)
    max_examples: int = defaults.MAX_EXAMPLES
    host: str = "0.0.0.0"
    port: int = 8080
    client_ids: tuple[str, ...] | None = None
    initial_weights: Path | None = None
    output_dir: Path | None = None
    grace_period: float = defaults.GRACE_PERIOD
    poll_timeout: float = defaults.POLL_TIMEOUT
    strategy: str = defaults.STRATEGY
    strategy_options: dict[str, Any] = field(default_factory=dict)
    token: str | None = field(default=None, repr=False)
    credentials: Path | None = None
    credentials_reload: float = defaults.CREDENTIALS_RELOAD
    tls_cert: Path | None = None
    tls_key: Path | None = None
    checkpoint_dir: Path | None = None
    wire_dtype: str = "float32"
    io_threads: int | None = None
    receive_slots: int = defaults.RECEIVE_SLOTS
    slot_patience: float = defaults.SLOT_PATIENCE
    head_timeout: float = defaults.HEAD_TIMEOUT
    idle_timeout: float = defaults.IDLE_TIMEOUT
    max_pending_connections: int = defaults.MAX_PENDING_CONNECTIONS
    secure_aggregation: SecAggParams | None = None
    asynchronous: AsyncParams | None = None

    def __post_init__(self) -> None:
        if self.num_clients < 1:
            raise ValueError(f"num_clients must be at least 1, got {self.num_clients}")
        if self.num_rounds < 1:
            raise ValueError(f"num_rounds must be at least 1, got {self.num_rounds}")
        if not 1 <= self.quorum <= self.num_clients:
            raise ValueError(
                f"min_clients must be between 1 and num_clients={self.num_clients}, "
                f"got {self.min_clients}"
            )
        for name in (
            "join_timeout",
            "round_timeout",
            "grace_period",
            "poll_timeout",
            "slot_patience",
            "head_timeout",
            "idle_timeout",
            "credentials_reload",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_update_bytes < 1024:
            raise ValueError(f"max_update_bytes must be at least 1024, got {self.max_update_bytes}")
        if not 1 <= self.max_examples <= MAX_EXAMPLES_CEILING:
            raise ValueError(
                f"max_examples must be between 1 and {MAX_EXAMPLES_CEILING}, "
                f"got {self.max_examples}"
            )
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.token is not None and len(self.token) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"the token must be at least {MIN_TOKEN_LENGTH} characters (128 bits of "
                f"randomness, e.g. from secrets.token_urlsafe(32)); got {len(self.token)}"
            )
        if self.token is not None and self.credentials is not None:
            raise ValueError("give a credential registry or a shared token, not both")
        if self.credentials is not None and not Path(self.credentials).is_file():
            raise ValueError(f"credentials {str(self.credentials)!r} is not a file")
        if self.wire_dtype not in WIRE_DTYPES:
            raise ValueError(
                f"wire_dtype must be one of {', '.join(WIRE_DTYPES)}, got {self.wire_dtype!r}"
            )
        if self.io_threads is not None and not 1 <= self.io_threads <= MAX_IO_THREADS:
            raise ValueError(
                f"io_threads must be between 1 and {MAX_IO_THREADS}, got {self.io_threads}"
            )
        if not 0 <= self.receive_slots <= MAX_RECEIVE_SLOTS:
            raise ValueError(
                f"receive_slots must be between 0 and {MAX_RECEIVE_SLOTS}, got {self.receive_slots}"
            )
        if self.max_pending_connections < 1:
            raise ValueError(
                f"max_pending_connections must be at least 1, got {self.max_pending_connections}"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key file")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name} {str(path)!r} is not a file")
        bad_ids = [c for c in self.client_ids or () if not protocol.valid_client_id(c)]
        if bad_ids:
            raise ValueError(f"client_ids {bad_ids!r} are not client ids: {CLIENT_ID_RULE}")
        if self.client_ids is not None and len(set(self.client_ids)) != self.num_clients:
            raise ValueError(
                f"client_ids must list num_clients={self.num_clients} distinct ids, "
                f"got {list(self.client_ids)}"
            )
        if self.asynchronous is not None:
            self.asynchronous.check_federation(self.num_clients)
            if self.secure_aggregation is not None:
                raise ValueError(
                    "secure aggregation needs synchronous rounds (one masked sum per "
                    "round); --mode async cannot use it"
                )

    @property
    def quorum(self) -> int:
        return defaults.quorum(self.num_clients, self.min_clients)

    @property
    def connection_limit(self) -> int:
        """Two connections per client (a long-poll and a submission) plus probes and status,
        and the strangers' own share (max_pending_connections), which they cannot exceed."""
        return 2 * self.num_clients + 32 + self.max_pending_connections

    @property
    def socket_loops(self) -> int:
        """How many I/O threads move bytes between the sockets and the request buffers.

        One waitress loop receives every update body and spools it to a file, on one
        core: with several clients sending at once that thread, not the network, set
        the pace (benchmarks/results.md). Loops beyond the cores only take turns.
        """
        if self.io_threads is not None:
            return self.io_threads
        return min(DEFAULT_MAX_IO_THREADS, usable_cpus())

    @property
    def update_holds(self) -> int:
        """How many updates sent with ``next=1`` may wait in a worker thread for the next
        round's model at once; the others are answered at once (202) and their clients
        long-poll, which on waitress holds no thread (server/parking.py).

        Where threads grow with N every client may hold one. On the parked pool each
        hold has a thread of its own beside the ``PARKED_SERVER_THREADS`` that answer at
        once (with every worker waiting no update could be received and the round would
        never close), up to ``MAX_UPDATE_HOLDS``: an update answered with the model costs
        the client and the server one request less than a 202 and a long-poll (1,000
        clients at P = 100,000: 1.9-2.1 s -> 1.5 s a round, benchmarks/load.md), and a
        thread waiting on the model's condition costs about 0.1 MB and one wake-up a round.
        """
        if self._threads_grow_with_clients:
            return self.num_clients
        return min(self.num_clients, MAX_UPDATE_HOLDS)

    @property
    def server_threads(self) -> int:
        """Worker threads of the WSGI server.

        On waitress, model long-polls wait without a thread (server/parking.py): the
        workers are ``PARKED_SERVER_THREADS`` for requests that answer at once plus one
        per ``update_holds`` (at most ``MAX_UPDATE_HOLDS`` whatever N). With TLS
        (cheroot) or secure aggregation (whose stage long-polls wait in threads) every
        client may hold a long-poll while others submit: threads grow with N.
        """
        if self._threads_grow_with_clients:
            return 2 * self.num_clients + 8
        return PARKED_SERVER_THREADS + self.update_holds

    @property
    def _threads_grow_with_clients(self) -> bool:
        """TLS (cheroot) and secure aggregation keep a thread per waiting request."""
        return self.tls_cert is not None or self.secure_aggregation is not None

"""Who is asking: every /v1 request's bearer token, mapped to the principal it belongs to.

The server knows its principals from a credential registry file (``credentials.py``:
token digests, roles, declared limits, revoked names) and reads that file again
when it changes, so a client revoked during a run is refused at its next request.
A Kubernetes Secret mounted as a volume is swapped by a symlink rename, an operator's
``credentials revoke`` replaces the file atomically, an editor may rewrite it in
place: the file's inode, size and modification time together notice all three.

The legacy shared token (``--token-file``) is a registry of one principal that may
claim any client id, as before per-client credentials.

Nothing here logs a token or a digest.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fl_kubeflow import protocol
from fl_kubeflow.credentials import CLIENT, OBSERVER, CredentialError, Enrolment, Registry
from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.errors import Forbidden, Revoked, Unauthorized

log = logging.getLogger("fl_kubeflow.server")

BEARER = "Bearer "
# The principal of the legacy shared token: it may act as any client.
SHARED = Enrolment(name="*", digest="", role=CLIENT)
# Paths an observer may use: it reads the run's status, nothing else.
OBSERVER_PATHS = frozenset({protocol.STATUS_PATH})


@dataclass(frozen=True)
class _FileState:
    """What says a file changed: a swapped symlink or a replaced file has a new inode."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> _FileState | None:
        try:
            stat = path.stat()  # follows symlinks: a Secret's ..data swap is seen
        except OSError:
            return None
        return cls(stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


class Identities:
    """The principals a server accepts, and the check every /v1 request passes first.

    Args:
        registry: The principals (from ``Registry.load``); None with ``shared_token``
            or for an open run.
        path: The registry's file, read again by ``reload_if_changed``.
        shared_token: The legacy single token any client may present.
        on_revoke: Called with each client id a reload revokes (or removes), outside
            any lock of this object: the server drops that client from the run.
    """

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        path: Path | None = None,
        shared_token: str | None = None,
        on_revoke: Callable[[str], None] | None = None,
    ) -> None:
        if registry is not None and shared_token is not None:
            raise ValueError("a server takes a credential registry or a shared token, not both")
        self._registry = registry
        self._path = path
        self._shared = None if shared_token is None else f"{BEARER}{shared_token}".encode()
        self.on_revoke = on_revoke
        self._lock = threading.Lock()
        self._state = _FileState.of(path) if path is not None else None
        self._bad_state: _FileState | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], on_revoke: Callable[[str], None] | None = None
    ) -> Identities:
        """The identities of a registry file (CredentialError if it cannot be used)."""
        path = Path(path)
        registry = Registry.load(path)
        log.info(
            "credential registry %s: %d clients, %d observers, %d revoked",
            path,
            len(registry.clients()),
            len(registry.enrolments) - len(registry.clients()),
            len(registry.revoked),
        )
        return cls(registry, path=path, on_revoke=on_revoke)

    @property
    def is_open(self) -> bool:
        """True when no credential is needed: any client that reaches the server may join."""
        return self._registry is None and self._shared is None

    @property
    def per_client(self) -> bool:
        """True when each token belongs to one client id (a registry, not a shared token)."""
        return self._registry is not None

    @property
    def registry(self) -> Registry | None:
        with self._lock:
            return self._registry

    # ------------------------------------------------------------------ checks

    def authenticate(
        self, authorization: str | None, claimed_client_id: str | None, path: str
    ) -> Enrolment | None:
        """The principal of a request, from its headers alone (no body byte is needed).

        Args:
            authorization: The ``Authorization`` header, if any.
            claimed_client_id: The client id the request claims (``X-FL-Client-Id``),
                if any; a JSON body's ``client_id`` is checked with ``check_claim``.
            path: The request's path; outside /v1 nothing is checked.

        Returns:
            The principal's enrolment (``SHARED`` for the shared token); None for an
            open run or a path outside /v1.

        Raises:
            Unauthorized: No token, or one the server does not know.
            Revoked: The token's principal was revoked.
            Forbidden: The token's client is not the one claimed, or an observer asked
                for more than the run's status.
        """
        if self.is_open or not path.startswith(protocol.RUN_PREFIX):
            return None
        given = (authorization or "").strip()
        if self._shared is not None:
            # compare_digest: the time taken must not reveal how much of a guess was right.
            if not hmac.compare_digest(given.encode(), self._shared):
                raise Unauthorized("missing or wrong bearer token in the Authorization header")
            return SHARED
        if not given.startswith(BEARER) or not given[len(BEARER) :].strip():
            raise Unauthorized("missing bearer token in the Authorization header")
        with self._lock:
            registry = self._registry
        assert registry is not None
        enrolment = registry.identify(given[len(BEARER) :].strip())
        if enrolment is None:
            raise Unauthorized("unknown bearer token")
        if registry.is_revoked(enrolment.name):
            raise Revoked(f"the credential of {enrolment.name!r} was revoked")
        if enrolment.role == OBSERVER and path not in OBSERVER_PATHS:
            raise Forbidden(f"{enrolment.name!r} is an observer: it may only read the status")
        self.check_claim(enrolment, claimed_client_id)
        return enrolment

    def check_claim(self, enrolment: Enrolment | None, client_id: str | None) -> None:
        """Raise Forbidden unless ``enrolment`` may act as ``client_id`` (None: no claim)."""
        if enrolment is None or enrolment is SHARED or client_id is None:
            return
        if enrolment.role != CLIENT or client_id != enrolment.name:
            raise Forbidden(f"the credential of {enrolment.name!r} cannot act as {client_id!r:.70}")

    def limit_for(self, client_id: str) -> int | None:
        """The most examples ``client_id`` declared at enrolment it may claim; None: no limit."""
        with self._lock:
            registry = self._registry
        enrolment = None if registry is None else registry.enrolments.get(client_id)
        return None if enrolment is None else enrolment.max_examples

    # --------------------------------------------------------------- reloading

    def reload_if_changed(self) -> list[str]:
        """Read the registry file again if it changed; the client ids it revoked.

        Called by one thread at a time (the watcher, or a test). A file that cannot be
        used (half-written by a careless editor, not JSON, a revoked name missing) keeps
        the registry in force, and is logged once.
        """
        if self._path is None:
            return []
        state = _FileState.of(self._path)
        if state is None or state in (self._state, self._bad_state):
            return []
        # Read outside the lock: requests (on waitress's I/O threads) never wait for a file.
        try:
            fresh = Registry.load(self._path)
        except CredentialError as exc:
            self._bad_state = state
            log.error("credential registry not reloaded, the previous one stays: %s", exc)
            return []
        with self._lock:
            old = self._registry
            assert old is not None
            self._registry, self._state, self._bad_state = fresh, state, None
        dropped = sorted(set(_allowed_clients(old)) - set(_allowed_clients(fresh)))
        log.info(
            "credential registry reloaded: %d principals, %d revoked%s",
            len(fresh.enrolments),
            len(fresh.revoked),
            f"; revoked now: {', '.join(dropped)}" if dropped else "",
        )
        if self.on_revoke is not None:
            for client_id in dropped:
                self.on_revoke(client_id)
        return dropped

    def watch(self, interval: float) -> None:
        """Reload the registry when it changes, checking every ``interval`` seconds."""
        if self._path is None or self._watcher is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.reload_if_changed()
                except Exception:  # the watcher must outlive any one bad reload
                    log.exception("credential registry reload failed")

        self._watcher = threading.Thread(target=loop, name="fl-credentials", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        """Stop watching the registry file."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)


def _allowed_clients(registry: Registry) -> list[str]:
    """Client ids whose credential is in force: enrolled as clients, not revoked."""
    return [c for c in registry.clients() if not registry.is_revoked(c)]


def identities_for(
    config: ServerConfig, on_revoke: Callable[[str], None] | None = None
) -> Identities:
    """The identities a server configuration names: its registry, shared token, or none."""
    if config.credentials is not None:
        return Identities.from_file(config.credentials, on_revoke=on_revoke)
    return Identities(shared_token=config.token, on_revoke=on_revoke)

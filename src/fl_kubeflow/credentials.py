"""One credential per client: issued once, held by its owner alone, known to the server by hash.

A client's credential is its id and a bearer token of 256 random bits. The server
holds only a registry of SHA-256 digests (``Registry``), so the registry file, its
Kubernetes Secret or a checkpoint never lets anyone act as a client; revoking a
client is a line in the same registry, which the server reads again when it changes.

On disk a credential is a folder with one file per key (``client_id``, ``token``,
optionally ``ca.crt`` and ``server``): the same keys as its Kubernetes Secret, so a
Secret mounted as a volume is a credential folder. Tokens travel through files and
Secrets only, never a command line, a parameter, a log or an artifact.

Both ends import this module; it imports only the standard library,
``fl_kubeflow.auth`` and ``fl_kubeflow.protocol``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fl_kubeflow.auth import new_token
from fl_kubeflow.protocol import valid_client_id

REGISTRY_VERSION = 1
# The keys of a credential: file names in its folder, data keys in its Secret.
CLIENT_ID_KEY = "client_id"
TOKEN_KEY = "token"
CA_KEY = "ca.crt"
SERVER_KEY = "server"
# A principal's role: a client takes part in rounds; an observer may only read the
# run's status (a progress reporter, a dashboard).
CLIENT = "client"
OBSERVER = "observer"
ROLES = (CLIENT, OBSERVER)


class CredentialError(ValueError):
    """A credential or registry that cannot be read or used; the message says why."""


def token_digest(token: str) -> str:
    """The hex SHA-256 of a token: all the server keeps of it."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ClientCredential:
    """What one client holds: its id and its token (never in a repr)."""

    client_id: str
    token: str = field(repr=False)

    @property
    def authorization(self) -> str:
        """The Authorization header's value."""
        return f"Bearer {self.token}"


def issue(client_id: str) -> ClientCredential:
    """A fresh credential for ``client_id``."""
    if not valid_client_id(client_id):
        raise CredentialError(
            f"client id {client_id!r} must be 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return ClientCredential(client_id, new_token())


@dataclass(frozen=True)
class Enrolment:
    """A principal the server knows: name, role, token digest, declared limits.

    Args:
        name: The client id (or an observer's name).
        digest: ``token_digest`` of its token.
        role: ``client`` or ``observer``.
        max_examples: The most examples this client may claim for one update or
            evaluation (declared at enrolment); None leaves the server's limit.
    """

    name: str
    digest: str
    role: str = CLIENT
    max_examples: int | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"role": self.role, "token_sha256": self.digest}
        if self.max_examples is not None:
            body["max_examples"] = self.max_examples
        return body


@dataclass(frozen=True)
class Registry:
    """Every principal of a federation by name, and the names revoked.

    A revoked name stays enrolled (so its token is recognised and refused as
    revoked, not as unknown) and cannot be enrolled again under a new token.
    """

    enrolments: Mapping[str, Enrolment] = field(default_factory=dict)
    revoked: frozenset[str] = frozenset()

    def identify(self, token: str) -> Enrolment | None:
        """The enrolment whose token this is (revoked or not), or None.

        Looked up by the token's SHA-256, not compared with every enrolment in turn
        (~150 us per request with 1,000 clients, twice per request): how long the
        look-up of a digest takes can tell a guesser about the digest at most, and
        leads no closer to a token that has it.
        """
        return self._by_digest.get(token_digest(token))

    @functools.cached_property
    def _by_digest(self) -> dict[str, Enrolment]:
        index: dict[str, Enrolment] = {}
        for enrolment in self.enrolments.values():
            index.setdefault(enrolment.digest, enrolment)  # the first of a shared token
        return index

    def is_revoked(self, name: str) -> bool:
        return name in self.revoked

    def clients(self) -> list[str]:
        """Enrolled client ids (revoked ones included), sorted."""
        return sorted(n for n, e in self.enrolments.items() if e.role == CLIENT)

    def enrol(
        self, credential: ClientCredential, role: str = CLIENT, max_examples: int | None = None
    ) -> Registry:
        """This registry with ``credential`` enrolled; a name already there is refused."""
        if role not in ROLES:
            raise CredentialError(f"role must be one of {ROLES}, got {role!r}")
        if credential.client_id in self.enrolments:
            raise CredentialError(f"{credential.client_id!r} is enrolled already")
        if max_examples is not None and max_examples < 1:
            raise CredentialError(f"max_examples must be >= 1, got {max_examples}")
        enrolment = Enrolment(
            credential.client_id, token_digest(credential.token), role, max_examples
        )
        return replace(self, enrolments={**self.enrolments, enrolment.name: enrolment})

    def revoke(self, name: str) -> Registry:
        """This registry with ``name`` revoked (it must be enrolled)."""
        if name not in self.enrolments:
            raise CredentialError(f"{name!r} is not enrolled")
        return replace(self, revoked=self.revoked | {name})

    def to_json(self) -> dict[str, Any]:
        return {
            "version": REGISTRY_VERSION,
            "principals": {n: e.to_json() for n, e in sorted(self.enrolments.items())},
            "revoked": sorted(self.revoked),
        }

    @classmethod
    def from_json(cls, body: Any) -> Registry:
        if not isinstance(body, dict) or body.get("version") != REGISTRY_VERSION:
            raise CredentialError(f"not a version-{REGISTRY_VERSION} credential registry")
        principals = body.get("principals")
        if not isinstance(principals, dict):
            raise CredentialError("registry: 'principals' must be an object")
        enrolments = {}
        for name, entry in principals.items():
            if not valid_client_id(name) or not isinstance(entry, dict):
                raise CredentialError(f"registry: bad principal {name!r}")
            digest, role = entry.get("token_sha256"), entry.get("role", CLIENT)
            limit = entry.get("max_examples")
            if not isinstance(digest, str) or len(digest) != 64 or role not in ROLES:
                raise CredentialError(f"registry: principal {name!r} needs role and token_sha256")
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
                raise CredentialError(f"registry: {name!r} max_examples must be an integer")
            enrolments[name] = Enrolment(name, digest, role, limit)
        revoked = body.get("revoked", [])
        if not isinstance(revoked, list) or not set(revoked) <= set(enrolments):
            raise CredentialError("registry: 'revoked' must list enrolled names")
        return cls(enrolments, frozenset(revoked))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Registry:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise CredentialError(f"cannot read registry {str(path)!r}: {exc.strerror}") from None
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise CredentialError(f"registry {str(path)!r} is not JSON: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically, so a server reloading it never reads half a file."""
        write_private_file(Path(path), json.dumps(self.to_json(), indent=2) + "\n")


def issue_many(client_ids: Iterable[str]) -> tuple[Registry, list[ClientCredential]]:
    """A registry enrolling a fresh credential for each id, and the credentials."""
    registry, credentials = Registry(), []
    for client_id in client_ids:
        credential = issue(client_id)
        registry = registry.enrol(credential)
        credentials.append(credential)
    return registry, credentials


def write_credential_dir(
    credential: ClientCredential,
    folder: str | os.PathLike[str],
    ca_pem: str | None = None,
    server: str | None = None,
) -> Path:
    """Write a credential folder (owner-only files), the shape of its mounted Secret."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for key, value in credential_data(credential, ca_pem, server).items():
        write_private_file(folder / key, value, mode=0o600)
    return folder


def credential_data(
    credential: ClientCredential, ca_pem: str | None = None, server: str | None = None
) -> dict[str, str]:
    """A credential's keys and values: its folder's files, its Secret's stringData."""
    data = {CLIENT_ID_KEY: credential.client_id, TOKEN_KEY: credential.token}
    if ca_pem:
        data[CA_KEY] = ca_pem
    if server:
        data[SERVER_KEY] = server
    return data


def read_credential_dir(folder: str | os.PathLike[str]) -> ClientCredential:
    """The credential in a folder (or a mounted Secret)."""
    folder = Path(folder)
    values = {}
    for key in (CLIENT_ID_KEY, TOKEN_KEY):
        try:
            values[key] = (folder / key).read_text().strip()
        except OSError as exc:
            raise CredentialError(
                f"credential {str(folder)!r}: cannot read {key!r}: {exc.strerror}"
            ) from None
    if not valid_client_id(values[CLIENT_ID_KEY]) or not values[TOKEN_KEY]:
        raise CredentialError(f"credential {str(folder)!r}: bad client_id or empty token")
    return ClientCredential(values[CLIENT_ID_KEY], values[TOKEN_KEY])


@dataclass(frozen=True)
class CredentialFolder:
    """Everything a credential folder (or mounted Secret) hands its client.

    Args:
        credential: The client id and token.
        ca_file: The folder's ``ca.crt``, the CA to verify the server's certificate
            with; None if it has none.
        server: The server's address from the folder's ``server`` file; None if none.
    """

    credential: ClientCredential
    ca_file: Path | None = None
    server: str | None = None


def open_credential_dir(folder: str | os.PathLike[str]) -> CredentialFolder:
    """The credential in a folder, with its CA file and server address if it has them."""
    folder = Path(folder)
    credential = read_credential_dir(folder)
    ca_file = folder / CA_KEY
    try:
        server = (folder / SERVER_KEY).read_text().strip() or None
    except FileNotFoundError:
        server = None
    except OSError as exc:
        raise CredentialError(
            f"credential {str(folder)!r}: cannot read {SERVER_KEY!r}: {exc.strerror}"
        ) from None
    return CredentialFolder(credential, ca_file if ca_file.is_file() else None, server)


def write_private_file(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` atomically into an owner-only file (a token, or what holds one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

"""The per-run bearer token: made, read and sent, never printed.

The token reaches processes through a file (in Kubeflow, a mounted or fetched
Secret) or the environment variable FL_KUBEFLOW_TOKEN, never through a command
line, where `ps`, pod specs and pipeline parameters would show it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

TOKEN_ENV = "FL_KUBEFLOW_TOKEN"


def new_token() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def read_token(
    token_file: Path | None = None, environ: Mapping[str, str] = os.environ
) -> str | None:
    """The token from ``token_file`` if given, else from FL_KUBEFLOW_TOKEN, else None."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ValueError(
                f"cannot read token file {str(token_file)!r}: {exc.strerror}"
            ) from None
        if not token:
            raise ValueError(f"token file {str(token_file)!r} is empty")
        return token
    return environ.get(TOKEN_ENV) or None


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}

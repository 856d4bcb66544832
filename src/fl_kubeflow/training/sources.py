"""Read one data file's bytes from where the user keeps it: a path, http(s) or S3.

Locations:

* a path on this machine or a mounted volume (``/data/c0.csv``, ``file:///data/c0.csv``);
* ``http://`` or ``https://`` URLs (stdlib ``urllib``);
* ``s3://bucket/key`` on any S3-compatible object store (AWS S3, the MinIO of every
  Kubeflow installation, SeaweedFS...) through fsspec's ``s3fs``. Credentials are the
  standard variables ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (in a pipeline,
  from a Kubernetes Secret: docs/data.md), the endpoint ``AWS_ENDPOINT_URL_S3`` or
  ``AWS_ENDPOINT_URL`` (e.g. ``http://minio-service.kubeflow:9000``; unset means AWS),
  the region ``AWS_REGION``/``AWS_DEFAULT_REGION``. Without any credentials in the
  environment the read is anonymous (a public bucket): the client never asks a cloud
  metadata service, which would only stall outside the cloud.

Every network read is bounded by ``timeout`` seconds per connection attempt; every
failure is a ``DatasetError`` naming the location and the problem.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# Variables that let botocore find credentials on its own (a profile, IRSA's web identity).
_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE")
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# botocore tries each request this many times in all: one retry for a dropped connection.
_S3_ATTEMPTS = 2


class DatasetError(ValueError):
    """The dataset could not be loaded; the message names the bad value and a way out."""


def local_path(location: str) -> Path | None:
    """The file ``location`` names on this machine, or None for a remote URL."""
    if location.lower().startswith("file://"):
        parsed = urllib.parse.urlparse(location)
        if parsed.netloc not in ("", "localhost"):
            raise DatasetError(f"URI {location} names host {parsed.netloc!r}; use file:///path")
        return Path(urllib.request.url2pathname(urllib.parse.unquote(parsed.path)))
    if _URL_SCHEME.match(location):
        return None
    return Path(location).expanduser()


def read_bytes(location: str, timeout: float, environ: Mapping[str, str] | None = None) -> bytes:
    """The whole content of ``location``.

    Args:
        location: a path, ``file://``, ``http(s)://`` or ``s3://`` URL.
        timeout: seconds each network connection attempt and read may take.
        environ: where the S3 variables are read (default ``os.environ``).

    Raises:
        DatasetError: the location is missing, refused, unreachable, slow or unsupported.
    """
    lowered = location.lower()
    if lowered.startswith(("http://", "https://")):
        return _read_http(location, timeout)
    if lowered.startswith("s3://"):
        return _read_s3(location, timeout, os.environ if environ is None else environ)
    path = local_path(location)
    if path is None:
        raise DatasetError(
            f"data location {location} has an unsupported scheme; use a path (a mounted "
            "volume), file:///path, http(s):// or s3://bucket/key"
        )
    if not path.is_file():
        raise DatasetError(f"data file {path} does not exist (from {location})")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"data file {path} cannot be read: {exc}") from exc


def _read_http(location: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(location, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        problem = "does not exist" if exc.code == 404 else "was refused"
        raise DatasetError(f"data location {location} {problem} (HTTP {exc.code})") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DatasetError(
            f"could not download {location} (within {timeout:g}s per attempt): {exc}"
        ) from exc


def s3_filesystem(timeout: float, environ: Mapping[str, str]) -> Any:
    """An ``s3fs`` filesystem configured from the standard variables in ``environ``."""
    try:
        import s3fs
    except ImportError as exc:
        raise DatasetError(
            "s3:// data needs s3fs: pip install 'fl-kubeflow[train]' (the image has it)"
        ) from exc
    endpoint = next((environ[v] for v in ENDPOINT_VARIABLES if environ.get(v)), None)
    client: dict[str, Any] = {}
    if endpoint:
        client["endpoint_url"] = endpoint
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        client["region_name"] = region
    credentials: dict[str, Any] = {}
    if environ.get("AWS_ACCESS_KEY_ID"):
        credentials = {
            "key": environ["AWS_ACCESS_KEY_ID"],
            "secret": environ.get("AWS_SECRET_ACCESS_KEY", ""),
            "token": environ.get("AWS_SESSION_TOKEN") or None,
        }
    elif not any(environ.get(v) for v in _CREDENTIAL_VARIABLES):
        credentials = {"anon": True}
    return s3fs.S3FileSystem(
        skip_instance_cache=True,
        client_kwargs=client,
        config_kwargs={
            "connect_timeout": timeout,
            "read_timeout": timeout,
            "retries": {"max_attempts": _S3_ATTEMPTS, "mode": "standard"},
        },
        **credentials,
    )


def _read_s3(location: str, timeout: float, environ: Mapping[str, str]) -> bytes:
    fs = s3_filesystem(timeout, environ)
    endpoint = fs.client_kwargs.get("endpoint_url") or "AWS S3"
    try:
        return fs.cat_file(location)
    except FileNotFoundError as exc:
        raise DatasetError(
            f"data location {location} does not exist at {endpoint} (no such object or bucket)"
        ) from exc
    except PermissionError as exc:
        who = "anonymously (no AWS_ACCESS_KEY_ID set)" if fs.anon else "with these credentials"
        raise DatasetError(
            f"data location {location}: access denied at {endpoint} {who}; check the Secret "
            "that sets AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the endpoint "
            f"({' or '.join(ENDPOINT_VARIABLES)})"
        ) from exc
    except Exception as exc:  # botocore connection/timeouts, s3fs OSErrors: all "unreachable"
        raise DatasetError(
            f"could not read {location} from {endpoint} (within {timeout:g}s per attempt): "
            f"{type(exc).__name__}: {exc}"
        ) from exc

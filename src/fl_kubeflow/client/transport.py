"""HTTP to the aggregation server, with retries that outlast a server still starting.

In Kubernetes a client pod often starts before the server pod or its Service, so
connection errors and 5xx answers are retried with exponential backoff and jitter
until a deadline. A 4xx answer is the server's considered "no": it is raised at
once with the server's reason.
"""

from __future__ import annotations

import http.client
import logging
import random
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import requests
import urllib3

from fl_kubeflow import defaults, protocol

log = logging.getLogger("fl_kubeflow.client")

# Bytes read from the socket per call: a piece stays in cache while copied into place.
BODY_PIECE = 1 << 18


class ServerError(Exception):
    """The server refused a request (4xx); ``code`` and ``message`` come from its JSON body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"server answered {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class ServerUnreachable(Exception):
    """No usable answer before the retry deadline."""


class Transport:
    """One keep-alive session to the server; every call bounded in time."""

    def __init__(
        self,
        base_url: str,
        *,
        retry_timeout: float = defaults.RETRY_TIMEOUT,
        request_timeout: float = 120.0,
        connect_timeout: float = 10.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        headers: dict[str, str] | None = None,
        verify: bool | str = True,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.retry_timeout = retry_timeout
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.session = requests.Session()
        self.session.headers.update(headers or {})
        self.verify = settle_environment(self.session, self.base_url, verify)
        self._random = random.Random()

    def request(
        self,
        method: str,
        path: str,
        *,
        read_timeout: float | None = None,
        into_buffer: bool = False,
        **kwargs: Any,
    ) -> requests.Response:
        """Send, retrying transient failures until ``retry_timeout`` after the first one.

        ``into_buffer``: read a successful answer's body with ``read_body`` (into
        ``response.buffer``) inside the retries, so a connection lost mid-body is
        retried like one lost before the answer.
        """
        timeout = (self.connect_timeout, read_timeout or self.request_timeout)
        url = self.base_url + path
        deadline: float | None = None
        delay = self.backoff_initial
        while True:
            try:
                # verify per request: a session's verify loses to REQUESTS_CA_BUNDLE.
                response = self.session.request(
                    method, url, timeout=timeout, verify=self.verify, stream=into_buffer, **kwargs
                )
                if into_buffer and response.status_code < 400:
                    response.buffer = read_body(response)  # type: ignore[attr-defined]
            except requests.exceptions.SSLError as exc:
                # A certificate that does not verify will not start verifying: fail now.
                raise ServerUnreachable(f"{method} {url}: TLS verification failed: {exc}") from None
            except requests.RequestException as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response
                if response.status_code < 500:
                    raise _server_error(response)
                problem = f"HTTP {response.status_code}: {_reason(response)}"
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.retry_timeout
            if now >= deadline:
                raise ServerUnreachable(
                    f"{method} {url} failed for {self.retry_timeout:g}s "
                    f"(retry_timeout); last error: {problem}"
                )
            log.debug("%s %s: %s; retrying in %.2fs", method, path, problem, delay)
            # Full jitter: clients that lost the server together do not return together.
            time.sleep(min(self._random.uniform(0, delay), max(0.0, deadline - now)))
            delay = min(delay * 2, self.backoff_max)

    def close(self) -> None:
        self.session.close()


def settle_environment(session: requests.Session, url: str, verify: bool | str) -> bool | str:
    """Read once what requests would read from the environment on every request to
    ``url``; the ``verify`` to pass with each request.

    With ``trust_env`` on, requests walks the whole environment (proxy variables and
    NO_PROXY, twice), looks for ~/.netrc and reads REQUESTS_CA_BUNDLE for every request:
    about a millisecond of a small-model client's round here. The server's URL is
    fixed, so the same settings are taken once: proxies and a .netrc login on the
    session, a CA bundle from the environment in place of ``verify=True``.
    """
    settings = session.merge_environment_settings(url, {}, None, verify, None)
    session.proxies.update(settings["proxies"])
    login = requests.utils.get_netrc_auth(url)
    if login:
        session.auth = login
    session.trust_env = False
    return settings["verify"]


def read_body(response: requests.Response) -> memoryview:
    """A streamed response's whole body in one writable buffer, copied once from the socket.

    The buffer is a numpy allocation (numpy asks for huge pages: for a 40 MB model that
    saves ~10,000 page faults over bytes), so arrays decoded from it are views of it,
    writable, with no further copy. Errors are requests' ConnectionError, to be retried.
    """
    length = response.headers.get("Content-Length")
    encoded = response.headers.get("Content-Encoding", "identity") != "identity"
    try:
        if length is None or encoded:
            return memoryview(bytearray(response.content))
        size = int(length)
        view = memoryview(np.empty(size, dtype=np.uint8))
        raw, got = response.raw, 0
        while got < size:
            piece = raw.read(min(BODY_PIECE, size - got), decode_content=False)
            if not piece:
                raise requests.exceptions.ConnectionError(
                    f"connection closed after {got} of {size} body bytes"
                )
            view[got : got + len(piece)] = piece
            got += len(piece)
        return view
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError, ValueError) as exc:
        raise requests.exceptions.ConnectionError(f"reading the body failed: {exc}") from exc
    finally:
        response.close()


class BufferBody:
    """A request body sent from several buffers, each straight from its own memory.

    requests sends an iterable with a length as a stream with that Content-Length,
    and urllib3 hands each part to ``socket.sendall``: the tensors are not copied
    into one message first. Iterable again, so a retry sends the body again.
    """

    def __init__(self, parts: list[memoryview]) -> None:
        self.parts = parts
        self.size = sum(part.nbytes for part in parts)

    def __iter__(self) -> Iterator[memoryview]:
        return iter(self.parts)

    def __len__(self) -> int:
        return self.size


def _reason(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get(protocol.MESSAGE_FIELD) or body)
    return str(body)[:200]


def _server_error(response: requests.Response) -> ServerError:
    code = protocol.HTTP_ERROR
    try:
        body = response.json()
        if isinstance(body, dict):
            code = str(body.get(protocol.ERROR_FIELD, code))
    except ValueError:
        pass
    return ServerError(response.status_code, code, _reason(response))

"""HTTP to the aggregation server, with retries that outlast a server still starting.

In Kubernetes a client pod often starts before the server pod or its Service, so
connection errors and 5xx answers are retried with exponential backoff and jitter
until a deadline. A 4xx answer is the server's considered "no": it is raised at
once with the server's reason.

Spoken through urllib3 directly (one keep-alive connection pool for the one server),
not requests: requests' own layers (session, adapter, hooks, cookies, settings merged
per request) cost a small-model client about as much CPU as the rest of its round.
What requests read from the environment (proxies, CA bundle, .netrc) is read once
(``http_environment``), with requests' rules.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import numpy as np
import urllib3
from urllib3.util import make_headers

from fl_kubeflow import defaults, protocol
from fl_kubeflow.client.http_environment import read_environment

log = logging.getLogger("fl_kubeflow.client")

# Bytes read from the socket per call: a piece stays in cache while copied into place.
BODY_PIECE = 1 << 18
# Connections kept per server: one per thread that shares a Transport (requests' default).
POOL_SIZE = 10
# Failures of the connection or of the answer's reading: retried until the deadline.
TRANSIENT_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


class ServerError(Exception):
    """The server refused a request (4xx); ``code`` and ``message`` come from its JSON body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"server answered {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class ServerUnreachable(Exception):
    """No usable answer before the retry deadline."""


class BodyCutShort(Exception):
    """The connection ended before the body its Content-Length promised: retried."""


class Answer:
    """A server's answer: status, headers (case-insensitive) and body.

    Attributes:
        status_code: The HTTP status.
        headers: The answer's headers.
        content: The body, unless it was read into ``buffer``.
        buffer: With ``into_buffer``, a successful answer's body in one writable buffer.
    """

    __slots__ = ("buffer", "content", "headers", "status_code")

    def __init__(
        self,
        status_code: int,
        headers: urllib3.HTTPHeaderDict,
        content: bytes = b"",
        buffer: memoryview | None = None,
    ) -> None:
        self.status_code, self.headers = status_code, headers
        self.content, self.buffer = content, buffer

    def json(self) -> Any:
        """The body as JSON; ValueError if it is not."""
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class Transport:
    """One keep-alive connection pool to the server; every call bounded in time.

    Args:
        base_url: The server's URL (http:// or https://).
        retry_timeout: How long a failing request is retried after its first failure.
        request_timeout: The read timeout of a request that names none.
        connect_timeout: The longest wait for a connection (and TLS handshake).
        backoff_initial: The first retry's longest delay; doubled per retry.
        backoff_max: The longest delay between two tries.
        headers: Headers of every request (``self.headers``, which may be updated).
        verify: TLS verification: True (the default CA bundle, or REQUESTS_CA_BUNDLE /
            CURL_CA_BUNDLE), a CA bundle file or directory, or False.
    """

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
        environment = read_environment(self.base_url, verify)
        self.verify = environment.verify
        self.proxy = environment.proxy
        self.headers: dict[str, str] = {}
        if environment.login:
            self.headers["Authorization"] = make_headers(basic_auth=":".join(environment.login))[
                "authorization"
            ]
        self.headers.update(headers or {})
        self.pool = _pool_manager(environment.proxy, environment.verify)
        # The one server's connection pool, asked directly: no URL parsing and pool
        # look-up per request. Plain HTTP through a proxy goes through the manager,
        # which sends the absolute URL and the proxy's headers.
        forwarded = environment.proxy is not None and self.base_url.startswith("http://")
        self._server_pool = None if forwarded else self.pool.connection_from_url(self.base_url)
        self._path_prefix = urlsplit(self.base_url).path
        self._random = random.Random()

    def request(
        self,
        method: str,
        path: str,
        *,
        read_timeout: float | None = None,
        into_buffer: bool = False,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | BufferBody | None = None,
        json: Any = None,
    ) -> Answer:
        """Send, retrying transient failures until ``retry_timeout`` after the first one.

        Args:
            method: The HTTP method.
            path: The path on the server, e.g. ``protocol.UPDATE_PATH``.
            read_timeout: Longest wait for each read of the answer; default
                ``request_timeout``.
            into_buffer: Read a successful answer's body with ``read_body`` (into
                ``answer.buffer``) inside the retries, so a connection lost mid-body is
                retried like one lost before the answer.
            params: The query's parameters.
            headers: Headers of this request, over the transport's own.
            data: The body, sent as it is (a ``BufferBody`` part by part).
            json: A body sent as JSON instead.

        Raises:
            ServerError: the server answered 4xx.
            ServerUnreachable: no answer below 500 until the deadline, or a TLS
                certificate that does not verify (at once).
        """
        target = path + ("?" + urlencode(params) if params else "")
        url = self.base_url + target
        sent_headers = {**self.headers, **(headers or {})}
        if json is not None:
            data = _json_dumps(json).encode()
            sent_headers["Content-Type"] = "application/json"
        if data is not None:
            sent_headers["Content-Length"] = str(len(data))
        body = iter(data) if isinstance(data, BufferBody) else data
        timeout = urllib3.Timeout(
            connect=self.connect_timeout, read=read_timeout or self.request_timeout
        )
        deadline: float | None = None
        delay = self.backoff_initial
        while True:
            try:
                answer = self._send(method, target, body, sent_headers, timeout, into_buffer)
            except urllib3.exceptions.SSLError as exc:
                # A certificate that does not verify will not start verifying: fail now.
                raise ServerUnreachable(f"{method} {url}: TLS verification failed: {exc}") from None
            except (*TRANSIENT_ERRORS, BodyCutShort) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if answer.status_code < 400:
                    return answer
                if answer.status_code < 500:
                    raise _server_error(answer)
                problem = f"HTTP {answer.status_code}: {_reason(answer)}"
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
            if isinstance(data, BufferBody):
                body = iter(data)  # the parts again, from the first

    def _send(
        self,
        method: str,
        target: str,
        body: Any,
        headers: dict[str, str],
        timeout: urllib3.Timeout,
        into_buffer: bool,
    ) -> Answer:
        """One try at ``target`` (path and query): the answer, its body read whole (into
        a buffer when asked and 2xx)."""
        if self._server_pool is not None:
            opener, where = self._server_pool, self._path_prefix + target
        else:
            opener, where = self.pool, self.base_url + target
        response = opener.urlopen(
            method,
            where,
            body=body,
            headers=headers,
            timeout=timeout,
            retries=False,
            redirect=False,
            preload_content=False,
        )
        try:
            if into_buffer and response.status < 400:
                return Answer(response.status, response.headers, buffer=read_body(response))
            return Answer(response.status, response.headers, content=response.read())
        except BaseException:
            response.close()  # the connection's state is unknown: not back into the pool
            raise
        finally:
            response.release_conn()

    def close(self) -> None:
        self.pool.clear()


def _pool_manager(proxy: str | None, verify: bool | str) -> urllib3.PoolManager:
    """A pool manager verifying TLS as ``verify`` says, through ``proxy`` if any."""
    tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED" if verify else "CERT_NONE"}
    if isinstance(verify, str):
        tls["ca_cert_dir" if os.path.isdir(verify) else "ca_certs"] = verify
    elif verify:
        tls["ca_certs"] = _default_ca_bundle()
    options = {"maxsize": POOL_SIZE, **tls}
    if proxy is None:
        return urllib3.PoolManager(**options)
    if proxy.startswith("socks"):
        from urllib3.contrib.socks import SOCKSProxyManager  # needs PySocks, as requests did

        return SOCKSProxyManager(proxy, **options)
    proxy_url = urllib3.util.parse_url(proxy)
    proxy_headers = make_headers(proxy_basic_auth=proxy_url.auth) if proxy_url.auth else None
    return urllib3.ProxyManager(proxy, proxy_headers=proxy_headers, **options)


def _default_ca_bundle() -> str | None:
    """certifi's bundle, as requests verifies with; None (the system's) without certifi."""
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()


def _json_dumps(payload: Any) -> str:
    # NaN and infinity are not JSON: refused here, as requests refused them.
    return json.dumps(payload, allow_nan=False)


def read_body(response: urllib3.BaseHTTPResponse) -> memoryview:
    """An answer's whole body in one writable buffer, copied once from the socket.

    The buffer is a numpy allocation (numpy asks for huge pages: for a 40 MB model that
    saves ~10,000 page faults over bytes), so arrays decoded from it are views of it,
    writable, with no further copy. A body cut short raises BodyCutShort, to be retried.
    """
    length = response.headers.get("Content-Length")
    encoded = response.headers.get("Content-Encoding", "identity") != "identity"
    if length is None or encoded:
        return memoryview(bytearray(response.read()))
    try:
        size = int(length)
    except ValueError as exc:
        raise BodyCutShort(f"unreadable Content-Length {length!r}") from exc
    view = memoryview(np.empty(size, dtype=np.uint8))
    # Straight from the socket into the buffer (http.client's readinto): urllib3's read
    # would hand back a piece to copy in. Its response object is the one urllib3 reads.
    source = getattr(response, "_fp", None)
    readinto = getattr(source, "readinto", None)
    got = 0
    while got < size:
        try:
            if readinto is not None:
                count = readinto(view[got : got + BODY_PIECE])
            else:
                piece = response.read(min(BODY_PIECE, size - got), decode_content=False)
                count = len(piece)
                view[got : got + count] = piece
        except TRANSIENT_ERRORS as exc:
            raise BodyCutShort(
                f"reading the body failed after {got} of {size} bytes: {exc}"
            ) from exc
        if not count:
            raise BodyCutShort(f"connection closed after {got} of {size} body bytes")
        got += count
    return view


class BufferBody:
    """A request body sent from several buffers, each straight from its own memory.

    The Transport sends it with its length as Content-Length, and urllib3 hands each
    part to ``socket.sendall``: the tensors are not copied into one message first.
    Iterable again, so a retry sends the body again.
    """

    def __init__(self, parts: list[memoryview]) -> None:
        self.parts = parts
        self.size = sum(part.nbytes for part in parts)

    def __iter__(self) -> Iterator[memoryview]:
        return iter(self.parts)

    def __len__(self) -> int:
        return self.size


def _reason(answer: Answer) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.text[:200]
    if isinstance(body, dict):
        return str(body.get(protocol.MESSAGE_FIELD) or body)
    return str(body)[:200]


def _server_error(answer: Answer) -> ServerError:
    code = protocol.HTTP_ERROR
    try:
        body = answer.json()
        if isinstance(body, dict):
            code = str(body.get(protocol.ERROR_FIELD, code))
    except ValueError:
        pass
    return ServerError(answer.status_code, code, _reason(answer))

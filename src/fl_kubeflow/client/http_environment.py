"""What the environment says about reaching one server URL, read once.

The client used to go through requests, which reads these on every request: the proxy
variables and NO_PROXY, ~/.netrc, REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE. The Transport now
speaks urllib3 directly and keeps requests' rules for them (so a pod's proxy settings
and CA bundle mean what they meant), read once: the server's URL never changes.
"""

from __future__ import annotations

import ipaddress
import netrc
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

NETRC_FILES = ("~/.netrc", "~/_netrc")


@dataclass(frozen=True)
class Environment:
    """How to reach one URL.

    Attributes:
        proxy: The proxy's URL, or None to connect directly.
        verify: True (the default CA bundle), False (no verification) or a CA bundle
            file or directory.
        login: (user, password) from a netrc file, or None.
    """

    proxy: str | None
    verify: bool | str
    login: tuple[str, str] | None


def read_environment(url: str, verify: bool | str = True) -> Environment:
    """The proxy, CA bundle and netrc login requests would use for ``url``."""
    if verify is True:
        verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    return Environment(proxy_for(url), verify, netrc_login(url))


def proxy_for(url: str) -> str | None:
    """The proxy from ``<scheme>_proxy`` or ``all_proxy``, unless NO_PROXY exempts the host."""
    parts = urlsplit(url)
    if parts.hostname is None or bypasses_proxy(parts.hostname, parts.port):
        return None
    proxies = urllib.request.getproxies_environment()
    return proxies.get(parts.scheme) or proxies.get("all") or None


def bypasses_proxy(host: str, port: int | None) -> bool:
    """requests' NO_PROXY rules: an IP in a listed network or equal to one, a host (or
    host:port) ending in a listed name, or what the standard library's check says."""
    no_proxy = os.environ.get("no_proxy") or os.environ.get("NO_PROXY")
    if not no_proxy:
        return False
    entries = [entry.strip() for entry in no_proxy.replace(" ", "").split(",") if entry.strip()]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        for entry in entries:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
    else:
        with_port = f"{host}:{port}" if port else host
        if any(host.endswith(entry) or with_port.endswith(entry) for entry in entries):
            return True
    return bool(urllib.request.proxy_bypass_environment(host, {"no": no_proxy}))


def netrc_login(url: str) -> tuple[str, str] | None:
    """The login a netrc file (``$NETRC``, else ~/.netrc or ~/_netrc) holds for the host."""
    host = urlsplit(url).hostname
    candidates = [os.environ["NETRC"]] if os.environ.get("NETRC") else list(NETRC_FILES)
    for candidate in candidates:
        path = Path(candidate).expanduser()
        if not path.exists():
            continue
        try:
            entry = netrc.netrc(str(path)).authenticators(host or "")
        except (netrc.NetrcParseError, OSError):
            return None  # as requests: an unreadable file means no login
        if entry is None:
            return None
        user = entry[0] or entry[1]
        return (user or "", entry[2] or "")
    return None

"""A rogue client of the e2e cross-namespace scenario, run in a Pod of the project's image.

Standard library only: it stands for anyone holding one enrolled credential (mounted from
its Secret at ``--credential``) who tries to do more with it. Each probe prints one JSON
line ``{"probe": NAME, "status": HTTP status or null, "error": the body's error code, ...}``
(never a token), in this order:

1. ``foreign_secrets``: list the server namespace's Secrets with the pod's own service
   account token (the data owner's account must have no rights there);
2. ``wait_server``: the server's ``/healthz`` answered (connection errors retried);
3. ``unknown_token``: join under its own id with a token nobody issued;
4. ``impersonate_join`` / ``impersonate_update``: its own token, another client's id;
5. ``join``: its own credential, its own id;
6. ``round_waiting``: the status shows round 1 open with ``--wait-submitted`` updates in
   (the others'), so the round now waits for this client alone;
7. ``revoked``: ``GET /v1/status`` every half second until the answer is not 200 (the
   test revokes the credential meanwhile), with the number of 200s before it.
"""

from __future__ import annotations

import argparse
import json
import secrets
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
KUBERNETES_API = "https://kubernetes.default.svc"
REQUEST_TIMEOUT = 30.0


def request(
    url: str,
    context: ssl.SSLContext | None,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int | None, dict[str, Any]]:
    """(status, JSON body or {"text": ...}); status None when the connection failed."""
    call = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(call, timeout=REQUEST_TIMEOUT, context=context) as answer:
            status, text = answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        status, text = refused.code, refused.read()
    except (urllib.error.URLError, OSError) as exc:
        return None, {"exception": repr(exc)}
    try:
        parsed = json.loads(text)
    except ValueError:
        return status, {"text": text[:200].decode(errors="replace")}
    return status, parsed if isinstance(parsed, dict) else {"json": parsed}


def report(probe: str, status: int | None, body: dict[str, Any], **extra: Any) -> None:
    line = {"probe": probe, "status": status, "error": body.get("error"), **extra}
    line["detail"] = {k: v for k, v in body.items() if k in ("message", "exception", "text")}
    print(json.dumps(line), flush=True)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="the server's URL")
    parser.add_argument("--credential", type=Path, required=True, help="credential folder")
    parser.add_argument("--impersonate", required=True, help="another client's id")
    parser.add_argument("--foreign-namespace", required=True, help="the server's namespace")
    parser.add_argument("--server-timeout", type=float, default=600.0)
    parser.add_argument("--revocation-timeout", type=float, default=600.0)
    parser.add_argument(
        "--wait-submitted", type=int, default=0, help="updates in round 1 for round_waiting"
    )
    args = parser.parse_args(argv)
    own_id = (args.credential / "client_id").read_text().strip()
    token = (args.credential / "token").read_text().strip()
    ca = args.credential / "ca.crt"
    context = ssl.create_default_context(cafile=str(ca)) if ca.is_file() else None
    server = args.server.rstrip("/")

    api = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
    own_account = (SERVICE_ACCOUNT / "token").read_text().strip()
    status, body = request(
        f"{KUBERNETES_API}/api/v1/namespaces/{args.foreign_namespace}/secrets",
        api,
        headers=bearer(own_account),
    )
    # Only the status and reason: were the list ever allowed, its items must not be printed.
    report("foreign_secrets", status, {"message": body.get("reason") or body.get("message")})

    deadline = time.monotonic() + args.server_timeout
    while True:
        status, body = request(f"{server}/healthz", context)
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(1.0)  # the server pod may still be starting: a poll interval
    report("wait_server", status, body)
    if status != 200:
        return 1

    def join(client_id: str, with_token: str) -> tuple[int | None, dict[str, Any]]:
        return request(
            f"{server}/v1/join",
            context,
            method="POST",
            headers={**bearer(with_token), "Content-Type": "application/json"},
            body=json.dumps({"client_id": client_id}).encode(),
        )

    report("unknown_token", *join(own_id, secrets.token_urlsafe(32)))
    report("impersonate_join", *join(args.impersonate, token))
    update_headers = {
        **bearer(token),
        "X-FL-Client-Id": args.impersonate,
        "X-FL-Round": "1",
        "X-FL-Num-Examples": "100",
        "Content-Type": "application/vnd.safetensors",
    }
    report(
        "impersonate_update",
        *request(
            f"{server}/v1/update",
            context,
            method="POST",
            headers=update_headers,
            body=secrets.token_bytes(4096),
        ),
    )
    status, body = join(own_id, token)
    report("join", status, body)
    if status != 200:
        return 1

    accepted, waiting = 0, False
    deadline = time.monotonic() + args.revocation_timeout
    while time.monotonic() < deadline:
        status, body = request(
            f"{server}/v1/status", context, headers={**bearer(token), "X-FL-Client-Id": own_id}
        )
        if status != 200 and status is not None:
            break
        accepted += status == 200
        submitted = body.get("submitted") or []
        if not waiting and body.get("round") == 1 and len(submitted) >= args.wait_submitted:
            waiting = True
            report("round_waiting", status, {}, round=1, submitted=submitted)
        time.sleep(0.5)  # a poll interval
    report("revoked", status, body, accepted_before=accepted)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``fl-kubeflow client`` that crashes right after one secure-aggregation POST succeeds.

For the drop-out tests in test_secagg_runs.py only (the product has no such hook):

    python tests/secagg_dropout_client.py shares [--record FILE] -- client --server URL ...

runs the real client command line (everything after ``--``) and, once its first
``POST /v1/secagg/shares`` has been answered (the server holds what it sent), ends
the process at once with exit code DIED: no leave, no further request, as a client
whose machine was lost. STAGE is the last part of a ``protocol.SECAGG_*_PATH``, or
``never`` (the client runs to its end). ``--record FILE``: one JSON line per request
answered (method, path, status, content type), to see which requests a round took.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from fl_kubeflow import protocol
from fl_kubeflow.cli import main
from fl_kubeflow.client import transport

DIED = 17
STAGE_PATHS = {
    "keys": protocol.SECAGG_KEYS_PATH,
    "shares": protocol.SECAGG_SHARES_PATH,
    "masked": protocol.SECAGG_MASKED_PATH,
    "reveal": protocol.SECAGG_REVEAL_PATH,
}


def crash_after(stage: str, record: Path | None = None) -> None:
    """Make every Transport end this process once a POST to ``stage``'s path is answered
    (``never``: not), and write each answered request to ``record``."""
    path = STAGE_PATHS.get(stage)
    send = transport.Transport.request

    def request(self: transport.Transport, method: str, url_path: str, **kwargs: Any) -> Any:
        answer = send(self, method, url_path, **kwargs)
        if record is not None:
            line = {
                "method": method.upper(),
                "path": url_path.split("?")[0],
                "status": answer.status_code,
                "type": answer.headers.get("Content-Type", "").split(";")[0],
            }
            with record.open("a") as out:
                out.write(json.dumps(line) + "\n")
        if method.upper() == "POST" and url_path.split("?")[0] == path:
            print(f"dropout client: dying after POST {path}", flush=True)
            os._exit(DIED)
        return answer

    transport.Transport.request = request  # type: ignore[method-assign]


if __name__ == "__main__":
    stage, *rest = sys.argv[1:]
    record = None
    if rest[:1] == ["--record"]:
        record, rest = Path(rest[1]), rest[2:]
    if rest[:1] != ["--"] or (stage not in STAGE_PATHS and stage != "never"):
        raise SystemExit("usage: secagg_dropout_client.py STAGE|never [--record FILE] -- ARGS")
    crash_after(stage, record)
    raise SystemExit(main(rest[1:]))

"""``fl-kubeflow client`` that crashes right after one secure-aggregation POST succeeds.

For the drop-out tests in test_secagg_runs.py only (the product has no such hook):

    python tests/secagg_dropout_client.py shares -- client --server URL ...

runs the real client command line (everything after ``--``) and, once its first
``POST /v1/secagg/shares`` has been answered (the server holds what it sent), ends
the process at once with exit code DIED: no leave, no further request, as a client
whose machine was lost. STAGE is the last part of a ``protocol.SECAGG_*_PATH``.
"""

from __future__ import annotations

import os
import sys
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


def crash_after(stage: str) -> None:
    """Make every Transport end this process once a POST to ``stage``'s path is answered."""
    path = STAGE_PATHS[stage]
    send = transport.Transport.request

    def request(self: transport.Transport, method: str, url_path: str, **kwargs: Any) -> Any:
        answer = send(self, method, url_path, **kwargs)
        if method.upper() == "POST" and url_path.split("?")[0] == path:
            print(f"dropout client: dying after POST {path}", flush=True)
            os._exit(DIED)
        return answer

    transport.Transport.request = request  # type: ignore[method-assign]


if __name__ == "__main__":
    stage, separator, *cli = sys.argv[1:]
    if separator != "--":
        raise SystemExit("usage: secagg_dropout_client.py STAGE -- CLIENT-ARGS")
    crash_after(stage)
    raise SystemExit(main(cli))

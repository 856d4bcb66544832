"""What the pipeline's exit handler does: delete this run's Service and token Secret.

The server deletes its Service itself; this catches the cases where it could not
(killed, evicted, timed out). Idempotent: a Service already gone is fine.
"""

from __future__ import annotations

import logging
import os

from fl_kubeflow.kube.service import DEFAULT_TOKEN_DIR, cleanup_run_service
from fl_kubeflow.kube.token_secret import cleanup_run_token

log = logging.getLogger("fl_kubeflow.tasks.cleanup")


def run_cleanup_task(run_id: str, *, token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR) -> bool:
    """Delete the run's Service if it is still there; return whether something was deleted.

    Outside a cluster this logs and returns False. RBAC refusals raise
    ``KubernetesPermissionError`` so that a leaked Service is visible as a failed step.
    """
    deleted = cleanup_run_service(run_id, token_dir=token_dir)
    secret_deleted = cleanup_run_token(run_id, token_dir=token_dir)
    log.info(
        "cleanup for run %s: Service %s, token Secret %s",
        run_id,
        "deleted" if deleted else "already gone",
        "deleted" if secret_deleted else "already gone",
    )
    return deleted or secret_deleted

"""What the pipeline's exit handler does: delete this run's Service and credential Secrets.

The server deletes its Service itself; this catches the cases where it could not
(killed, evicted, timed out). Idempotent: a Service already gone is fine.
"""

from __future__ import annotations

import logging
import os

from fl_kubeflow.kube.credential_secrets import cleanup_run_credentials
from fl_kubeflow.kube.service import DEFAULT_TOKEN_DIR, cleanup_run_service

log = logging.getLogger("fl_kubeflow.tasks.cleanup")


def run_cleanup_task(
    run_id: str,
    num_clients: int = 0,
    *,
    service_name: str = "",
    token_dir: str | os.PathLike[str] = DEFAULT_TOKEN_DIR,
) -> bool:
    """Delete the run's Service and its clients' credential Secrets if still there.

    ``num_clients`` names the all-in-one run's Secrets ``fl-<run>-cred-0`` ...; 0 deletes
    none (a server pipeline's clients hold credentials the run did not make). Returns
    whether something was deleted. Outside a cluster this logs and returns False. RBAC
    refusals raise ``KubernetesPermissionError`` so that a leak is visible as a failed step.
    """
    deleted = cleanup_run_service(run_id, name=service_name, token_dir=token_dir)
    ids = [str(i) for i in range(num_clients)]
    secrets = cleanup_run_credentials(run_id, ids, token_dir=token_dir) if ids else 0
    log.info(
        "cleanup for run %s: Service %s, %d credential Secrets deleted",
        run_id,
        "deleted" if deleted else "already gone",
        secrets,
    )
    return deleted or secrets > 0

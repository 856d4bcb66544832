"""Compile the federated-learning pipeline to YAML: ``python compile.py [--image IMAGE]``.

Upload the result in the KFP UI (Pipelines -> Upload pipeline) or submit it with
``fl-kubeflow submit``. The output is deterministic: the same image gives the same bytes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from fl_kubeflow_kfp.components import DEFAULT_IMAGE
from fl_kubeflow_kfp.pipeline import (
    CLIENT_RESOURCES,
    SERVER_RESOURCES,
    PodResources,
    compile_pipeline,
)
from fl_kubeflow_kfp.pipeline.fl_pipeline import FIELDS, SERVER_RETRIES, server_retry_deadline

DEFAULT_RESOURCES = {"server": SERVER_RESOURCES, "client": CLIENT_RESOURCES}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python compile.py",
        description="Compile the fl-kubeflow pipeline to a KFP v2 YAML package.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output", type=Path, default=Path("fl_pipeline.yaml"), help="YAML file")
    parser.add_argument(
        "--image",
        default=DEFAULT_IMAGE,
        help="container image every component runs in (built from images/Dockerfile)",
    )
    resources = parser.add_argument_group(
        "pod resources",
        "defaults of the pipeline's <role>_cpu_request ... parameters (a run may change them); "
        "Kubernetes quantities such as 500m, 2, 512Mi, 4Gi",
    )
    for role, defaults in DEFAULT_RESOURCES.items():
        for name in FIELDS:
            resources.add_argument(
                f"--{role}-{name.replace('_', '-')}",
                default=getattr(defaults, name),
                help=f"{name.replace('_', ' ')} of the {role} pod"
                + (" (each of them)" if role == "client" else ""),
            )
    parser.add_argument(
        "--server-retry-deadline",
        type=int,
        default=server_retry_deadline(),
        metavar="SECONDS",
        help="with checkpoint_pvc, how long after the server step's first start KFP may "
        f"still retry its pod (up to {SERVER_RETRIES} times); the default covers the default "
        "num_rounds, join_timeout and round_timeout with every retry and in-pod restart "
        "taking its longest: raise it for longer runs (docs/kubeflow.md)",
    )
    args = parser.parse_args(argv)
    try:
        server, client = (
            PodResources(**{name: getattr(args, f"{role}_{name}") for name in FIELDS})
            for role in DEFAULT_RESOURCES
        )
        written = compile_pipeline(
            args.output, args.image, server, client, args.server_retry_deadline
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {written} (image {args.image})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

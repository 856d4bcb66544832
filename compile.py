"""Compile the federated-learning pipelines to YAML: ``python compile.py [--image IMAGE]``.

Writes the all-in-one pipeline (``--output``, default ``fl_pipeline.yaml``) and, beside it,
the cross-silo pair ``fl_server_pipeline.yaml`` and ``fl_client_pipeline.yaml``
(docs/kubeflow.md, "Across silos"). Upload them in the KFP UI (Pipelines -> Upload
pipeline) or submit one with ``fl-kubeflow submit``. Beside them go the suite's component
files (``components/<name>.yaml``) and their reference (``docs/components.md``). The
output is deterministic: the same options give the same bytes.
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
    build_pipeline,
    compile_pipeline,
)
from fl_kubeflow_kfp.pipeline.client_pipeline import (
    CLIENT_PIPELINE_FILE,
    build_client_pipeline,
    compile_client_pipeline,
)
from fl_kubeflow_kfp.pipeline.fl_pipeline import FIELDS, SERVER_RETRIES, server_retry_deadline
from fl_kubeflow_kfp.pipeline.reference import write_reference
from fl_kubeflow_kfp.pipeline.server_pipeline import (
    SERVER_PIPELINE_FILE,
    build_server_pipeline,
    compile_server_pipeline,
)
from fl_kubeflow_kfp.pipeline.suite import component_specs, write_component_files

DEFAULT_RESOURCES = {"server": SERVER_RESOURCES, "client": CLIENT_RESOURCES}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python compile.py",
        description="Compile the fl-kubeflow pipeline to a KFP v2 YAML package.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output", type=Path, default=Path("fl_pipeline.yaml"), help="YAML file")
    parser.add_argument(
        "--components-dir",
        type=Path,
        help="folder for the component files <name>.yaml (default: components/ in the "
        "folder of --output)",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        help="Markdown reference of the components and the pipeline's parameters "
        "(default: docs/components.md in the folder of --output)",
    )
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
        options = (args.image, server, client, args.server_retry_deadline)
        written = compile_pipeline(args.output, *options)
        folder = args.output.parent
        silos = [
            compile_server_pipeline(
                folder / SERVER_PIPELINE_FILE, args.image, server, args.server_retry_deadline
            ),
            compile_client_pipeline(folder / CLIENT_PIPELINE_FILE, args.image, client),
        ]
    except ValueError as exc:
        parser.error(str(exc))
    specs = component_specs(args.image)
    files = write_component_files(args.components_dir or args.output.parent / "components", specs)
    reference = write_reference(
        args.reference or args.output.parent / "docs" / "components.md",
        specs,
        build_pipeline(*options),
        args.output.name,
        [
            (
                "server-pipeline",
                build_server_pipeline(args.image, server, args.server_retry_deadline),
                SERVER_PIPELINE_FILE,
            ),
            ("client-pipeline", build_client_pipeline(args.image, client), CLIENT_PIPELINE_FILE),
        ],
    )
    print(
        f"wrote {written}, {', '.join(map(str, silos))}, {len(files)} component files in "
        f"{files[0].parent}, {reference}"
    )
    print(f"(image {args.image})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

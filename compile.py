"""Compile the federated-learning pipeline to YAML: ``python compile.py [--image IMAGE]``.

Upload the result in the KFP UI (Pipelines -> Upload pipeline) or submit it with
``fl-kubeflow submit``. The output is deterministic: the same image gives the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

# Run from anywhere: the pipeline and components packages live next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from components import DEFAULT_IMAGE
from pipeline import compile_pipeline


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
    args = parser.parse_args(argv)
    try:
        written = compile_pipeline(args.output, args.image)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {written} (image {args.image})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

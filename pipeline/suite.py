"""The suite's components, one registry: what ``compile.py`` writes as component files.

Every entry of ``component_specs(image)`` becomes ``components/<name>.yaml`` (the KFP
convention for sharing components) and a section of ``docs/components.md``; adding a
component here is all it takes to ship, load (``fl_kubeflow_kfp.components.load``) and
document it.
"""

from __future__ import annotations

from pathlib import Path

from fl_kubeflow_kfp.components import DEFAULT_IMAGE, build_components
from fl_kubeflow_kfp.pipeline.federated_training import build_federated_training
from kfp import compiler
from kfp.dsl.base_component import BaseComponent


def component_specs(image: str = DEFAULT_IMAGE) -> dict[str, BaseComponent]:
    """Every component of the suite for ``image``, by the stem of its component file."""
    comps = build_components(image)
    return {
        "client_ids": comps.client_ids,
        "fl_server": comps.server,
        "fl_client": comps.client,
        "fl_cleanup": comps.cleanup,
        # Graph components: the whole federation as one step of a user's pipeline.
        "federated_training": build_federated_training(image),
        "federated_training_from_model": build_federated_training(image, initial_model=True),
    }


def write_component_files(directory: str | Path, specs: dict[str, BaseComponent]) -> list[Path]:
    """Compile each of ``specs`` into ``directory/<name>.yaml``; the same specs, the same bytes.

    Other files in ``directory`` stay (a test checks that ``components/`` holds exactly the
    suite's files, since ``load`` and the wheel ship every ``*.yaml`` there).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, component in specs.items():
        path = directory / f"{name}.yaml"
        compiler.Compiler().compile(component, package_path=str(path))
        written.append(path)
    return written

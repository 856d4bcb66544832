"""KFP components of the federated-learning pipeline, built for a chosen image.

``build_components(image)`` turns the functions in ``functions`` into
lightweight Python components that run ``python3 -m kfp.dsl.executor_main`` in
``image`` with nothing installed at run time (``install_kfp_package=False``,
``packages_to_install=[]``): the image must contain kfp and fl-kubeflow (see
``images/Dockerfile``), and air-gapped clusters work.

The same components, compiled for the default image, ship as component files
``components/<name>.yaml`` (written by ``compile.py``): ``load(name)`` loads the installed
one, ``component_file(name)`` gives its path (see ``docs/components.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fl_kubeflow_kfp.components import functions
from kfp import components, dsl
from kfp.dsl.python_component import PythonComponent
from kfp.dsl.yaml_component import YamlComponent

DEFAULT_IMAGE = "ghcr.io/fl-on-kubeflow/fl-kubeflow:0.1.0"


@dataclass(frozen=True)
class FLComponents:
    """The four components, all using one image."""

    image: str
    client_ids: PythonComponent
    server: PythonComponent
    client: PythonComponent
    cleanup: PythonComponent


def _component(func, image: str) -> PythonComponent:
    return dsl.component(
        func,
        base_image=image,
        install_kfp_package=False,
        packages_to_install=[],
    )


def build_components(image: str = DEFAULT_IMAGE) -> FLComponents:
    """Build every component for ``image`` (a non-empty container image reference)."""
    if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
        raise ValueError(f"image must be a container image reference, got {image!r}")
    return FLComponents(
        image=image,
        client_ids=_component(functions.client_ids, image),
        server=_component(functions.fl_server, image),
        client=_component(functions.fl_client, image),
        cleanup=_component(functions.fl_cleanup, image),
    )


def component_names() -> list[str]:
    """The names of the component files installed with this package, sorted."""
    return sorted(path.stem for path in Path(__file__).parent.glob("*.yaml"))


def component_file(name: str) -> Path:
    """The path of the installed component file ``<name>.yaml``, e.g. ``fl_server``.

    Raises:
        ValueError: No component file of that name is installed; the message lists those
            that are.
    """
    if name in component_names():
        return Path(__file__).with_name(f"{name}.yaml")
    raise ValueError(
        f"no component file {name!r} in {Path(__file__).parent}; installed: "
        + (", ".join(component_names()) or "none (run python compile.py)")
    )


def load(name: str) -> YamlComponent:
    """Load the installed component file ``<name>.yaml`` as a KFP component.

    The files are compiled for ``DEFAULT_IMAGE``; ``task.set_container_image(IMAGE)`` on a
    task runs it in another image (with fl-kubeflow and kfp installed), or
    ``build_components(IMAGE)`` builds them all for that image.
    """
    return components.load_component_from_file(str(component_file(name)))


__all__ = [
    "DEFAULT_IMAGE",
    "FLComponents",
    "build_components",
    "component_file",
    "component_names",
    "load",
]

"""KFP components of the federated-learning pipeline, built for a chosen image.

``build_components(image)`` turns the functions in ``functions`` into
lightweight Python components that run ``python3 -m kfp.dsl.executor_main`` in
``image`` with nothing installed at run time (``install_kfp_package=False``,
``packages_to_install=[]``): the image must contain kfp and fl-kubeflow (see
``images/Dockerfile``), and air-gapped clusters work.
"""

from __future__ import annotations

from dataclasses import dataclass

from fl_kubeflow_kfp.components import functions
from kfp import dsl
from kfp.dsl.python_component import PythonComponent

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


__all__ = ["DEFAULT_IMAGE", "FLComponents", "build_components"]

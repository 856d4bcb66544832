"""fl-kubeflow's KFP component suite: federated learning as steps of your own pipelines.

Installed with ``pip install 'fl-kubeflow[kfp]'``. Its two subpackages are built from the
repository's top-level folders, which stay the source of truth:

- ``fl_kubeflow_kfp.components`` (``components/``): the server, client, client-ids and
  cleanup components, built for a chosen image by ``build_components(image)``;
- ``fl_kubeflow_kfp.pipeline`` (``pipeline/``): the federated-learning pipeline;
- ``fl_kubeflow_kfp.results``: a finished run's metrics, learning curves and trained model,
  found through ``kfp.Client`` and downloaded from KFP's artifact store (for notebooks).

The same components ship as KFP component files, ``components/<name>.yaml``:
``fl_kubeflow_kfp.components.load(name)`` loads the installed one. ``docs/components.md``
lists every component's inputs and outputs.

The runtime they run, ``fl_kubeflow``, never imports kfp; this package is the only one
that does.
"""

from fl_kubeflow_kfp.components import DEFAULT_IMAGE, FLComponents, build_components
from fl_kubeflow_kfp.pipeline import (
    CLIENT_RESOURCES,
    PIPELINE_NAME,
    SERVER_RESOURCES,
    PodResources,
    build_pipeline,
    compile_pipeline,
)

__all__ = [
    "CLIENT_RESOURCES",
    "DEFAULT_IMAGE",
    "PIPELINE_NAME",
    "SERVER_RESOURCES",
    "FLComponents",
    "PodResources",
    "build_components",
    "build_pipeline",
    "compile_pipeline",
]

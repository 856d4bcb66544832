"""Package layout only (metadata is in pyproject.toml).

The KFP suite's sources are the repository's top-level ``components/`` and ``pipeline/``
folders; they install as ``fl_kubeflow_kfp.components`` and ``fl_kubeflow_kfp.pipeline``,
never as generic top-level ``components``/``pipeline`` packages. pyproject.toml's
``packages.find`` cannot map folders outside ``src/``, hence this file.
"""

from setuptools import find_packages, setup

SUITE = {"fl_kubeflow_kfp.components": "components", "fl_kubeflow_kfp.pipeline": "pipeline"}

setup(
    packages=[*find_packages("src"), *SUITE],
    package_dir={"": "src", **SUITE},
    package_data={"fl_kubeflow_kfp.components": ["*.yaml"]},
)

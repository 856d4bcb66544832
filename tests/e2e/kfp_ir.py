"""A compiled KFP v2 pipeline package (``compile.py``'s YAML), read as the backend reads it.

The package holds two YAML documents: the PipelineSpec (components, DAGs, executors) and,
when kfp-kubernetes was used, the PlatformSpec (``platforms.kubernetes``). This module only
reads them; executing them is ``kfp_runner``'s job.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# The KFP 2.17 manifests' Argo ``templateDefaults``: every template gets this retry strategy
# unless it sets its own fields (kubeflow/pipelines manifests, workflow-controller configmap).
ARGO_TEMPLATE_DEFAULT_RETRY = {"limit": 2, "retryPolicy": "OnError"}

PIPELINE_JOB_UUID = "{{$.pipeline_job_uuid}}"
PIPELINE_JOB_NAME = "{{$.pipeline_job_name}}"


@dataclass(frozen=True)
class PipelineIR:
    """The two documents of a compiled pipeline package."""

    spec: dict[str, Any]
    platform: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> PipelineIR:
        """Read a package written by ``kfp.compiler.Compiler().compile``."""
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        if not docs or "root" not in docs[0]:
            raise ValueError(f"{path}: not a compiled KFP pipeline (no root DAG)")
        platform = docs[1].get("platforms", {}) if len(docs) > 1 else {}
        return cls(spec=docs[0], platform=platform)

    @property
    def name(self) -> str:
        """``pipelineInfo.name``: the pipeline name (part of every artifact URI)."""
        return self.spec["pipelineInfo"]["name"]

    @property
    def root(self) -> dict[str, Any]:
        """The root component (its ``dag`` and ``inputDefinitions``)."""
        return self.spec["root"]

    def component(self, name: str) -> dict[str, Any]:
        """A component by its ``componentRef.name``."""
        return self.spec["components"][name]

    def executor(self, label: str) -> dict[str, Any]:
        """``deploymentSpec.executors[label]``: a ``container`` or an ``importer``."""
        return self.spec["deploymentSpec"]["executors"][label]

    def kubernetes_config(self, label: str) -> dict[str, Any]:
        """The kfp-kubernetes executor config for ``label`` (empty if there is none)."""
        executors = self.platform.get("kubernetes", {}).get("deploymentSpec", {})
        return executors.get("executors", {}).get(label, {})


def protojson_number(value: float | int) -> float | int:
    """A number as Go's protojson writes a protobuf double: integral values without ``.0``.

    The driver hands constants and parameters on as ``structpb`` numbers and the launcher
    writes the ExecutorInput with protojson, so ``8080.0`` in the IR reaches the component
    as ``8080``. protojson switches to exponent form at 1e21 (as JSON.stringify does); Python's
    ``json`` does the same for such floats, so they stay floats here.
    """
    if isinstance(value, bool):
        raise TypeError("a bool is not a protobuf number")
    number = float(value)
    if math.isfinite(number) and number.is_integer() and abs(number) < 1e21:
        return int(number)
    return number


def to_protojson(value: Any) -> Any:
    """A ``structpb.Value`` tree with every number written the way protojson writes it."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return protojson_number(value)
    if isinstance(value, list):
        return [to_protojson(v) for v in value]
    if isinstance(value, dict):
        return {k: to_protojson(v) for k, v in value.items()}
    raise TypeError(f"not a protobuf Value: {value!r}")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


def duration_seconds(text: str | float | int | None) -> float | None:
    """A protobuf Duration as the IR writes it (``"10s"``), or a bare number, in seconds."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"unsupported duration {text!r} (expected e.g. '10s')")
    return float(match.group(1))

"""The Pod that KFP 2.17 (Argo executor template + driver pod spec patch) runs for one task.

What is reproduced, and from where in kubeflow/pipelines 2.17.0:

* the user container ``main``: the executor's image, its command and args with the
  launcher's placeholders substituted (the launcher itself is not run: see kfp_runner),
  ``restartPolicy: Never`` (Argo);
* resources exactly as the IR states them (``driver.go`` ``getPodResource``: the
  ``resource*`` strings first, a ``{{$.inputs.parameters[...]}}`` one taken from the
  task's inputs, else the old float fields, memory as ``%vG``);
* env: ``KFP_POD_NAME``/``KFP_POD_UID`` (Argo template ``commonEnvs``), ``KFP_RETRY_INDEX`` on
  tasks with a retry policy, the IR's container env, ``fieldPathAsEnv``, ``secretAsEnv``
  (``driver/k8s.go``);
* volumes: the artifact store at ``/minio`` (a hostPath standing in for the launcher's
  MinIO download/upload), the scratch emptyDirs of the executor template, ``pvcMount`` and
  ``secretAsVolume`` with parameter-valued names (volume name = the resolved name);
* metadata: ``pipeline/runid=<run UUID>`` (the API server puts it on every pod), the
  task's ``podMetadata`` labels and annotations, ``sidecar.istio.io/inject: "false"``;
* ``activeDeadlineSeconds`` when Argo sets an execution deadline (a retry under a
  ``backoffMaxDuration``) or the task sets one (``set_timeout``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.e2e.kfp_inputs import UnsupportedFeature

RUN_ID_LABEL = "pipeline/runid"
WORKFLOW_LABEL = "workflows.argoproj.io/workflow"
MAIN_CONTAINER = "main"
STORE_MOUNT = "/minio"
STORE_VOLUME = "kfp-artifact-store"
# The executor template's scratch emptyDirs (argocompiler/container.go).
SCRATCH_MOUNTS = {
    "gcs-scratch": "/gcs",
    "s3-scratch": "/s3",
    "dot-local-scratch": "/.local",
    "dot-cache-scratch": "/.cache",
    "dot-config-scratch": "/.config",
}
HANDLED_KUBERNETES_KEYS = {
    "fieldPathAsEnv",
    "podMetadata",
    "pvcMount",
    "secretAsVolume",
    "secretAsEnv",
    "imagePullPolicy",
    "activeDeadlineSeconds",
}


@dataclass(frozen=True)
class PodPlacement:
    """Where and as whom the run's pods run."""

    namespace: str
    service_account: str
    store_host_path: str
    image_pull_policy: str = "IfNotPresent"


_INPUT_CHANNEL = re.compile(r"\$\.inputs\.parameters\['(.+?)'\]")


def _quantity(
    new: str | None, old: float | None, unit: str, parameters: dict[str, Any]
) -> str | None:
    if new:
        channel = _INPUT_CHANNEL.search(new)
        if channel is None:
            return new
        # resolvePodSpecInputRuntimeParameter: the whole field becomes the parameter's
        # string value (a number there would be "", which the driver then refuses).
        value = parameters.get(channel.group(1))
        if not isinstance(value, str) or not value:
            raise ValueError(f"resource {new!r}: parameter value {value!r} is not a quantity")
        return value
    if old:
        # Go's %v of a float64: the shortest form, no trailing ".0".
        return repr(float(old)).removesuffix(".0") + unit
    return None


def container_resources(
    container: dict[str, Any], parameters: dict[str, Any] | None = None
) -> dict[str, dict[str, str]]:
    """Requests and limits as the driver derives them from the IR and the task's inputs."""
    spec = container.get("resources", {})
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    for target, kind, new_key, old_key, unit in (
        (limits, "memory", "resourceMemoryLimit", "memoryLimit", "G"),
        (requests, "memory", "resourceMemoryRequest", "memoryRequest", "G"),
        (limits, "cpu", "resourceCpuLimit", "cpuLimit", ""),
        (requests, "cpu", "resourceCpuRequest", "cpuRequest", ""),
    ):
        value = _quantity(spec.get(new_key), spec.get(old_key), unit, parameters or {})
        if value is not None:
            target[kind] = value
    if spec.get("accelerator"):
        raise UnsupportedFeature("accelerators")
    result: dict[str, dict[str, str]] = {}
    if limits:
        result["limits"] = limits
    if requests:
        result["requests"] = requests
    return result


def _name_from(
    entry: dict[str, Any], static_key: str, parameter_key: str, resolve: Callable[[Any], Any]
) -> str:
    if entry.get(parameter_key):
        value = resolve(entry[parameter_key])
    elif entry.get(static_key):
        value = entry[static_key]
    elif entry.get("componentInputParameter"):  # deprecated form of pvcMount
        value = resolve({"componentInputParameter": entry["componentInputParameter"]})
    else:
        raise ValueError(f"kubernetes config entry without a name: {entry}")
    if not isinstance(value, str) or not value:
        raise ValueError(f"kubernetes config {entry}: resolved name {value!r} is empty")
    return value


def build_pod(
    *,
    name: str,
    run_id: str,
    workflow: str,
    image: str,
    command: list[str],
    args: list[str],
    container: dict[str, Any],
    kubernetes_config: dict[str, Any],
    resolve: Callable[[Any], Any],
    placement: PodPlacement,
    parameters: dict[str, Any] | None = None,
    retry_index: int | None = None,
    active_deadline_seconds: int | None = None,
    extra_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The Pod manifest (a dict the kubernetes client accepts) for one attempt of a task.

    ``resolve`` turns a ``TaskInputsSpec.InputParameterSpec`` (as kfp-kubernetes writes
    for parameter-valued names) into its value, as the driver does from the parent DAG;
    ``parameters`` are the ExecutorInput's values, for resources given as parameters.
    """
    unknown = sorted(set(kubernetes_config) - HANDLED_KUBERNETES_KEYS)
    if unknown:
        raise UnsupportedFeature(f"kubernetes executor config {unknown}")
    env: list[dict[str, Any]] = [
        {"name": "KFP_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "KFP_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
    ]
    if retry_index is not None:
        env.append({"name": "KFP_RETRY_INDEX", "value": str(retry_index)})
    env += [{"name": e["name"], "value": e.get("value", "")} for e in container.get("env", [])]
    for item in kubernetes_config.get("fieldPathAsEnv", []):
        env.append(
            {"name": item["name"], "valueFrom": {"fieldRef": {"fieldPath": item["fieldPath"]}}}
        )
    for item in kubernetes_config.get("secretAsEnv", []):
        secret = _name_from(item, "secretName", "secretNameParameter", resolve)
        for key in item.get("keyToEnv", []):
            selector: dict[str, Any] = {"name": secret, "key": key["secretKey"]}
            if "optional" in item:
                selector["optional"] = bool(item["optional"])
            env.append({"name": key["envVar"], "valueFrom": {"secretKeyRef": selector}})

    volumes: list[dict[str, Any]] = [
        {
            "name": STORE_VOLUME,
            "hostPath": {"path": placement.store_host_path, "type": "Directory"},
        },
        *({"name": n, "emptyDir": {}} for n in SCRATCH_MOUNTS),
    ]
    mounts: list[dict[str, Any]] = [
        {"name": STORE_VOLUME, "mountPath": STORE_MOUNT},
        *({"name": n, "mountPath": p} for n, p in SCRATCH_MOUNTS.items()),
    ]
    for item in kubernetes_config.get("pvcMount", []):
        claim = _name_from(item, "constant", "pvcNameParameter", resolve)
        volumes.append({"name": claim, "persistentVolumeClaim": {"claimName": claim}})
        mount = {"name": claim, "mountPath": item["mountPath"]}
        if item.get("subPath"):
            mount["subPath"] = item["subPath"]
        mounts.append(mount)
    for item in kubernetes_config.get("secretAsVolume", []):
        secret = _name_from(item, "secretName", "secretNameParameter", resolve)
        source = {"secretName": secret, "optional": bool(item.get("optional", False))}
        volumes.append({"name": secret, "secret": source})
        mounts.append({"name": secret, "mountPath": item["mountPath"]})

    metadata = kubernetes_config.get("podMetadata", {})
    labels = {**metadata.get("labels", {}), RUN_ID_LABEL: run_id, WORKFLOW_LABEL: workflow}
    labels.update(extra_labels or {})
    annotations = {**metadata.get("annotations", {}), "sidecar.istio.io/inject": "false"}

    main: dict[str, Any] = {
        "name": MAIN_CONTAINER,
        "image": image,
        "command": command,
        "args": args,
        "env": env,
        "volumeMounts": mounts,
        "imagePullPolicy": kubernetes_config.get("imagePullPolicy") or placement.image_pull_policy,
    }
    resources = container_resources(container, parameters)
    if resources:
        main["resources"] = resources
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": placement.service_account,
        "containers": [main],
        "volumes": volumes,
    }
    deadlines = [
        d
        for d in (active_deadline_seconds, kubernetes_config.get("activeDeadlineSeconds"))
        if d is not None
    ]
    if deadlines:
        spec["activeDeadlineSeconds"] = max(1, int(min(deadlines)))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": placement.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    }

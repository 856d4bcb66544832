"""One container task, planned as the driver plans it: ExecutorInput, command, pod, retries.

``ContainerPlan.make`` does what KFP's driver does once per task (outputs provisioned,
ExecutorInput built, placeholders substituted, retry strategy merged with Argo's defaults);
``ContainerPlan.pod`` gives the pod of one attempt. No cluster is needed for either, so
tests can check them against the IR before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tests.e2e.kfp_inputs import (
    RunInfo,
    Scope,
    TaskOutputs,
    build_executor_input,
    compile_command,
    provision_outputs,
    resolve_parameter,
    resolve_task_inputs,
)
from tests.e2e.kfp_ir import PipelineIR
from tests.e2e.kfp_pods import PodPlacement, build_pod
from tests.e2e.kfp_retry import RetryStrategy

TASK_LABEL = "fl-e2e/task"  # bookkeeping only (Argo puts its own node labels on pods)


def dns_label(text: str, limit: int = 63) -> str:
    """``text`` made a valid DNS-1123 label (pod names, label values)."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:limit].rstrip("-")


@dataclass(frozen=True)
class ContainerPlan:
    """Everything fixed for a container task before its first pod starts."""

    name: str
    task: dict[str, Any]
    component: dict[str, Any]
    container: dict[str, Any]
    kubernetes_config: dict[str, Any]
    parent: Scope
    run: RunInfo
    executor_input: dict[str, Any]
    command: list[str]
    args: list[str]
    retry: RetryStrategy
    iteration: int | None = None

    @classmethod
    def make(
        cls,
        ir: PipelineIR,
        name: str,
        task: dict[str, Any],
        inputs: Scope,
        parent: Scope,
        run: RunInfo,
        *,
        iteration: int | None = None,
        template_defaults: dict[str, Any] | None = None,
    ) -> ContainerPlan:
        """Plan task ``name`` (its key in the parent DAG) with its resolved ``inputs``."""
        component = ir.component(task["componentRef"]["name"])
        label = component["executorLabel"]
        container = ir.executor(label)["container"]
        outputs = provision_outputs(component, name, run)
        executor_input = build_executor_input(component, inputs, outputs)
        command, args = compile_command(
            executor_input, container.get("command", []), container.get("args", [])
        )
        return cls(
            name=name,
            task=task,
            component=component,
            container=container,
            kubernetes_config=ir.kubernetes_config(label),
            parent=parent,
            run=run,
            executor_input=executor_input,
            command=command,
            args=args,
            retry=RetryStrategy.for_task(task.get("retryPolicy"), template_defaults),
            iteration=iteration,
        )

    @property
    def outputs(self) -> dict[str, Any]:
        """``ExecutorInput.outputs``: artifact URIs, parameter files, the output file."""
        return self.executor_input["outputs"]

    def resolve(self, spec: dict[str, Any]) -> Any:
        """A kfp-kubernetes parameter-valued name, from the parent DAG's inputs (k8s.go)."""
        present, value = resolve_parameter(spec, self.parent, {}, self.run)
        if not present:
            raise ValueError(f"{self.name}: kubernetes config parameter {spec} is not set")
        return value

    def pod_name(self, attempt: int) -> str:
        """A pod name unique per run, task, loop iteration and attempt."""
        suffix = f"-{self.iteration}" if self.iteration is not None else ""
        return dns_label(f"r{self.run.run_id[:8]}-{self.name}{suffix}-{attempt}")

    def pod(
        self,
        placement: PodPlacement,
        attempt: int = 0,
        active_deadline_seconds: int | None = None,
    ) -> dict[str, Any]:
        """The pod manifest of attempt ``attempt`` (0 = the first)."""
        return build_pod(
            name=self.pod_name(attempt),
            run_id=self.run.run_id,
            workflow=dns_label(self.run.run_name),
            image=self.container["image"],
            command=self.command,
            args=self.args,
            container=self.container,
            kubernetes_config=self.kubernetes_config,
            resolve=self.resolve,
            placement=placement,
            parameters=self.executor_input["inputs"].get("parameterValues", {}),
            # KFP_RETRY_INDEX is {{retries}}, set only on tasks with a retry policy.
            retry_index=attempt if self.task.get("retryPolicy") else None,
            active_deadline_seconds=active_deadline_seconds,
            extra_labels={TASK_LABEL: dns_label(self.name)},
        )


def descend(
    ir: PipelineIR,
    scope: Scope,
    path: list[str | int],
    run: RunInfo,
    produced: dict[str, TaskOutputs] | None = None,
) -> tuple[str, dict[str, Any], Scope, Scope]:
    """Follow task keys from the root DAG; an int after a ParallelFor task is its loop item.

    Returns (task key, task spec, its inputs, its parent DAG's inputs), as the driver would
    resolve them. Tasks' outputs are not known statically: ``produced`` gives those a path
    needs (by task key); bindings to other tasks' outputs are left out.
    """
    produced = produced or {}
    component = ir.root
    parent = scope
    steps = list(path)
    while True:
        name = steps.pop(0)
        task = component["dag"]["tasks"][name]
        bindings = _known_bindings(task.get("inputs", {}), produced)
        inputs = resolve_task_inputs({**task, "inputs": bindings}, parent, produced, run)
        child = ir.component(task["componentRef"]["name"])
        if "parameterIterator" in task:
            item = steps.pop(0)
            inputs.parameters[task["parameterIterator"]["itemInput"]] = item
        if not steps:
            return str(name), task, inputs, parent
        component, parent = child, inputs


def _known_bindings(bindings: dict[str, Any], produced: dict[str, TaskOutputs]) -> dict[str, Any]:
    def known(spec: dict[str, Any]) -> bool:
        ref = spec.get("taskOutputParameter") or spec.get("taskOutputArtifact")
        return ref is None or ref["producerTask"] in produced

    return {kind: {k: v for k, v in specs.items() if known(v)} for kind, specs in bindings.items()}

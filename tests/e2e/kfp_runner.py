"""Run a compiled KFP v2 pipeline on a real Kubernetes cluster, as KFP's backend would.

KFP's backend (API server, Argo Workflows, the v2 driver and launcher, MinIO, MLMD) cannot
be installed on the test machines, so this runner plays the driver and the launcher for the
features ``fl_pipeline.yaml`` uses, and Argo's scheduling and retry decisions, and runs
every executor as a real Pod of the project's image:

* the DAGs: ``dependentTasks``; Argo's fail-fast (after a failure no new task starts in
  that DAG, running ones finish); ``triggerPolicy.strategy: ALL_UPSTREAM_TASKS_COMPLETED``
  (the ``dsl.ExitHandler``'s exit task: it runs after the group whatever happened);
  ``triggerPolicy.condition`` (``dsl.If``/``dsl.Else`` on parameters); ``parameterIterator``
  (``dsl.ParallelFor`` over a task's real output parameter, every iteration at once unless
  ``iteratorPolicy.parallelismLimit``); the importer (in-process: its output is the
  artifact with the given URI, which the launcher would download from the store); DAG
  outputs (``dag.outputs`` selectors, ``dsl.OneOf`` taking the branch that ran) and the
  defaults of a graph component's inputs its caller leaves out;
* each task's ExecutorInput and command/args (``kfp_inputs``): pipeline parameters with
  their defaults, constants with numbers as protojson writes them (``8080.0`` -> ``8080``),
  ``dsl.PIPELINE_JOB_ID_PLACEHOLDER`` as the run UUID, the loop item, output artifact URIs
  ``minio://mlpipeline/v2/artifacts/<pipeline>/<run>/<task>/<uuid>/<name>`` and the executor
  output file under that task root, defaults added and placeholders substituted as the
  launcher does; output parameters read from the executor output file after the pod ends,
  or, for ``OutputPath`` parameters, from their files (in the store, not the pod's /tmp);
* each Pod (``kfp_pods``): labels (``pipeline/runid``, the task's pod labels), env
  (``KFP_POD_NAME``/``KFP_POD_UID``, field paths, secrets), volumes (PVCs, secrets,
  parameter-valued names), the IR's resources unchanged, the service account given;
* retries (``kfp_retry``): the IR's retry policy merged with the KFP 2.17 manifests' Argo
  ``templateDefaults.retryStrategy {limit: 2, retryPolicy: OnError}``. A pod that is deleted
  (eviction through the API, node drain or loss) or whose container never started is
  "Error" and retried; a non-zero exit is "Failed" and is not; backoff and
  ``backoffMaxDuration`` as Argo counts them;
* caching off (nothing is ever reused), a run-level timeout, and a ``RunResult`` with, per
  task, its attempts (pod names, phases, exit codes, logs) and its output folder.

Not covered (and not needed by this pipeline, or outside what a test here can run):
Argo itself (workflow CRDs, driver/launcher pods, the ``kfp-launcher`` init container,
exit-hook mechanics, pod GC), the KFP API server, UI and MLMD (no lineage, no run records),
MinIO uploads and downloads (a hostPath mounted at ``/minio`` in every pod stands in for the
store, so artifacts are files on the node), caching,
``taskFinalStatus``, artifact iterators, ``dsl.Collected``, ``IfPresent``/``Concat``
argument clauses, kfp-kubernetes features other than pod
labels/annotations, field-path env, secrets, PVC mounts, pull policy and ``set_timeout``
(an unsupported feature raises ``UnsupportedFeature`` instead of being ignored), Argo's
``failedPodRestart`` and ``OnTransientError``, run termination from the UI and "Retry run",
and kubelet-initiated evictions (on Kubernetes >= 1.27 a deleted pod may reach a terminal
phase before it disappears, which Argo can record as "Failed"; here deletion is "Error").
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tests.e2e.kfp_inputs import (
    RunInfo,
    Scope,
    TaskOutputs,
    UnsupportedFeature,
    dag_outputs,
    evaluate_condition,
    executor_output_artifacts,
    executor_output_parameters,
    importer_output,
    local_path_for_uri,
    pipeline_arguments,
    resolve_task_inputs,
)
from tests.e2e.kfp_ir import PipelineIR
from tests.e2e.kfp_plan import ContainerPlan
from tests.e2e.kfp_pods import MAIN_CONTAINER, RUN_ID_LABEL, STORE_MOUNT, PodPlacement
from tests.e2e.kfp_retry import ERROR, FAILED, SUCCEEDED, Attempt, decide

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api

SKIPPED = "Skipped"  # a condition was false
OMITTED = "Omitted"  # never started: an upstream failed (fail-fast) or the run was aborted
ALL_UPSTREAM_TASKS_COMPLETED = "ALL_UPSTREAM_TASKS_COMPLETED"

T = TypeVar("T")


@dataclass(frozen=True)
class RunnerLimits:
    """Every wait the runner does, bounded. Generous: the machines are shared."""

    run_timeout: float = 900.0
    poll_interval: float = 0.5
    pending_timeout: float = 300.0  # a pod not running by then fails (e.g. unschedulable)
    delete_timeout: float = 120.0
    log_attempts: int = 3


@dataclass
class PodAttempt:
    """One pod of a task: how it ended and what it printed."""

    name: str
    phase: str = ""
    exit_code: int | None = None
    reason: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    log: str = ""
    # The main container's own start and end (kubelet's clock), when it terminated.
    container_seconds: float | None = None


@dataclass
class TaskRun:
    """One executed (or skipped, or omitted) task of the run."""

    path: str
    task: str
    display_name: str
    kind: str
    phase: str = ""
    message: str = ""
    iteration: int | None = None
    attempts: list[PodAttempt] = field(default_factory=list)
    executor_input: dict[str, Any] | None = None
    outputs: TaskOutputs = field(default_factory=TaskOutputs)
    output_dir: Path | None = None

    @property
    def pod_names(self) -> list[str]:
        """Names of this task's pods, first attempt first."""
        return [a.name for a in self.attempts]

    @property
    def pod_phases(self) -> list[str]:
        """Argo phase of each attempt (Succeeded, Failed, Error)."""
        return [a.phase for a in self.attempts]

    @property
    def exit_codes(self) -> list[int | None]:
        """Main container exit code of each attempt (None: it never ran or was deleted)."""
        return [a.exit_code for a in self.attempts]

    @property
    def logs(self) -> str:
        """Every attempt's log, separated by a header line."""
        return "\n".join(f"===== {a.name} ({a.phase})\n{a.log}" for a in self.attempts)


@dataclass
class RunResult:
    """The outcome of one run: overall phase and every task."""

    run_id: str
    phase: str = ""
    message: str = ""
    timed_out: bool = False
    started_at: float = 0.0
    finished_at: float = 0.0
    tasks: list[TaskRun] = field(default_factory=list)
    store: Path | None = None

    @property
    def duration(self) -> float:
        """Seconds from start to the end of the last task."""
        return self.finished_at - self.started_at

    def executed(self, display_name: str) -> list[TaskRun]:
        """Container tasks with this display name that ran (not skipped or omitted)."""
        return [
            t
            for t in self.tasks
            if t.display_name == display_name and t.kind == "container" and t.attempts
        ]

    def one(self, display_name: str) -> TaskRun:
        """The single executed container task with this display name."""
        found = self.executed(display_name)
        if len(found) != 1:
            raise LookupError(f"{len(found)} executed tasks named {display_name!r}: {self}")
        return found[0]

    def artifact_path(self, task: TaskRun, name: str) -> Path:
        """Host path of an output artifact of ``task`` (a file or a folder)."""
        uri = task.outputs.artifacts[name]["uri"]
        return host_path(self.store, local_path_for_uri(uri))

    def describe(self) -> str:
        """A readable summary for assertion messages: every task, its pods and their logs."""
        lines = [f"run {self.run_id}: {self.phase} {self.message}".rstrip()]
        for t in self.tasks:
            lines.append(f"  {t.path} [{t.display_name}] {t.phase} {t.message}".rstrip())
            for a in t.attempts:
                lines.append(f"    pod {a.name}: {a.phase} exit={a.exit_code} {a.reason}")
        for t in self.tasks:
            if t.attempts:
                lines.append(t.logs[-4000:])
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def host_path(store: Path | None, container_path: str) -> Path:
    """Where a ``/minio/...`` path of a pod is on the node: under the store's hostPath."""
    if store is None or not container_path.startswith(STORE_MOUNT + "/"):
        raise ValueError(f"{container_path!r} is not in the artifact store")
    return store / container_path[len(STORE_MOUNT) + 1 :]


class _Run:
    """State shared by the threads of one run."""

    def __init__(self, info: RunInfo, limits: RunnerLimits) -> None:
        self.info = info
        self.limits = limits
        self.abort = threading.Event()
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.result = RunResult(run_id=info.run_id, started_at=time.time())
        self.live_pods: dict[str, str] = {}  # pod name -> task display name

    def add(self, task: TaskRun) -> TaskRun:
        with self.lock:
            self.result.tasks.append(task)
        return task


class RunHandle:
    """A run in progress: wait for it, look at its pods, or abort it."""

    def __init__(self, run: _Run, thread: threading.Thread) -> None:
        self._run = run
        self._thread = thread
        self.run_id = run.info.run_id

    def wait(self, timeout: float | None = None) -> RunResult:
        """The result once the run ended (the runner's own timeout bounds it too)."""
        limit = self._run.limits.run_timeout + self._run.limits.delete_timeout + 60.0
        if not self._run.done.wait(limit if timeout is None else timeout):
            raise TimeoutError(f"run {self.run_id} still going: {self._run.result}")
        self._thread.join()
        return self._run.result

    def live_pods(self, display_name: str | None = None) -> list[str]:
        """Names of pods created and not yet ended, optionally of one task."""
        with self._run.lock:
            return [n for n, d in self._run.live_pods.items() if display_name in (None, d)]

    def abort(self) -> None:
        """Stop the run: delete its pods, start nothing more."""
        self._run.abort.set()


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5
) -> T:
    """Poll ``probe`` until it returns something other than None/False; else TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)  # a poll interval, not a fixed wait for an outcome


class KfpRunner:
    """Execute a compiled pipeline's runs on a cluster (see the module docstring)."""

    def __init__(
        self,
        ir: PipelineIR,
        core: CoreV1Api,
        placement: PodPlacement,
        *,
        limits: RunnerLimits | None = None,
        pipeline_root: str = "minio://mlpipeline/v2/artifacts",
        template_defaults: dict[str, Any] | None = None,
    ) -> None:
        self.ir = ir
        self.core = core
        self.placement = placement
        self.limits = limits or RunnerLimits()
        self.pipeline_root = pipeline_root
        self.template_defaults = template_defaults
        self.store = Path(placement.store_host_path)

    # --- runs ------------------------------------------------------------------------

    def start(
        self, arguments: dict[str, Any], *, run_id: str | None = None, run_name: str = ""
    ) -> RunHandle:
        """Start a run in the background; ``run_id`` defaults to a fresh UUID."""
        run_id = run_id or str(uuid.uuid4())
        info = RunInfo(
            run_id=run_id,
            run_name=run_name or f"{self.ir.name}-{run_id[:8]}",
            pipeline_name=self.ir.name,
            pipeline_root=self.pipeline_root,
        )
        run = _Run(info, self.limits)
        run.result.store = self.store
        scope = pipeline_arguments(self.ir.root, arguments)  # bad arguments raise here
        thread = threading.Thread(target=self._main, args=(run, scope), daemon=True)
        thread.start()
        return RunHandle(run, thread)

    def run(self, arguments: dict[str, Any], **kwargs: Any) -> RunResult:
        """Start a run and wait for its result."""
        return self.start(arguments, **kwargs).wait()

    def _main(self, run: _Run, scope: Scope) -> None:
        watchdog = threading.Thread(target=self._watchdog, args=(run,), daemon=True)
        watchdog.start()
        try:
            phase, message, _ = self._dag(run, self.ir.root, scope, "")
            run.result.phase, run.result.message = phase, message
        except Exception as exc:  # the runner itself broke: say so in the result
            run.result.phase, run.result.message = ERROR, f"runner error: {exc!r}"
            run.abort.set()
        finally:
            if run.abort.is_set():
                self._delete_run_pods(run)
            if run.result.timed_out:
                run.result.phase = FAILED
                run.result.message = f"run timeout ({run.limits.run_timeout:.0f} s) exceeded"
            run.result.finished_at = time.time()
            run.done.set()

    def _watchdog(self, run: _Run) -> None:
        if not run.done.wait(run.limits.run_timeout):
            run.result.timed_out = True
            run.abort.set()

    # --- DAGs --------------------------------------------------------------------------

    def _dag(
        self,
        run: _Run,
        component: dict[str, Any],
        scope: Scope,
        path: str,
        iteration: int | None = None,
    ) -> tuple[str, str, TaskOutputs]:
        """Run a DAG's tasks as their dependencies allow; return (phase, message, outputs).

        ``iteration`` is the ParallelFor index when this DAG is a loop body. The outputs
        are the DAG's own (``dag.outputs``: a graph component's, a condition's).
        """
        tasks: dict[str, dict[str, Any]] = component["dag"]["tasks"]
        phases: dict[str, str] = {}
        outputs: dict[str, TaskOutputs] = {}
        finished: queue.Queue[tuple[str, str, TaskOutputs]] = queue.Queue()
        started: set[str] = set()
        failed: list[str] = []
        while len(phases) < len(tasks):
            progressed = True
            while progressed:
                progressed = False
                for name, task in tasks.items():
                    deps = task.get("dependentTasks", [])
                    if name in started or not all(d in phases for d in deps):
                        continue
                    started.add(name)
                    progressed = True
                    exit_task = (
                        task.get("triggerPolicy", {}).get("strategy")
                        == ALL_UPSTREAM_TASKS_COMPLETED
                    )
                    upstream_ok = all(phases[d] in (SUCCEEDED, SKIPPED) for d in deps)
                    if run.abort.is_set() or (not exit_task and (failed or not upstream_ok)):
                        phases[name] = OMITTED
                        run.add(self._task_record(f"{path}/{name}", name, task, OMITTED))
                        continue
                    snapshot = dict(outputs)
                    threading.Thread(
                        target=self._task_thread,
                        args=(run, name, task, scope, snapshot, f"{path}/{name}", iteration),
                        kwargs={"finished": finished},
                        daemon=True,
                    ).start()
            if len(phases) == len(tasks):
                break
            name, phase, task_outputs = finished.get()  # every task thread reports, always
            phases[name], outputs[name] = phase, task_outputs
            if phase in (FAILED, ERROR):
                failed.append(name)
        if failed:
            return FAILED, f"failed: {', '.join(sorted(failed))}", TaskOutputs()
        if any(p == OMITTED for p in phases.values()):
            return FAILED, "aborted", TaskOutputs()
        return SUCCEEDED, "", dag_outputs(component, outputs)

    def _task_record(
        self, path: str, name: str, task: dict[str, Any], phase: str, kind: str = "task"
    ) -> TaskRun:
        display = task.get("taskInfo", {}).get("name", name)
        return TaskRun(path=path, task=name, display_name=display, kind=kind, phase=phase)

    def _record_error(
        self, run: _Run, path: str, name: str, task: dict[str, Any], exc: Exception
    ) -> None:
        record = run.add(self._task_record(path, name, task, ERROR))
        record.message = f"runner error: {exc!r}"
        if isinstance(exc, UnsupportedFeature):
            record.message = f"unsupported by the test runner: {exc}"

    def _task_thread(
        self,
        run: _Run,
        name: str,
        task: dict[str, Any],
        parent: Scope,
        siblings: dict[str, TaskOutputs],
        path: str,
        iteration: int | None,
        *,
        finished: queue.Queue[tuple[str, str, TaskOutputs]],
    ) -> None:
        phase, outputs = ERROR, TaskOutputs()
        try:
            phase, outputs = self._task(run, name, task, parent, siblings, path, iteration)
        except Exception as exc:
            self._record_error(run, path, name, task, exc)
        finally:
            finished.put((name, phase, outputs))

    def _task(
        self,
        run: _Run,
        name: str,
        task: dict[str, Any],
        parent: Scope,
        siblings: dict[str, TaskOutputs],
        path: str,
        iteration: int | None = None,
    ) -> tuple[str, TaskOutputs]:
        component = self.ir.component(task["componentRef"]["name"])
        inputs = resolve_task_inputs(task, parent, siblings, run.info)
        condition = task.get("triggerPolicy", {}).get("condition")
        if condition and not evaluate_condition(condition, inputs.parameters):
            run.add(self._task_record(path, name, task, SKIPPED, "condition"))
            return SKIPPED, TaskOutputs()
        if "parameterIterator" in task:
            return self._loop(run, name, task, component, inputs, path), TaskOutputs()
        if "artifactIterator" in task:
            raise UnsupportedFeature("ParallelFor over artifacts")
        if "dag" in component:
            # A graph component's inputs the caller left out take their defaults
            # (kubeflow/pipelines#11980: optional inputs of nested pipelines).
            for key, definition in (
                component.get("inputDefinitions", {}).get("parameters", {}).items()
            ):
                if key not in inputs.parameters and "defaultValue" in definition:
                    inputs.parameters[key] = definition["defaultValue"]
            phase, message, outputs = self._dag(run, component, inputs, path, iteration)
            record = run.add(self._task_record(path, name, task, phase, "dag"))
            record.message = message
            record.outputs = outputs
            return phase, outputs
        executor = self.ir.executor(component["executorLabel"])
        if "importer" in executor:
            return self._importer(run, name, task, executor["importer"], inputs, path)
        return self._container(run, name, task, inputs, parent, path, iteration)

    def _loop(
        self,
        run: _Run,
        name: str,
        task: dict[str, Any],
        component: dict[str, Any],
        inputs: Scope,
        path: str,
    ) -> str:
        iterator = task["parameterIterator"]
        source = iterator["items"]
        if "inputParameter" in source:
            items = inputs.parameters[source["inputParameter"]]
        else:
            items = json.loads(source["raw"])
        if isinstance(items, str):
            items = json.loads(items)
        limit = int(task.get("iteratorPolicy", {}).get("parallelismLimit", 0) or 0)
        gate = threading.Semaphore(limit) if limit > 0 else contextlib.nullcontext()
        results: list[str] = [""] * len(items)

        def iterate(index: int, item: Any) -> None:
            with gate:
                # The iteration driver: the loop's inputs, the items swapped for the item.
                parameters = dict(inputs.parameters)
                parameters.pop(source.get("inputParameter", ""), None)
                parameters[iterator["itemInput"]] = item
                scope = Scope(parameters=parameters, artifacts=dict(inputs.artifacts))
                try:
                    results[index], *_ = self._dag(run, component, scope, f"{path}[{index}]", index)
                except Exception as exc:
                    self._record_error(run, f"{path}[{index}]", name, task, exc)
                    results[index] = ERROR

        threads = [
            threading.Thread(target=iterate, args=(i, item), daemon=True)
            for i, item in enumerate(items)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()  # each iteration is bounded by the run's timeout
        phase = FAILED if any(r != SUCCEEDED for r in results) else SUCCEEDED
        record = run.add(self._task_record(path, name, task, phase, "loop"))
        record.message = f"{len(items)} iterations"
        return phase

    # --- executors ---------------------------------------------------------------------

    def _importer(
        self,
        run: _Run,
        name: str,
        task: dict[str, Any],
        importer: dict[str, Any],
        inputs: Scope,
        path: str,
    ) -> tuple[str, TaskOutputs]:
        artifact = importer_output(importer, inputs)
        outputs = TaskOutputs(artifacts={"artifact": artifact})
        record = run.add(self._task_record(path, name, task, SUCCEEDED, "importer"))
        record.outputs = outputs
        return SUCCEEDED, outputs

    def _container(
        self,
        run: _Run,
        name: str,
        task: dict[str, Any],
        inputs: Scope,
        parent: Scope,
        path: str,
        iteration: int | None,
    ) -> tuple[str, TaskOutputs]:
        plan = ContainerPlan.make(
            self.ir,
            name,
            task,
            inputs,
            parent,
            run.info,
            iteration=iteration,
            template_defaults=self.template_defaults,
        )
        record = run.add(self._task_record(path, name, task, "", "container"))
        record.iteration = iteration
        record.executor_input = plan.executor_input
        record.output_dir = host_path(self.store, plan.outputs["outputFile"]).parent
        self._prepare_output_folders(plan.executor_input)
        deadline: float | None = None
        while True:
            remaining = None if deadline is None else int(deadline - time.time())
            manifest = plan.pod(self.placement, len(record.attempts), remaining)
            attempt = self._run_pod(run, manifest, record.display_name)
            record.attempts.append(attempt)
            if attempt.phase == SUCCEEDED or run.abort.is_set():
                break
            history = [Attempt(a.phase, a.started_at, a.finished_at) for a in record.attempts]
            decision = decide(plan.retry, history, time.time())
            record.message = decision.reason
            if not decision.retry:
                break
            if run.abort.wait(max(0.0, (decision.start_at or 0.0) - time.time())):
                break  # the backoff wait, cut short by an abort
            deadline = decision.deadline
        record.phase = record.attempts[-1].phase if record.attempts else ERROR
        executor_output = self._executor_output(plan.outputs) if record.phase == SUCCEEDED else {}
        record.outputs = TaskOutputs(
            parameters=executor_output_parameters(
                executor_output, plan.component, self._parameter_files(plan.outputs)
            )
            if record.phase == SUCCEEDED
            else {},
            artifacts=executor_output_artifacts(executor_output, plan.outputs),
        )
        return record.phase, record.outputs

    def _prepare_output_folders(self, executor_input: dict[str, Any]) -> None:
        # The launcher's prepareOutputFolders, on the node side of the store's hostPath;
        # world-writable because the image runs as a non-root user.
        outputs = executor_input["outputs"]
        folders = {host_path(self.store, outputs["outputFile"]).parent}
        for artifact_list in outputs.get("artifacts", {}).values():
            local = local_path_for_uri(artifact_list["artifacts"][0]["uri"])
            folders.add(host_path(self.store, local).parent)
        for parameter in outputs.get("parameters", {}).values():
            folders.add(host_path(self.store, parameter["outputFile"]).parent)
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            for part in [folder, *folder.parents]:
                if part == self.store or self.store not in part.parents:
                    break
                os.chmod(part, 0o777)

    def _parameter_files(self, outputs: dict[str, Any]) -> dict[str, str]:
        # What the task wrote to its OutputPath parameters' files (missing: not written).
        found = {}
        for name, parameter in outputs.get("parameters", {}).items():
            file = host_path(self.store, parameter["outputFile"])
            if file.is_file():
                found[name] = file.read_text()
        return found

    def _executor_output(self, outputs: dict[str, Any]) -> dict[str, Any]:
        file = host_path(self.store, outputs["outputFile"])
        if not file.is_file():
            return {}  # the launcher, too, treats a missing file as an empty ExecutorOutput
        return json.loads(file.read_text())

    # --- pods --------------------------------------------------------------------------

    def _run_pod(self, run: _Run, manifest: dict[str, Any], display_name: str) -> PodAttempt:
        """Create the pod and follow it to its end; classify that end as Argo does."""
        from kubernetes.client.rest import ApiException

        name = manifest["metadata"]["name"]
        namespace = self.placement.namespace
        attempt = PodAttempt(name=name, started_at=time.time())
        self.core.create_namespaced_pod(namespace, manifest)
        with run.lock:
            run.live_pods[name] = display_name
        try:
            while True:
                if run.abort.is_set():
                    self._delete_pod(name)
                    attempt.phase, attempt.reason = ERROR, "run aborted"
                    return attempt
                try:
                    pod = self.core.read_namespaced_pod(name, namespace)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    attempt.phase = ERROR
                    attempt.reason = attempt.reason or "pod deleted"
                    return attempt
                if pod.metadata.deletion_timestamp is not None:
                    if not attempt.reason:  # first sight of the deletion: keep what it said
                        attempt.reason = "pod deleted"
                        attempt.log = self._log(name)
                elif pod.status.phase in (SUCCEEDED, FAILED):
                    self._classify(pod, attempt)
                    attempt.log = self._log(name)
                    return attempt
                elif pod.status.phase == "Pending" and (
                    time.time() - attempt.started_at > run.limits.pending_timeout
                ):
                    attempt.log = self._describe_pending(pod)
                    self._delete_pod(name)
                    attempt.phase = ERROR
                    attempt.reason = f"not running after {run.limits.pending_timeout:.0f} s"
                    return attempt
                run.abort.wait(run.limits.poll_interval)
        finally:
            attempt.finished_at = time.time()
            with run.lock:
                run.live_pods.pop(name, None)

    @staticmethod
    def _classify(pod: Any, attempt: PodAttempt) -> None:
        # Argo's podFailed assessment: main container non-zero -> Failed; a container that
        # never started -> Error.
        statuses = {s.name: s for s in pod.status.container_statuses or []}
        main = statuses.get(MAIN_CONTAINER)
        terminated = main.state.terminated if main and main.state else None
        if terminated is not None:
            attempt.exit_code = terminated.exit_code
            if terminated.started_at and terminated.finished_at:
                runtime = terminated.finished_at - terminated.started_at
                attempt.container_seconds = runtime.total_seconds()
        if pod.status.phase == SUCCEEDED:
            attempt.phase = SUCCEEDED
            return
        if terminated is None:
            waiting = main.state.waiting if main and main.state else None
            attempt.phase = ERROR
            attempt.reason = "container never started" + (
                f": {waiting.reason} {waiting.message or ''}".rstrip() if waiting else ""
            )
            return
        attempt.phase = FAILED
        attempt.reason = f"{terminated.reason} (exit code {terminated.exit_code})"
        if pod.status.reason:
            attempt.reason += f"; pod {pod.status.reason}: {pod.status.message or ''}".rstrip()

    def _log(self, name: str) -> str:
        from kubernetes.client.rest import ApiException

        for _ in range(self.limits.log_attempts):
            try:
                return self.core.read_namespaced_pod_log(
                    name, self.placement.namespace, container=MAIN_CONTAINER
                )
            except ApiException as exc:
                if exc.status == 404:
                    return ""
                error = exc
            except Exception as exc:  # e.g. the connection dropped: try again
                error = exc
        return f"(log unavailable: {error!r})"

    def _describe_pending(self, pod: Any) -> str:
        conditions = [
            f"{c.type}={c.status} {c.reason or ''} {c.message or ''}".strip()
            for c in pod.status.conditions or []
        ]
        events = self.core.list_namespaced_event(
            self.placement.namespace, field_selector=f"involvedObject.name={pod.metadata.name}"
        )
        messages = [f"{e.reason}: {e.message}" for e in events.items]
        return "\n".join(["pod never ran:", *conditions, *messages])

    def _delete_pod(self, name: str) -> None:
        from kubernetes.client.rest import ApiException

        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(name, self.placement.namespace, grace_period_seconds=0)

    def _delete_run_pods(self, run: _Run) -> None:
        delete_run_pods(self.core, self.placement.namespace, run.info.run_id, self.limits)


def delete_run_pods(core: CoreV1Api, namespace: str, run_id: str, limits: RunnerLimits) -> None:
    """Delete every pod of a run and wait until they are gone (test clean-up)."""
    selector = f"{RUN_ID_LABEL}={run_id}"
    core.delete_collection_namespaced_pod(
        namespace, label_selector=selector, grace_period_seconds=0
    )
    wait_until(
        lambda: not core.list_namespaced_pod(namespace, label_selector=selector).items,
        limits.delete_timeout,
        f"the pods of run {run_id} to go",
        limits.poll_interval,
    )

"""Run one component as KFP's launcher does: the IR's command and args, an ExecutorInput.

The launcher writes the task's inputs and output locations as JSON (protojson, so a
number may be ``8080`` or ``8080.0``), substitutes it for the ``{{$}}`` placeholder in
the executor's args, and runs the container's command: ``python3 -m
kfp.dsl.executor_main`` over the component's own source. Here the same command runs as
a child process with this virtualenv's ``python3`` first on ``PATH``, with the values a
test chooses, including the float forms the backend may deliver for integers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from kfp.dsl.python_component import PythonComponent

EXECUTOR_INPUT_PLACEHOLDER = "{{$}}"


@dataclass
class ExecutorRun:
    """A finished (or started) executor: its process and where its outputs go."""

    proc: subprocess.Popen
    log_path: Path
    artifacts: dict[str, Path]
    executor_output: Path

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise AssertionError(
                f"executor still running after {timeout:g}s:\n{self.log()}"
            ) from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def output_parameter(self, name: str = "Output") -> Any:
        """A returned value, from the ExecutorOutput file the launcher would read."""
        return json.loads(self.executor_output.read_text())["parameterValues"][name]


def _single(mapping: Mapping[str, Any]) -> Any:
    (value,) = mapping.values()
    return value


def start_executor(
    component: PythonComponent,
    parameters: Mapping[str, Any],
    folder: Path,
    *,
    input_artifacts: Mapping[str, Path] | None = None,
    env: Mapping[str, str] | None = None,
) -> ExecutorRun:
    """Start ``component``'s executor with ``parameters`` (sent as given) in ``folder``."""
    spec = json_format.MessageToDict(component.pipeline_spec)
    container = _single(spec["deploymentSpec"]["executors"])["container"]
    outputs = _single(spec["components"]).get("outputDefinitions", {})
    inputs = _single(spec["components"]).get("inputDefinitions", {})
    folder.mkdir(parents=True, exist_ok=True)

    artifacts = {name: folder / "outputs" / name for name in outputs.get("artifacts", {})}
    executor_output = folder / "outputs" / "executor_output.json"
    executor_input: dict[str, Any] = {
        "inputs": {
            "parameterValues": dict(parameters),
            "artifacts": {
                name: {
                    "artifacts": [
                        {
                            "name": name,
                            "type": inputs["artifacts"][name]["artifactType"],
                            "uri": str(path),
                            "metadata": {},
                        }
                    ]
                }
                for name, path in (input_artifacts or {}).items()
            },
        },
        "outputs": {
            "artifacts": {
                name: {
                    "artifacts": [
                        {
                            "name": name,
                            "type": outputs["artifacts"][name]["artifactType"],
                            "uri": str(path),
                            "metadata": {},
                        }
                    ]
                }
                for name, path in artifacts.items()
            },
            "parameters": {
                name: {"outputFile": str(folder / "outputs" / name)}
                for name in outputs.get("parameters", {})
            },
            "outputFile": str(executor_output),
        },
    }
    arguments = [
        json.dumps(executor_input) if arg == EXECUTOR_INPUT_PLACEHOLDER else arg
        for arg in container["args"]
    ]
    child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    # The image's python3 is the one with kfp and fl-kubeflow installed: here, this venv's.
    child_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{child_env.get('PATH', '')}"
    log_path = folder / "executor.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*container["command"], *arguments],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env=child_env,
        )
    return ExecutorRun(proc, log_path, artifacts, executor_output)


def run_executor(
    component: PythonComponent,
    parameters: Mapping[str, Any],
    folder: Path,
    *,
    timeout: float,
    **kwargs: Any,
) -> ExecutorRun:
    """:func:`start_executor` and wait for it to exit (at most ``timeout`` seconds)."""
    run = start_executor(component, parameters, folder, **kwargs)
    run.wait(timeout)
    return run

"""What KFP's driver and launcher compute for one task: its inputs and its ExecutorInput.

Follows kubeflow/pipelines 2.17.0 ``backend/src/v2``: ``driver/resolve.go`` (inputs from
the parent DAG, constants, sibling task outputs), ``driver/driver.go`` ``provisionOutputs``
(output URIs ``<root>/<pipeline>/<run>/<task>/<uuid>/<name>``, the executor output file
under that task root, output parameter files: ``/tmp/kfp/outputs/<name>`` in the launcher's
container, here ``<task root>/parameters/<name>`` in the store, so the runner can read them
after the pod ended as ``collectOutputParameters`` reads them in the pod) and
``component/launcher_v2.go`` (defaults added for placeholders, ``{{$}}`` and the other
placeholders substituted in the command and args, ``minio://`` -> ``/minio/`` local paths).
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tests.e2e.kfp_ir import PIPELINE_JOB_NAME, PIPELINE_JOB_UUID, to_protojson

DEFAULT_PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"  # KFP's defaultPipelineRoot
OUTPUT_PARAMETER_DIR = "parameters"  # under the task root (KFP: /tmp/kfp/outputs)
EXECUTOR_OUTPUT_FILE = "output_metadata.json"

# component/launcher_v2.go LocalPathForURI (oci:// is not used by this pipeline).
_LOCAL_PREFIXES = {"gs://": "/gcs/", "minio://": "/minio/", "s3://": "/s3/"}


class UnsupportedFeature(NotImplementedError):
    """The IR uses something this runner does not implement (it says what)."""


def local_path_for_uri(uri: str) -> str:
    """The path inside the container where the launcher puts an artifact's files.

    A plain absolute path (a local pipeline root, used when running an executor outside
    a pod) maps to itself, as kfp's own ``Artifact.path`` does.
    """
    for prefix, mount in _LOCAL_PREFIXES.items():
        if uri.startswith(prefix):
            return mount + uri[len(prefix) :]
    if uri.startswith("/"):
        return uri
    raise UnsupportedFeature(f"no local path for artifact URI {uri!r}")


@dataclass
class Scope:
    """Resolved inputs of one component instance: parameter values and artifacts."""

    parameters: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class TaskOutputs:
    """What a finished task hands to the tasks that depend on it."""

    parameters: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunInfo:
    """The run-wide values the driver knows: run UUID, run name, pipeline name and root."""

    run_id: str
    run_name: str
    pipeline_name: str
    pipeline_root: str = DEFAULT_PIPELINE_ROOT


def _constant(value: Any, run: RunInfo) -> Any:
    # Substituted only when the constant is exactly the placeholder (driver/resolve.go).
    if value == PIPELINE_JOB_UUID:
        return run.run_id
    if value == PIPELINE_JOB_NAME:
        return run.run_name
    return value


def resolve_parameter(
    spec: dict[str, Any],
    parent: Scope,
    siblings: dict[str, TaskOutputs],
    run: RunInfo,
) -> tuple[bool, Any]:
    """One TaskInputsSpec.InputParameterSpec: (is it set, value)."""
    if "componentInputParameter" in spec:
        name = spec["componentInputParameter"]
        return (name in parent.parameters, parent.parameters.get(name))
    if "runtimeValue" in spec:
        return True, _constant(spec["runtimeValue"]["constant"], run)
    if "taskOutputParameter" in spec:
        ref = spec["taskOutputParameter"]
        outputs = siblings[ref["producerTask"]].parameters
        return True, outputs[ref["outputParameterKey"]]
    raise UnsupportedFeature(f"input parameter binding {sorted(spec)} (e.g. taskFinalStatus)")


def resolve_artifact(
    spec: dict[str, Any], parent: Scope, siblings: dict[str, TaskOutputs]
) -> dict[str, Any] | None:
    """One TaskInputsSpec.InputArtifactSpec, or None when its source has none."""
    if "componentInputArtifact" in spec:
        return parent.artifacts.get(spec["componentInputArtifact"])
    if "taskOutputArtifact" in spec:
        ref = spec["taskOutputArtifact"]
        return siblings[ref["producerTask"]].artifacts.get(ref["outputArtifactKey"])
    raise UnsupportedFeature(f"input artifact binding {sorted(spec)}")


def resolve_task_inputs(
    task: dict[str, Any], parent: Scope, siblings: dict[str, TaskOutputs], run: RunInfo
) -> Scope:
    """A task's inputs from its ``inputs`` bindings, as the driver resolves them."""
    scope = Scope()
    for name, spec in task.get("inputs", {}).get("parameters", {}).items():
        present, value = resolve_parameter(spec, parent, siblings, run)
        if present:
            scope.parameters[name] = value
    for name, spec in task.get("inputs", {}).get("artifacts", {}).items():
        artifact = resolve_artifact(spec, parent, siblings)
        if artifact is not None:
            scope.artifacts[name] = artifact
    return scope


def pipeline_arguments(root: dict[str, Any], arguments: dict[str, Any]) -> Scope:
    """The root DAG's inputs: the run's arguments over the pipeline parameters' defaults."""
    definitions = root.get("inputDefinitions", {}).get("parameters", {})
    unknown = sorted(set(arguments) - set(definitions))
    if unknown:
        raise ValueError(f"unknown pipeline parameters {unknown}; known: {sorted(definitions)}")
    values: dict[str, Any] = {}
    for name, definition in definitions.items():
        if name in arguments:
            values[name] = arguments[name]
        elif "defaultValue" in definition:
            values[name] = definition["defaultValue"]
        elif not definition.get("isOptional"):
            raise ValueError(f"pipeline parameter {name!r} has no default and no argument")
    return Scope(parameters=values)


# --- dsl.If / dsl.Else: the CEL subset the KFP SDK writes for parameter comparisons --------

_PARAM_REF = re.compile(r"inputs\.parameter_values\[\s*'([^']+)'\s*\]")
_ALLOWED_NODES = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.Compare,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.Constant,
    ast.Subscript,
    ast.Name,
    ast.Load,
    ast.Call,
)
_CASTS = {"int": int, "double": float, "string": str}


def evaluate_condition(expression: str, parameters: dict[str, Any]) -> bool:
    """Evaluate a ``triggerPolicy.condition`` on the task's resolved input parameters.

    Supports what ``dsl.If``/``dsl.Elif``/``dsl.Else`` compile to: comparisons of
    ``inputs.parameter_values['x']`` (optionally inside ``int()``/``double()``/``string()``)
    with literals, ``!``, ``&&`` and ``||``. Anything else raises UnsupportedFeature.
    """
    text = _PARAM_REF.sub(lambda m: f"P[{m.group(1)!r}]", expression)
    text = text.replace("&&", " and ").replace("||", " or ")
    text = re.sub(r"!(?!=)", " not ", text)
    text = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", text))
    tree = ast.parse(text.strip(), mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise UnsupportedFeature(f"condition {expression!r}: {type(node).__name__}")
        if isinstance(node, ast.Name) and node.id not in {"P", *_CASTS}:
            raise UnsupportedFeature(f"condition {expression!r}: name {node.id}")
    missing = [m for m in _PARAM_REF.findall(expression) if m not in parameters]
    if missing:
        raise ValueError(f"condition {expression!r}: parameters {missing} are not inputs")
    return bool(eval(compile(tree, "<condition>", "eval"), {"P": parameters, **_CASTS}))


# --- the ExecutorInput and the launcher's placeholders ------------------------------------


def provision_outputs(
    component: dict[str, Any], task_name: str, run: RunInfo, salt: str | None = None
) -> dict[str, Any]:
    """``ExecutorInput.outputs`` as the driver writes it for one execution."""
    task_root = f"{run.pipeline_root.rstrip('/')}/{run.pipeline_name}/{run.run_id}/"
    task_root += f"{task_name}/{salt or uuid.uuid4()}"
    definitions = component.get("outputDefinitions", {})
    outputs: dict[str, Any] = {}
    artifacts = {
        name: {
            "artifacts": [
                {
                    "name": name,
                    "uri": f"{task_root}/{name}",
                    "type": spec["artifactType"],
                    **({"metadata": spec["metadata"]} if spec.get("metadata") else {}),
                }
            ]
        }
        for name, spec in definitions.get("artifacts", {}).items()
    }
    if artifacts:
        outputs["artifacts"] = artifacts
    task_dir = local_path_for_uri(task_root)
    parameters = {
        name: {"outputFile": f"{task_dir}/{OUTPUT_PARAMETER_DIR}/{name}"}
        for name in definitions.get("parameters", {})
    }
    if parameters:
        outputs["parameters"] = parameters
    outputs["outputFile"] = f"{local_path_for_uri(task_root)}/{EXECUTOR_OUTPUT_FILE}"
    return outputs


def build_executor_input(
    component: dict[str, Any], scope: Scope, outputs: dict[str, Any]
) -> dict[str, Any]:
    """The ExecutorInput the launcher substitutes for ``{{$}}``, numbers as protojson writes.

    Every input the task binds is passed (``resolveInputs`` does not filter by the
    component's definitions: pipeline channels used only for pod-spec fields ride along);
    a value for a STRING input that is not a string becomes its JSON text; defaults of
    inputs the task does not bind are added (``addDefaultParams``: the placeholders,
    ``{{$}}`` included, are compiled from that copy).
    """
    definitions = component.get("inputDefinitions", {}).get("parameters", {})
    values = dict(scope.parameters)
    for name, definition in definitions.items():
        if name not in values:
            if "defaultValue" in definition:
                values[name] = definition["defaultValue"]
        elif definition.get("parameterType") == "STRING" and not isinstance(values[name], str):
            values[name] = json.dumps(to_protojson(values[name]), separators=(",", ":"))
    inputs: dict[str, Any] = {}
    if values:
        inputs["parameterValues"] = to_protojson(values)
    if scope.artifacts:
        inputs["artifacts"] = {name: {"artifacts": [a]} for name, a in scope.artifacts.items()}
    return {"inputs": inputs, "outputs": outputs}


def _format_parameter(value: Any) -> str:
    # launcher_v2.go getPlaceholders: strings as is, numbers via FormatFloat('f', -1), JSON.
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return format(Decimal(repr(float(value))).normalize(), "f")
    return json.dumps(value, separators=(",", ":"))


def placeholders(executor_input: dict[str, Any]) -> dict[str, str]:
    """Every placeholder the launcher substitutes, except ``{{$}}``."""
    table: dict[str, str] = {}
    inputs, outputs = executor_input.get("inputs", {}), executor_input.get("outputs", {})
    for name, value in inputs.get("parameterValues", {}).items():
        table[f"{{{{$.inputs.parameters['{name}']}}}}"] = _format_parameter(value)
    for name, artifact_list in inputs.get("artifacts", {}).items():
        artifact = artifact_list["artifacts"][0]
        table[f"{{{{$.inputs.artifacts['{name}'].uri}}}}"] = artifact["uri"]
        table[f"{{{{$.inputs.artifacts['{name}'].path}}}}"] = local_path_for_uri(artifact["uri"])
    for name, artifact_list in outputs.get("artifacts", {}).items():
        artifact = artifact_list["artifacts"][0]
        table[f"{{{{$.outputs.artifacts['{name}'].uri}}}}"] = artifact["uri"]
        table[f"{{{{$.outputs.artifacts['{name}'].path}}}}"] = local_path_for_uri(artifact["uri"])
    for name, parameter in outputs.get("parameters", {}).items():
        table[f"{{{{$.outputs.parameters['{name}'].output_file}}}}"] = parameter["outputFile"]
    return table


def compile_command(
    executor_input: dict[str, Any], command: list[str], args: list[str]
) -> tuple[list[str], list[str]]:
    """The container's command and args with the launcher's placeholders substituted."""
    for item in (*command, *args):
        if item.lstrip().startswith(('{"IfPresent"', '{"Concat"')):
            raise UnsupportedFeature(f"driver-resolved argument clause {item!r}")
    whole = json.dumps(executor_input, separators=(",", ":"))
    table = placeholders(executor_input)

    def substitute(text: str) -> str:
        text = text.replace("{{$}}", whole)
        for key, value in table.items():
            text = text.replace(key, value)
        return text

    # As launcher_v2.go: the launcher gets the command's first word as ``cmd`` and the rest
    # as args; only ``{{$}}`` is substituted in ``cmd``, every placeholder in the args.
    if not command:
        raise UnsupportedFeature("an executor container without a command")
    return [command[0].replace("{{$}}", whole), *map(substitute, command[1:])], [
        substitute(a) for a in args
    ]


def importer_output(importer: dict[str, Any], inputs: Scope) -> dict[str, Any]:
    """The artifact an importer task outputs (key ``artifact``): the URI it was given.

    KFP's importer launcher records it in MLMD; the consumer's launcher then downloads it
    from the store (here: finds it under the store's hostPath at ``/minio``).
    """
    source = importer["artifactUri"]
    if "runtimeParameter" in source:
        uri = inputs.parameters[source["runtimeParameter"]]
    else:
        uri = source["constant"]
    return {
        "name": "artifact",
        "uri": uri,
        "type": importer["typeSchema"],
        **({"metadata": importer["metadata"]} if importer.get("metadata") else {}),
    }


def executor_output_parameters(
    executor_output: dict[str, Any],
    component: dict[str, Any],
    files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Output parameters from the executor output file, typed by the component's spec.

    Those it lacks come from ``files`` (name -> the text the task wrote to the parameter's
    ``outputFile``: an ``OutputPath`` parameter), read as the launcher's
    ``collectOutputParameters`` does: a string verbatim, numbers and booleans trimmed,
    lists and structs as JSON.
    """
    values = dict(executor_output.get("parameterValues", {}))
    expected = component.get("outputDefinitions", {}).get("parameters", {})
    for name, text in (files or {}).items():
        if name in expected and name not in values:
            values[name] = _parameter_from_file(text, expected[name].get("parameterType", ""))
    missing = sorted(set(expected) - set(values))
    if missing:
        raise ValueError(f"executor output lacks parameters {missing}: {executor_output}")
    return {name: values[name] for name in expected}


def _parameter_from_file(text: str, parameter_type: str) -> Any:
    if parameter_type == "STRING":
        return text
    if parameter_type == "NUMBER_INTEGER":
        return int(float(text.strip()))
    if parameter_type == "NUMBER_DOUBLE":
        return float(text.strip())
    if parameter_type == "BOOLEAN":
        return {"true": True, "false": False}[text.strip().lower()]
    return json.loads(text)


def executor_output_artifacts(
    executor_output: dict[str, Any], outputs: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Output artifacts: the provisioned ones, merged with what the executor reported."""
    merged: dict[str, dict[str, Any]] = {}
    reported = executor_output.get("artifacts", {})
    for name, artifact_list in outputs.get("artifacts", {}).items():
        artifact = dict(artifact_list["artifacts"][0])
        update = reported.get(name, {}).get("artifacts", [{}])[0]
        if update.get("uri"):
            artifact["uri"] = update["uri"]
        if update.get("metadata"):
            artifact["metadata"] = {**artifact.get("metadata", {}), **update["metadata"]}
        merged[name] = artifact
    return merged


def dag_outputs(component: dict[str, Any], produced: dict[str, TaskOutputs]) -> TaskOutputs:
    """A finished DAG's outputs (``dag.outputs``) from what its tasks produced.

    A selector names a task of the DAG and one of its outputs; ``dsl.OneOf`` compiles to
    several selectors, of which the one whose task ran has the value (a skipped branch
    produced nothing). As the driver: an output no selector can supply is an error.
    """
    spec = component.get("dag", {}).get("outputs", {})
    result = TaskOutputs()
    for name, output in spec.get("artifacts", {}).items():
        result.artifacts[name] = _select(
            name,
            output["artifactSelectors"],
            lambda ref: produced.get(ref["producerSubtask"], TaskOutputs()).artifacts.get(
                ref["outputArtifactKey"]
            ),
        )
    for name, output in spec.get("parameters", {}).items():
        if "valueFromParameter" in output:
            selectors = [output["valueFromParameter"]]
        else:
            selectors = output["valueFromOneof"]["parameterSelectors"]
        result.parameters[name] = _select(
            name,
            selectors,
            lambda ref: produced.get(ref["producerSubtask"], TaskOutputs()).parameters.get(
                ref["outputParameterKey"]
            ),
        )
    return result


def _select(name: str, selectors: list[dict[str, Any]], value: Any) -> Any:
    for ref in selectors:
        found = value(ref)
        if found is not None:
            return found
    raise ValueError(f"DAG output {name!r}: none of {selectors} produced a value")

"""``fl-kubeflow submit``: start a run of the compiled pipeline on Kubeflow Pipelines.

``--param`` values are checked against the package's own parameter list and types
before anything is sent, so a typo fails here, by name, instead of in a pod. kfp is
imported only when submitting (``pip install 'fl-kubeflow[kfp]'``), so the rest of
the CLI starts without it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fl_kubeflow.cli.options import HelpFormatter

DEFAULT_PACKAGE = Path("fl_pipeline.yaml")
DEFAULT_EXPERIMENT = "fl-kubeflow"
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class ParamError(ValueError):
    """A ``--param`` that the pipeline does not accept; the message names it."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "submit",
        help="submit the pipeline to a Kubeflow Pipelines endpoint",
        description=(
            "Create a run of the compiled pipeline (fl_pipeline.yaml) with kfp.Client. "
            "Inside a Kubeflow notebook, --host can be left out."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--host",
        default=None,
        help="KFP API endpoint, e.g. http://localhost:8080 after "
        "'kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80' "
        "(default: $KF_PIPELINES_ENDPOINT, or in-cluster discovery)",
    )
    parser.add_argument(
        "--experiment", default=DEFAULT_EXPERIMENT, help="experiment to file the run under"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pipeline parameter, repeatable, e.g. --param num_clients=5",
    )
    parser.add_argument(
        "--package",
        type=Path,
        default=DEFAULT_PACKAGE,
        help="compiled pipeline YAML; compiled from this checkout's pipeline/ if missing",
    )
    parser.add_argument(
        "--image",
        default=None,
        help="image to compile with when --package does not exist yet",
    )
    parser.add_argument("--run-name", default=None, help="run name shown in the UI")
    parser.add_argument(
        "--namespace", default=None, help="Kubeflow profile namespace (multi-user Kubeflow)"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for the run to finish (0: return once created)",
    )
    parser.set_defaults(run=run)


def pipeline_parameters(package: Path) -> dict[str, dict[str, Any]]:
    """``{name: {"parameterType": ..., "defaultValue": ...}}`` read from a compiled package."""
    import yaml

    try:
        documents = list(yaml.safe_load_all(package.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read pipeline package {str(package)!r}: {exc}") from None
    spec = documents[0] if documents else None
    if not isinstance(spec, dict) or "root" not in spec:
        raise ValueError(f"{str(package)!r} is not a compiled KFP pipeline (no 'root')")
    return dict(spec["root"].get("inputDefinitions", {}).get("parameters", {}))


def _convert(name: str, text: str, kind: str) -> Any:
    """``text`` as the JSON value a parameter of type ``kind`` takes; ParamError if it can't."""

    def bad(expected: str) -> ParamError:
        return ParamError(f"--param {name}={text!r}: {name} takes {expected}")

    if kind == "NUMBER_INTEGER":
        try:
            return int(text.strip())
        except ValueError:
            raise bad("an integer") from None
    if kind == "NUMBER_DOUBLE":
        try:
            value = float(text)
        except ValueError:
            raise bad("a number") from None
        if not math.isfinite(value):
            raise bad("a finite number")
        return value
    if kind == "BOOLEAN":
        lowered = text.strip().lower()
        if lowered in _TRUE | _FALSE:
            return lowered in _TRUE
        raise bad("true or false")
    if kind in ("LIST", "STRUCT"):
        try:
            value = json.loads(text)
        except ValueError:
            raise bad(f"a JSON {'list' if kind == 'LIST' else 'object'}") from None
        if not isinstance(value, list if kind == "LIST" else dict):
            raise bad(f"a JSON {'list' if kind == 'LIST' else 'object'}")
        return value
    return text


def parse_params(items: Sequence[str], parameters: Mapping[str, Mapping[str, Any]]) -> dict:
    """Turn ``KEY=VALUE`` strings into typed pipeline arguments, checking names and types."""
    arguments: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ParamError(f"--param {item!r}: expected KEY=VALUE")
        if name not in parameters:
            raise ParamError(
                f"--param {name}: the pipeline has no parameter {name!r}; "
                f"valid: {', '.join(sorted(parameters))}"
            )
        if name in arguments:
            raise ParamError(f"--param {name} is given twice")
        arguments[name] = _convert(name, text, parameters[name].get("parameterType", "STRING"))
    _check_values({**_defaults(parameters), **arguments}, arguments)
    return arguments


def _defaults(parameters: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {k: v["defaultValue"] for k, v in parameters.items() if "defaultValue" in v}


def _check_values(values: Mapping[str, Any], given: Mapping[str, Any]) -> None:
    """Catch values the run would fail on minutes later, naming the parameter given."""

    def fail(name: str, message: str) -> None:
        shown = name if name in given else f"{name} (default)"
        raise ParamError(f"--param {shown}={values[name]!r}: {message}")

    for name in ("num_clients", "num_rounds", "local_epochs", "batch_size"):
        if name in values and values[name] < 1:
            fail(name, "must be at least 1")
    for name in ("learning_rate", "join_timeout", "round_timeout"):
        if name in values and values[name] <= 0:
            fail(name, "must be positive")
    if "min_clients" in values:
        if values["min_clients"] < 0:
            fail("min_clients", "must be 0 (all clients) or more")
        if values["min_clients"] > values.get("num_clients", math.inf):
            fail("min_clients", f"exceeds num_clients={values['num_clients']}")
    if "optimizer" in values and str(values["optimizer"]).lower() not in ("sgd", "adam"):
        fail("optimizer", "must be sgd or adam")
    if "strategy" in values:
        from fl_kubeflow import strategies

        if values["strategy"] not in strategies.STRATEGIES:
            fail("strategy", f"must be one of {', '.join(sorted(strategies.STRATEGIES))}")
    if values.get("secure_aggregation") or values.get("secagg_options"):
        try:
            _check_secure_aggregation(values)
        except ValueError as exc:
            fail("secagg_options" if "secagg_options" in given else "secure_aggregation", str(exc))
    if values.get("mode", "sync") != "sync" or values.get("async_options"):
        try:
            _check_asynchronous(values)
        except ValueError as exc:
            fail("async_options" if "async_options" in given else "mode", str(exc))


def _build_strategy(values: Mapping[str, Any], **checks: Any) -> None:
    """Build the run's strategy as the server step will, with ``checks`` (ValueError
    saying what cannot work)."""
    from fl_kubeflow import defaults, strategies
    from fl_kubeflow.tasks.server_task import parse_strategy_options

    strategies.build(
        values.get("strategy", defaults.STRATEGY),
        parse_strategy_options(values.get("strategy_options", "{}")),
        # A package's integer defaults may read back as floats (3.0).
        num_clients=int(values.get("num_clients", defaults.NUM_CLIENTS)),
        min_clients=int(values.get("min_clients", defaults.MIN_CLIENTS)),
        **checks,
    )


def _check_asynchronous(values: Mapping[str, Any]) -> None:
    """What the server step checks first: the mode and its options, the strategy against
    them, and secure aggregation (synchronous only)."""
    from fl_kubeflow.tasks.server_task import ServerTaskError, asynchronous_params

    try:
        params = asynchronous_params(
            str(values.get("mode", "sync")), values.get("async_options", "")
        )
    except ServerTaskError as exc:
        raise ValueError(str(exc)) from None
    if params is None:
        return
    if values.get("secure_aggregation"):
        raise ValueError("secure aggregation needs synchronous rounds: not with mode=async")
    _build_strategy(values, asynchronous=params)


def _check_secure_aggregation(values: Mapping[str, Any]) -> None:
    """What the server step checks first: the options, and the strategy and federation
    against them (ValueError saying what cannot work)."""
    from fl_kubeflow.tasks.server_task import ServerTaskError, secure_aggregation_params

    try:
        params = secure_aggregation_params(
            bool(values.get("secure_aggregation")), values.get("secagg_options", "")
        )
    except ServerTaskError as exc:
        raise ValueError(str(exc)) from None
    if params is not None:
        _build_strategy(values, secure_aggregation=params)


def ensure_package(package: Path, image: str | None) -> Path:
    """Return ``package``, compiling the pipeline into it first if it does not exist."""
    if package.exists():
        if image is not None:
            print(
                f"fl-kubeflow submit: {package} exists; --image is ignored "
                "(delete it or run python compile.py --image ...)",
                file=sys.stderr,
            )
        return package
    compile_pipeline = _find_compiler()
    if compile_pipeline is None:
        raise ValueError(
            f"pipeline package {str(package)!r} does not exist and the pipeline sources are "
            "not installed here: pip install 'fl-kubeflow[kfp]', run 'python compile.py' in a "
            "checkout of fl-on-kubeflow, "
            "or pass --package"
        )
    kwargs = {} if image is None else {"image": image}
    written = compile_pipeline(package, **kwargs)
    print(f"compiled {written}", file=sys.stderr)
    return Path(written)


def _find_compiler():
    """``compile_pipeline`` of the installed KFP suite (``fl-kubeflow[kfp]``), or None."""
    try:
        from fl_kubeflow_kfp.pipeline import compile_pipeline
    except ImportError:
        return None
    return compile_pipeline


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        package = ensure_package(args.package, args.image)
        arguments = parse_params(args.param, pipeline_parameters(package))
    except ValueError as exc:  # ParamError included
        parser.error(str(exc))
    if args.wait < 0:
        parser.error(f"--wait {args.wait:g} must not be negative")
    try:
        import kfp
    except ImportError:
        parser.error("submitting needs kfp: pip install 'fl-kubeflow[kfp]'")

    with warnings.catch_warnings():
        # kfp.Client warns on every construction that it needs a v2 backend: we know.
        warnings.simplefilter("ignore", FutureWarning)
        try:
            client = kfp.Client(host=args.host)
            result = client.create_run_from_pipeline_package(
                str(package),
                arguments=arguments,
                run_name=args.run_name,
                experiment_name=args.experiment,
                namespace=args.namespace,
            )
        except Exception as exc:  # kfp raises ApiException, urllib3 and auth errors alike
            where = args.host or "the in-cluster KFP endpoint"
            message = f"fl-kubeflow submit: could not create the run on {where}: {exc}"
            print(message, file=sys.stderr)
            return 1
    print(json.dumps({"run_id": result.run_id, "arguments": arguments}), flush=True)
    if not args.wait:
        return 0
    try:
        finished = result.wait_for_run_completion(timeout=args.wait)
    except TimeoutError:
        print(f"fl-kubeflow submit: run {result.run_id} still running after {args.wait:g}s")
        return 1
    state = str(finished.state)
    print(json.dumps({"run_id": result.run_id, "state": state}), flush=True)
    return 0 if state.upper() == "SUCCEEDED" else 1

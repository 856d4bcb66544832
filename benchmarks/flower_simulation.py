"""The Flower side of benchmarks/simulation.py: one workload on Flower's simulation engine (Ray).

Run by benchmarks/simulation.py with the Flower venv's Python (Flower is never installed in a
project venv), with the project's ``src/`` on ``PYTHONPATH`` so that both sides build the same
2NN with the same seeded initial weights and cut digits into the same iid shards::

    PYTHONPATH=src /work/flwr-venv/bin/python benchmarks/flower_simulation.py \\
        --workload keras --clients 100 --fraction-fit 0.1 --rounds 20 --output flower.json

It uses Flower 1.42's Message API as its documentation shows it (``ClientApp`` with
``@app.train()``/``@app.evaluate()``, ``ServerApp`` with ``@app.main()``, the
``flwr.serverapp.strategy.FedAvg`` strategy and ``flwr.simulation.run_simulation``), with one
favour to Flower over its examples: each Ray actor process builds and compiles its Keras model
once and keeps it (resetting the optimizer's state before every fit), where the examples build
a model per message. Timing is taken in the ServerApp: a round runs from one ``configure_train``
to the next (the last to the strategy's end), evaluation included, like the project server's
round duration. The output JSON holds the round times and, for Keras, the path of the final
weights (``.npz``, Keras weight order) that the harness scores. Memory is measured outside, by
the harness, over this process tree.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

DIGITS_SHAPE = (8, 8, 1)
DIGITS_CLASSES = 10
TEST_FRACTION = 0.2  # the project's TrainerOptions default: each client's local test share
NUMPY_DELTA = 0.001
# The ClientApps read the run's settings here: run_simulation gives them no run config, and Ray
# actors inherit the driver's environment.
SETTINGS_ENV = "FLOWER_BENCH_SETTINGS"

# Per Ray actor process: the compiled model, its fresh optimizer state and the dataset.
_ACTOR_STATE: dict[str, Any] = {}


@functools.cache
def _settings() -> dict[str, Any]:
    return json.loads(os.environ[SETTINGS_ENV])


def _keras_state(settings: dict[str, Any]) -> dict[str, Any]:
    if not _ACTOR_STATE:
        import keras

        from fl_kubeflow.training.datasets import client_splits, load_full_dataset
        from fl_kubeflow.training.models import build_model

        model = build_model("mlp", DIGITS_SHAPE, DIGITS_CLASSES, settings["seed"])
        optimizer = keras.optimizers.SGD(
            learning_rate=settings["learning_rate"], momentum=settings["momentum"]
        )
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            jit_compile=False,
        )
        optimizer.build(model.trainable_variables)
        data = load_full_dataset("digits")
        _ACTOR_STATE.update(
            model=model,
            fresh=[np.array(v.numpy()) for v in optimizer.variables],
            data=data,
            splits=client_splits(
                data.y, settings["clients"], "iid", settings["seed"], TEST_FRACTION
            ),
        )
    return _ACTOR_STATE


def _client_data(state: dict[str, Any], client: int, part: int) -> tuple[np.ndarray, np.ndarray]:
    indices = state["splits"][client][part]
    return state["data"].features(indices), state["data"].y[indices]


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Fit one virtual client: Keras on its digits shard, or numpy global + a small change."""
    settings = _settings()
    client = int(context.node_config["partition-id"])
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    if settings["workload"] == "numpy":
        new = [a + np.float32(NUMPY_DELTA * (1 + client % 7)) for a in arrays]
        metrics = {"num-examples": 1 + client % 5}
    else:
        state = _keras_state(settings)
        model = state["model"]
        model.set_weights(arrays)
        for variable, value in zip(model.optimizer.variables, state["fresh"], strict=True):
            variable.assign(value)
        x, y = _client_data(state, client, 0)
        fitted = model.fit(
            x, y, epochs=settings["local_epochs"], batch_size=settings["batch_size"], verbose=0
        )
        new = model.get_weights()
        metrics = {"num-examples": len(y), "train_loss": float(fitted.history["loss"][-1])}
    content = RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the client's local test split (Keras only)."""
    settings = _settings()
    client = int(context.node_config["partition-id"])
    state = _keras_state(settings)
    model = state["model"]
    model.set_weights(msg.content["arrays"].to_numpy_ndarrays())
    x, y = _client_data(state, client, 1)
    loss, accuracy = model.evaluate(x, y, verbose=0)
    metrics = {"num-examples": len(y), "eval_loss": float(loss), "eval_acc": float(accuracy)}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


class TimedFedAvg(FedAvg):
    """FedAvg that stamps the start of every round's training."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.round_starts: list[float] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Any:
        self.round_starts.append(time.perf_counter())
        return super().configure_train(server_round, arrays, config, grid)


def _initial_weights(settings: dict[str, Any]) -> list[np.ndarray]:
    if settings["workload"] == "numpy":
        return [np.zeros(settings["params"], dtype=np.float32)]
    from fl_kubeflow.training.models import build_model

    return build_model("mlp", DIGITS_SHAPE, DIGITS_CLASSES, settings["seed"]).get_weights()


def make_server_app(settings: dict[str, Any], report: dict[str, Any]) -> ServerApp:
    """The ServerApp: FedAvg over ``rounds`` rounds; fills ``report`` with what it measured."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = TimedFedAvg(
            fraction_train=settings["fraction_fit"],
            fraction_evaluate=settings["fraction_evaluate"],
            min_available_nodes=settings["clients"],
        )
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(_initial_weights(settings)),
            num_rounds=settings["rounds"],
        )
        ends = [*strategy.round_starts[1:], time.perf_counter()]
        report["round_s"] = [
            end - start for start, end in zip(strategy.round_starts, ends, strict=True)
        ]
        report["evaluations"] = {
            str(r): dict(m) for r, m in result.evaluate_metrics_clientapp.items()
        }
        report["final_weights"] = result.arrays.to_numpy_ndarrays()

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=("keras", "numpy"), required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--fraction-fit", type=float, required=True)
    parser.add_argument("--fraction-evaluate", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cpus-per-client",
        type=float,
        default=1.0,
        help="Ray resources per ClientApp: 1 runs two actors on two cores",
    )
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    settings = {
        key: getattr(args, key)
        for key in (
            "workload",
            "clients",
            "fraction_fit",
            "fraction_evaluate",
            "rounds",
            "params",
            "local_epochs",
            "batch_size",
            "learning_rate",
            "momentum",
            "seed",
        )
    }
    os.environ[SETTINGS_ENV] = json.dumps(settings)
    # Flower pickles the ClientApp into every task it sends an actor: imported from this module
    # (not __main__) it travels by reference, so each actor keeps its _ACTOR_STATE.
    here = Path(__file__).resolve().parent
    paths = [str(here), str(here.parent / "src"), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    sys.path[:0] = [str(here), str(here.parent / "src")]
    from flower_simulation import client_app as importable_client_app

    report: dict[str, Any] = {}
    started = time.perf_counter()
    run_simulation(
        server_app=make_server_app(settings, report),
        client_app=importable_client_app,
        num_supernodes=args.clients,
        backend_config={
            "client_resources": {"num_cpus": args.cpus_per_client, "num_gpus": 0.0},
            "init_args": {"logging_level": "WARNING"},
        },
    )
    wall = time.perf_counter() - started
    if "round_s" not in report:
        raise SystemExit("the Flower ServerApp did not finish (see its log above)")
    weights = report.pop("final_weights")
    if args.workload == "keras":
        weights_path = args.output.with_suffix(".npz")
        np.savez(weights_path, *weights)
        report["final_weights"] = str(weights_path)
    report.update(
        wall_in_process_s=wall,
        median_round_s=statistics.median(report["round_s"]),
        settings=settings,
    )
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

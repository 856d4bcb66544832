"""Saving a run after every round, and reading it back after a crash.

A checkpoint is a JSON state file that names the safetensors files it belongs
with. The tensors are written first under new names, then the state file is
atomically renamed into place: a crash at any moment leaves the previous
checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fl_kubeflow import files, wire
from fl_kubeflow.wire import Weights

log = logging.getLogger("fl_kubeflow.server")

STATE_FILE = "state.json"
VERSION = 1


@dataclass
class Checkpoint:
    """Everything needed to carry on after ``completed_round``."""

    completed_round: int
    global_weights: Weights
    strategy_state: dict[str, Any]
    run_state: dict[str, Any]


def _split_state(state: dict[str, Any], prefix: str = "") -> tuple[Weights, dict[str, Any]]:
    """Separate arrays (for safetensors) from plain values (for JSON), keeping nesting."""
    arrays: Weights = {}
    values: dict[str, Any] = {}
    for key, value in state.items():
        path = f"{prefix}{key}"
        if isinstance(value, np.ndarray):
            arrays[path] = value
            values[key] = {"__array__": path}
        elif isinstance(value, dict):
            sub_arrays, sub_values = _split_state(value, f"{path}/")
            arrays.update(sub_arrays)
            values[key] = sub_values
        else:
            values[key] = value
    return arrays, values


def _join_state(values: dict[str, Any], arrays: Weights) -> dict[str, Any]:
    joined: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and set(value) == {"__array__"}:
            joined[key] = arrays[value["__array__"]]
        elif isinstance(value, dict):
            joined[key] = _join_state(value, arrays)
        else:
            joined[key] = value
    return joined


def save(folder: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` into ``folder`` and drop the files of older ones."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    number = checkpoint.completed_round
    weights_name = f"global-{number:06d}.safetensors"
    strategy_name = f"strategy-{number:06d}.safetensors"
    arrays, values = _split_state(checkpoint.strategy_state)
    files.write_bytes(folder / weights_name, wire.encode(checkpoint.global_weights))
    files.write_bytes(folder / strategy_name, wire.encode(arrays) if arrays else b"")
    files.write_json(
        folder / STATE_FILE,
        {
            "version": VERSION,
            "completed_round": number,
            "weights_file": weights_name,
            "strategy_file": strategy_name,
            "strategy_values": values,
            "run": checkpoint.run_state,
        },
    )
    for old in [*folder.glob("global-*.safetensors"), *folder.glob("strategy-*.safetensors")]:
        if old.name not in (weights_name, strategy_name):
            old.unlink(missing_ok=True)


def load(folder: Path) -> Checkpoint | None:
    """The checkpoint in ``folder``, or None if there is none yet.

    Raises:
        ValueError: the folder holds a checkpoint that cannot be read.
    """
    state_path = Path(folder) / STATE_FILE
    if not state_path.exists():
        return None
    try:
        state = json.loads(state_path.read_text())
        if state.get("version") != VERSION:
            raise ValueError(f"version {state.get('version')!r}, expected {VERSION}")
        weights = wire.decode((Path(folder) / state["weights_file"]).read_bytes())
        raw = (Path(folder) / state["strategy_file"]).read_bytes()
        arrays = wire.decode(raw) if raw else {}
        return Checkpoint(
            completed_round=int(state["completed_round"]),
            global_weights=weights,
            strategy_state=_join_state(state["strategy_values"], arrays),
            run_state=state["run"],
        )
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"cannot resume from checkpoint {str(state_path)!r}: {exc}") from None

"""examples/fl_notebook.ipynb: it imports only the installed suite, and its cells run.

The cells that talk to a KFP backend (tagged ``submits``: submit, wait) cannot run here (no
KFP backend); every other cell runs, in a child Python as a notebook kernel would run them
(the value of a cell's last expression is what Jupyter shows), against the outputs of a
real ``fl-kubeflow local`` run through the notebook's ``FL_RESULTS_DIR`` path. The
download from KFP's artifact store is tested in test_results.py.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fl_kubeflow.tasks.server_task import history_metrics

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "fl_notebook.ipynb"
SUBMITS = "submits"
# What the notebook may import: the installed distribution's packages, kfp, numpy, stdlib.
ALLOWED_ROOTS = {"fl_kubeflow_kfp", "fl_kubeflow", "kfp", "numpy", *sys.stdlib_module_names}
RUN_TIMEOUT = 420.0  # a two-client local run with three TensorFlow start-ups, shared cores

# Runs the notebook's cells in order, one namespace; records each cell's shown value.
KERNEL = r"""
import ast, json, os, sys
import matplotlib
matplotlib.use("Agg")
cells, report = json.loads(sys.argv[1]), sys.argv[2]
namespace = {"__name__": "__main__"}
shown = []
for source in cells:
    tree = ast.parse(source)
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    body = tree.body[:-1] if last is not None else tree.body
    exec(compile(ast.Module(body, []), "<cell>", "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
        if value is None:  # Jupyter shows nothing, e.g. for print(...)
            continue
        markdown = getattr(value, "_repr_markdown_", None)
        png = getattr(value, "_repr_png_", None)
        shown.append({
            "type": type(value).__module__ + "." + type(value).__qualname__,
            "markdown": markdown() if markdown else None,
            "png": png()[:8].hex() if png else None,
            "value": value if isinstance(value, dict) else None,
        })
with open(report, "w") as handle:
    json.dump({"shown": shown, "work": [str(p) for p in sorted(
        __import__("pathlib").Path(os.environ["FL_NOTEBOOK_DIR"]).iterdir())]}, handle)
"""


def _cells() -> list[dict[str, Any]]:
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert notebook["nbformat"] == 4
    return notebook["cells"]


def _code(cell: dict[str, Any]) -> str:
    return "".join(cell["source"])


def _tags(cell: dict[str, Any]) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def test_notebook_imports_only_the_installed_suite() -> None:
    code_cells = [c for c in _cells() if c["cell_type"] == "code"]
    imported: dict[str, list[str]] = {}
    for cell in code_cells:
        tree = ast.parse(_code(cell))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    imported.setdefault(alias.name, [])
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0 and node.module
                imported.setdefault(node.module, []).extend(a.name for a in node.names)
            elif isinstance(node, ast.Attribute) and node.attr == "path":
                # No sys.path (or os.path-based) hacks to reach a clone's folders.
                assert not (isinstance(node.value, ast.Name) and node.value.id == "sys")
    roots = {name.split(".")[0] for name in imported}
    assert roots <= ALLOWED_ROOTS, roots - ALLOWED_ROOTS
    assert not roots & {"pipeline", "components"}  # the clone's folders, not installed names
    assert "fl_kubeflow_kfp.results" in imported
    for module, names in imported.items():
        loaded = importlib.import_module(module)
        for name in names:
            assert hasattr(loaded, name), f"{module} has no {name}"
    # Only tagged cells talk to a KFP backend, so the others can run without one.
    for cell in code_cells:
        talks = any(s in _code(cell) for s in ("create_run_from", "wait_for_run_completion"))
        assert talks == (SUBMITS in _tags(cell)), _code(cell)


@pytest.mark.slow
def test_notebook_cells_show_a_local_runs_results(tmp_path: Path) -> None:
    output = tmp_path / "run"
    command = ["local", "--clients", "2", "--rounds", "1", "--local-epochs", "1"]
    local = subprocess.run(
        [sys.executable, "-m", "fl_kubeflow", *command, "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]

    cells = [_code(c) for c in _cells() if c["cell_type"] == "code" and SUBMITS not in _tags(c)]
    work, report = tmp_path / "work", tmp_path / "report.json"
    env = {
        **os.environ,
        "FL_RESULTS_DIR": str(output),
        "FL_NOTEBOOK_DIR": str(work),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    kernel = subprocess.run(
        [sys.executable, "-c", KERNEL, json.dumps(cells), str(report)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert kernel.returncode == 0, kernel.stdout[-3000:] + kernel.stderr[-3000:]

    shown = json.loads(report.read_text())
    assert str(work / "fl_pipeline.yaml") in shown["work"]  # the compile cell ran
    history = json.loads((output / "history.json").read_text())
    results, metrics, figure = shown["shown"][:3]
    assert results["type"] == "fl_kubeflow_kfp.results.RunResults"
    assert results["markdown"].startswith("# Federated learning run")
    assert metrics["value"] == history_metrics(history)
    assert figure["type"] == "fl_kubeflow_kfp.results.LearningCurves"
    assert bytes.fromhex(figure["png"]) == b"\x89PNG\r\n\x1a\n"  # Jupyter shows the PNG
    assert "round  clients  train acc" in kernel.stdout
    accuracy_line = next(
        line for line in kernel.stdout.splitlines() if line.startswith("accuracy on all")
    )
    # The loaded model.keras is the trained one: far above chance (0.1) after one round.
    assert float(accuracy_line.rsplit(" ", 1)[1]) > 0.5, kernel.stdout

"""A finished federated run's results in a notebook: metrics, learning curves, the model.

The fl-server task's ``trained_model`` artifact is a folder with ``history.json`` (every
round's metrics), ``weights.safetensors`` and ``model.keras``; ``fl-kubeflow local``
writes the same files into its output folder. :class:`RunResults` reads such a folder;
:func:`fetch_run_results` first finds a KFP run's artifact (``run_artifacts``) and
downloads it from the artifact store (``artifact_store``)::

    import kfp
    from fl_kubeflow_kfp.results import ArtifactStore, fetch_run_results

    results = fetch_run_results(kfp.Client(), run_id, "results/", ArtifactStore.from_secret())
    results.metrics               # final evaluation accuracy and loss, rounds, clients
    results.learning_curves()     # shown inline as a cell's value (.figure: matplotlib)
    model = results.load_keras_model()

matplotlib is needed for the curves, TensorFlow/Keras only for ``load_keras_model``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fl_kubeflow import report, wire
from fl_kubeflow.server.serve import HISTORY_FILE, WEIGHTS_FILE
from fl_kubeflow.tasks.server_task import KERAS_FILE, history_metrics, markdown_summary
from fl_kubeflow_kfp.artifact_store import ArtifactStore
from fl_kubeflow_kfp.run_artifacts import SERVER_TASK, default_pipeline_root, find_output_uri

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ArtifactStore", "LearningCurves", "RunResults", "fetch_run_results"]


class RunResultsError(RuntimeError):
    """A results folder lacks a file or holds an unreadable one; the message says which."""


@dataclass(frozen=True)
class LearningCurves:
    """A run's learning curves: Jupyter shows them as a PNG when they are a cell's value.

    The figure is built without pyplot, so no notebook backend would show a bare Figure.

    Attributes:
        figure: The matplotlib Figure (accuracy and loss axes), to restyle or save.
    """

    figure: Figure

    def png(self) -> bytes:
        """The curves as PNG bytes."""
        return report.figure_png(self.figure)

    def _repr_png_(self) -> bytes:
        return self.png()


@dataclass(frozen=True)
class RunResults:
    """The outputs of one federated run, read from a local folder.

    Attributes:
        folder: The folder with ``history.json`` (and the model files).
        history: The server's per-round history (schema in ``fl_kubeflow.report``).
        uri: Where the folder was downloaded from, if it was (an artifact URI).
    """

    folder: Path
    history: dict[str, Any]
    uri: str | None = None

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str], uri: str | None = None) -> RunResults:
        """Read a ``trained_model`` artifact folder or an ``fl-kubeflow local`` output folder.

        Args:
            folder: The folder holding ``history.json``.
            uri: The artifact URI it came from, kept for reference.
        """
        path = Path(folder)
        history_file = path / HISTORY_FILE
        try:
            history = json.loads(history_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            message = f"{path}: no {HISTORY_FILE} (not a run's output folder)"
            raise RunResultsError(message) from None
        except (OSError, ValueError) as exc:
            raise RunResultsError(f"{history_file}: unreadable: {exc}") from exc
        if not isinstance(history, dict):
            raise RunResultsError(f"{history_file}: not a JSON object")
        return cls(path, history, uri)

    @property
    def metrics(self) -> dict[str, float]:
        """Final evaluation accuracy and loss, rounds completed and clients (as in KFP's UI)."""
        return history_metrics(self.history)

    def rounds(self) -> list[dict[str, Any]]:
        """One row per round: clients, examples, training and evaluation loss and accuracy."""
        rows = []
        for entry in self.history.get("rounds") or []:
            if not isinstance(entry, dict):
                continue
            train = entry.get("train") if isinstance(entry.get("train"), dict) else {}
            evaluate = entry.get("evaluate") if isinstance(entry.get("evaluate"), dict) else {}
            scores = evaluate.get("metrics") if isinstance(evaluate.get("metrics"), dict) else {}
            contributors = entry.get("contributors")
            rows.append(
                {
                    "round": entry.get("round"),
                    "clients": len(contributors) if isinstance(contributors, list) else None,
                    "examples": entry.get("num_examples"),
                    "train_loss": train.get("loss"),
                    "train_accuracy": train.get("accuracy"),
                    "eval_loss": scores.get("loss"),
                    "eval_accuracy": scores.get("accuracy"),
                }
            )
        return rows

    def summary(self) -> str:
        """A short Markdown summary: status, strategy, clients, rounds, final metrics."""
        return markdown_summary(self.history, self.metrics)

    def _repr_markdown_(self) -> str:
        # Jupyter shows a RunResults that is a cell's value as this Markdown.
        return self.summary()

    def learning_curves(self) -> LearningCurves:
        """Accuracy and loss per round (shown inline as a cell's value; ``.figure``)."""
        return LearningCurves(report.learning_curves_figure(self.history))

    def load_weights(self) -> dict[str, Any]:
        """The final global weights from ``weights.safetensors``, as numpy arrays by name."""
        path = self.folder / WEIGHTS_FILE
        try:
            return dict(wire.decode(bytearray(path.read_bytes())))
        except FileNotFoundError:
            raise RunResultsError(f"{self.folder}: no {WEIGHTS_FILE}") from None
        except wire.WireFormatError as exc:
            raise RunResultsError(f"{path}: not a safetensors file: {exc}") from exc

    def load_keras_model(self, compile: bool = True) -> Any:
        """The trained model from ``model.keras`` (``keras.saving.load_model``; needs Keras).

        Args:
            compile: Restore the optimizer and loss too, so ``model.evaluate`` works as is.
        """
        path = self.folder / KERAS_FILE
        if not path.is_file():
            raise RunResultsError(
                f"{self.folder}: no {KERAS_FILE} (a custom trainer's run may export only "
                f"{WEIGHTS_FILE}: use load_weights())"
            )
        import keras

        return keras.saving.load_model(path, compile=compile)


def fetch_run_results(
    client: Any,
    run_id: str,
    destination: str | os.PathLike[str],
    store: ArtifactStore,
    display_name: str = SERVER_TASK,
    pipeline_root: str | None = None,
) -> RunResults:
    """Find a KFP run's ``trained_model`` artifact, download it, and read it.

    Args:
        client: A ``kfp.Client`` (``kfp.Client()`` in a Kubeflow notebook).
        run_id: The finished run's id.
        destination: Local folder the artifact's files are written into.
        store: The artifact store, e.g. ``ArtifactStore.from_secret()`` in a notebook pod.
        display_name: The server task's display name in the pipeline.
        pipeline_root: The pipeline root when neither the run nor its spec sets one;
            default: ``default_pipeline_root()``, the one KFP uses in this pod's namespace.
    """
    if pipeline_root is None:
        pipeline_root = default_pipeline_root()
    uri = find_output_uri(
        client, run_id, store, display_name=display_name, pipeline_root=pipeline_root
    )
    return RunResults.from_folder(store.download(uri, destination), uri=uri)

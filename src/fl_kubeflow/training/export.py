"""Turn the federation's final weights into a ``model.keras`` file.

The server never imports TensorFlow, so it runs this as a subprocess::

    python -m fl_kubeflow.training.export --weights final.safetensors \\
        --model mlp --dataset digits --output model.keras

The model is rebuilt exactly as the clients built it (same name, input shape, class
count), the weights are assigned by name with every shape checked, and the model
is saved compiled (sparse cross-entropy, accuracy, plain SGD) so ``load_model(...).evaluate``
works as well as ``predict``. Importing this module does not import Keras.

Where the shapes come from (``model_shapes``), so that a server without the clients'
data or credentials can still export: a built-in dataset's table; for a table dataset
(CSV/Parquet, usually in object storage the server cannot read) the weights themselves
(``mlp``: features = rows of ``fc1``'s kernel, classes = length of ``output``'s bias);
a ``.keras`` model brings its own; ``npz:`` with ``cnn`` reads client 0's file as before.
``--input-shape`` and ``--num-classes`` override all of these.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fl_kubeflow.wire import Weights, decode


def read_weights(path: str | Path) -> Weights:
    """Read a safetensors weights file (as written by the server) into named arrays.

    Raises:
        OSError: the file cannot be read.
        fl_kubeflow.wire.WireFormatError: it is not safetensors.
    """
    return decode(Path(path).read_bytes())


def export_keras(
    weights: Mapping[str, np.ndarray],
    model: str,
    input_shape: Sequence[int],
    num_classes: int,
    path: str | Path,
) -> Path:
    """Build ``model``, assign ``weights`` and save it as a ``.keras`` file.

    Args:
        weights: named arrays as produced by ``KerasTrainer`` (``"0000:mlp/fc1/kernel"``...).
        model: ``mlp``, ``cnn`` or the ``.keras`` file the clients trained.
        input_shape: one sample's shape.
        num_classes: output units of a built-in model.
        path: destination; must end in ``.keras`` (Keras 3 insists).

    Returns:
        The written path.

    Raises:
        ValueError: a bad destination, or weights that do not fit the model.
    """
    from fl_kubeflow.training.keras_trainer import TrainerOptions, compile_model
    from fl_kubeflow.training.models import build_model, set_weights

    destination = Path(path)
    if destination.suffix != ".keras":
        raise ValueError(f"output {destination} must end in .keras")
    keras_model = build_model(model, input_shape, num_classes, seed=0)
    set_weights(keras_model, weights)
    # Plain SGD has no slot variables: the saved optimizer then matches the one Keras
    # rebuilds on load (no "skipping variable loading" warning), and there is no
    # training state worth saving: clients reset theirs every round.
    compile_model(keras_model, TrainerOptions(model=model, optimizer="sgd", momentum=0.0))
    destination.parent.mkdir(parents=True, exist_ok=True)
    keras_model.save(destination)
    return destination


def _weight(weights: Mapping[str, np.ndarray], suffix: str) -> np.ndarray:
    matches = [name for name in weights if name.endswith(suffix)]
    if len(matches) != 1:
        raise ValueError(f"the weights have {len(matches)} tensors named *{suffix}, expected 1")
    return weights[matches[0]]


def model_shapes(
    model: str, dataset: str, weights: Mapping[str, np.ndarray], client_id: int = 0
) -> tuple[tuple[int, ...], int]:
    """``(input_shape, num_classes)`` to rebuild ``model`` with (see the module docstring).

    Raises:
        ValueError: the shapes cannot be known without the data (``cnn`` on a table).
    """
    from fl_kubeflow.training.datasets import dataset_spec, file_dataset
    from fl_kubeflow.training.models import is_model_file

    file_format = (file_dataset(dataset) or ("builtin", ""))[0]
    if file_format in ("builtin", "npz"):
        return dataset_spec(dataset, client_id)
    if is_model_file(model):
        return (1,), 2  # unused: build_model loads the file as it is, shapes and all
    if model.strip().lower() != "mlp":
        raise ValueError(
            f"model {model!r} on table dataset {dataset!r}: pass --input-shape and "
            "--num-classes (only mlp's shapes can be read from its weights)"
        )
    features = int(_weight(weights, "fc1/kernel").shape[0])
    return (features,), int(_weight(weights, "output/bias").shape[0])


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}; expected e.g. 8,8,1") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}; expected e.g. 8,8,1")
    return shape


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fl_kubeflow.training.export",
        description="Write a model.keras from a safetensors weights file.",
    )
    parser.add_argument("--weights", required=True, help="safetensors file of final weights")
    parser.add_argument("--model", default="mlp", help="mlp, cnn or a .keras file")
    parser.add_argument("--dataset", help="dataset string the clients used (gives the shapes)")
    parser.add_argument("--client-id", type=int, default=0, help="whose npz file to inspect")
    parser.add_argument("--input-shape", type=_shape, help="e.g. 8,8,1 (overrides --dataset)")
    parser.add_argument("--num-classes", type=int, help="output units (overrides --dataset)")
    parser.add_argument("--output", required=True, help="destination ending in .keras")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns 0 on success, 1 on failure (message on stderr)."""
    args = _parser().parse_args(argv)
    input_shape, num_classes = args.input_shape, args.num_classes
    try:
        weights = read_weights(args.weights)
        if input_shape is None or num_classes is None:
            if not args.dataset:
                raise ValueError("give --dataset, or both --input-shape and --num-classes")
            spec_shape, spec_classes = model_shapes(
                args.model, args.dataset, weights, args.client_id
            )
            input_shape = input_shape or spec_shape
            num_classes = num_classes or spec_classes
        written = export_keras(weights, args.model, input_shape, num_classes, args.output)
    except (OSError, ValueError) as exc:  # DatasetError and WireFormatError are ValueErrors
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

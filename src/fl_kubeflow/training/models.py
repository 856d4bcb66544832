"""Model builders and the weights-dict view of a Keras model.

Built-in models follow McMahan et al. 2017 ("Communication-Efficient Learning of Deep
Networks from Decentralized Data"):

* ``mlp``: their "2NN": Flatten, Dense 200 ReLU, Dense 200 ReLU, Dense softmax.
* ``cnn``: Conv 5x5x32 ReLU, MaxPool 2x2, Conv 5x5x64 ReLU, MaxPool 2x2, Dense 512 ReLU,
  Dense softmax. Convolutions and pools use ``padding="same"`` so small inputs (8x8
  digits) keep a non-empty feature map; for 28x28 this is the paper's shape.

Any other ``model`` string ending in ``.keras`` is loaded with
``keras.models.load_model``. Keras is imported lazily inside the functions.

Layers and models get fixed names because Keras names weights by layer path and
auto-generated names (``dense_3``) depend on how many layers the process built
before; fixed names give the same weight names in every client, the server's
export subprocess, and tests that build several models in one process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fl_kubeflow.training.common import check_weights
from fl_kubeflow.wire import Weights

if TYPE_CHECKING:
    import keras

BUILTIN_MODELS = ("mlp", "cnn")


def _layer_seeds(seed: int, count: int) -> list[int]:
    """Distinct per-layer initializer seeds: one shared int seed would repeat values."""
    state = np.random.SeedSequence(seed).generate_state(count)
    return [int(s) % (2**31 - 1) for s in state]


def _mlp(input_shape: tuple[int, ...], num_classes: int, seed: int) -> keras.Model:
    import keras

    s = _layer_seeds(seed, 3)
    return keras.Sequential(
        [
            keras.Input(shape=input_shape, name="input"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(
                200, "relu", kernel_initializer=keras.initializers.GlorotUniform(s[0]), name="fc1"
            ),
            keras.layers.Dense(
                200, "relu", kernel_initializer=keras.initializers.GlorotUniform(s[1]), name="fc2"
            ),
            keras.layers.Dense(
                num_classes,
                "softmax",
                kernel_initializer=keras.initializers.GlorotUniform(s[2]),
                name="output",
            ),
        ],
        name="mlp",
    )


def _cnn(input_shape: tuple[int, ...], num_classes: int, seed: int) -> keras.Model:
    import keras

    if len(input_shape) not in (2, 3):
        raise ValueError(
            f"model 'cnn' needs image input (height, width[, channels]), got shape {input_shape}; "
            "use --model mlp for flat features"
        )
    s = _layer_seeds(seed, 4)
    layers: list[Any] = [keras.Input(shape=input_shape, name="input")]
    if len(input_shape) == 2:  # grayscale without a channel axis
        layers.append(keras.layers.Reshape((*input_shape, 1), name="add_channel"))
    layers += [
        keras.layers.Conv2D(
            32,
            5,
            padding="same",
            activation="relu",
            kernel_initializer=keras.initializers.GlorotUniform(s[0]),
            name="conv1",
        ),
        keras.layers.MaxPooling2D(2, padding="same", name="pool1"),
        keras.layers.Conv2D(
            64,
            5,
            padding="same",
            activation="relu",
            kernel_initializer=keras.initializers.GlorotUniform(s[1]),
            name="conv2",
        ),
        keras.layers.MaxPooling2D(2, padding="same", name="pool2"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(
            512, "relu", kernel_initializer=keras.initializers.GlorotUniform(s[2]), name="fc1"
        ),
        keras.layers.Dense(
            num_classes,
            "softmax",
            kernel_initializer=keras.initializers.GlorotUniform(s[3]),
            name="output",
        ),
    ]
    return keras.Sequential(layers, name="cnn")


def is_model_file(name: str) -> bool:
    """True when ``name`` refers to a saved ``.keras`` model rather than a built-in."""
    return name.strip().lower().endswith(".keras")


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, seed: int = 0
) -> keras.Model:
    """Build ``mlp`` or ``cnn`` with seeded initial weights, or load a ``.keras`` file.

    Args:
        name: ``mlp``, ``cnn`` or a path ending in ``.keras``.
        input_shape: one sample's shape, e.g. ``(8, 8, 1)``.
        num_classes: softmax units of a built-in model.
        seed: initializer seed: the same seed gives identical weights. Ignored for a file.

    Raises:
        ValueError: unknown name, unusable shape, or an unreadable model file.
    """
    shape = tuple(int(d) for d in input_shape)
    if is_model_file(name):
        return load_model_file(name)
    key = name.strip().lower()
    if num_classes < 2:
        raise ValueError(f"model {name!r} needs at least 2 classes, got {num_classes}")
    if key == "mlp":
        return _mlp(shape, num_classes, seed)
    if key == "cnn":
        return _cnn(shape, num_classes, seed)
    raise ValueError(f"unknown model {name!r}; valid: mlp, cnn, or a path ending in .keras")


def load_model_file(path: str) -> keras.Model:
    """Load a user's ``.keras`` model without its training config (the trainer compiles it)."""
    import os

    import keras

    if not os.path.isfile(path):
        raise ValueError(f"model file {path} does not exist")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # keras raises many types for a bad archive
        raise ValueError(f"could not load model file {path}: {exc}") from exc


def outputs_probabilities(model: keras.Model) -> bool:
    """Whether the model ends in softmax (probabilities) rather than a linear layer (logits).

    Lets a user's ``.keras`` model that outputs logits train with the right loss.
    """
    import keras

    last = model.layers[-1] if model.layers else None
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return activation is not keras.activations.linear


def check_compatible(
    model: keras.Model,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    exact_classes: bool = True,
    model_name: str = "model",
    data_name: str = "data",
) -> None:
    """Raise a ValueError naming both shapes if ``model`` cannot train on this data.

    Args:
        exact_classes: require output units == num_classes; False only requires
            enough units (the class count was inferred from one client's labels).
    """
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):
        raise ValueError(
            f"{model_name} has no defined input/output shape (build it with keras.Input)"
        ) from None
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"{model_name} has {len(inputs)} inputs and {len(outputs)} outputs; "
            "the trainer supports exactly one of each"
        )
    model_in = tuple(inputs[0].shape[1:])
    data_in = tuple(int(d) for d in input_shape)
    units = outputs[0].shape[-1]
    fits = len(model_in) == len(data_in) and all(
        m is None or m == d for m, d in zip(model_in, data_in, strict=True)
    )
    if not fits:
        raise ValueError(
            f"{model_name} expects input shape {model_in} but {data_name} has samples of shape "
            f"{data_in}"
        )
    enough = units is not None and (units == num_classes if exact_classes else units >= num_classes)
    if not enough:
        raise ValueError(
            f"{model_name} outputs shape {tuple(outputs[0].shape[1:])} ({units} classes) but "
            f"{data_name} has {num_classes} classes"
        )


def weight_names(model: keras.Model) -> list[str]:
    """``"{i:04d}:{variable.path}"`` over ``model.weights``: sorting them restores model order."""
    return [f"{i:04d}:{v.path}" for i, v in enumerate(model.weights)]


def get_weights(model: keras.Model) -> Weights:
    """All of the model's variables (trainable and not) as named numpy copies."""
    return {
        name: np.array(v.numpy(), copy=True)
        for name, v in zip(weight_names(model), model.weights, strict=True)
    }


def set_weights(model: keras.Model, weights: Mapping[str, np.ndarray]) -> None:
    """Assign named weights to ``model`` after checking every name and shape.

    Raises:
        ValueError: missing or unexpected names, or a shape mismatch, naming them.
            Nothing is assigned unless everything matches.
    """
    names = weight_names(model)
    check_weights({n: tuple(v.shape) for n, v in zip(names, model.weights, strict=True)}, weights)
    arrays = [
        np.asarray(weights[name]).astype(variable.dtype, copy=False)
        for name, variable in zip(names, model.weights, strict=True)
    ]
    for variable, array in zip(model.weights, arrays, strict=True):
        variable.assign(array)

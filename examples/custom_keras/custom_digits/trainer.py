"""A user's own Keras model and training settings, as an fl-kubeflow trainer factory.

``build`` is the factory: ``fl-kubeflow local --trainer custom_digits.trainer:build``
(this folder on ``PYTHONPATH``, or the package installed), the pipeline's ``trainer``
parameter, or ``fl-kubeflow client --trainer ...`` all call it once per client with
the run's ``TrainerOptions``. It keeps the built-in ``KerasTrainer`` for the data
(``options.dataset``, split by ``options.partition``), the federated protocol and the
per-round training loop, and brings its own model, optimizer, loss and metrics.
"""

from __future__ import annotations

from pathlib import Path

import keras

from fl_kubeflow.training.export import read_weights
from fl_kubeflow.training.keras_trainer import KerasTrainer
from fl_kubeflow.training.models import set_weights
from fl_kubeflow.training.options import TrainerOptions

# Our own optimizer setting: Adam ignores the run's --learning-rate (meant for SGD).
ADAM_LEARNING_RATE = 0.003


def digits_convnet(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """A small convolutional network for 8x8 digits, ending in logits.

    Every layer has a fixed name: the weights travel between clients and server by name.
    """
    inputs = keras.Input(input_shape, name="pixels")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="hidden")(x)
    x = keras.layers.Dropout(0.1, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_convnet")


def compiled_convnet(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """``digits_convnet`` compiled with our optimizer, loss and metrics."""
    model = digits_convnet(input_shape, num_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=ADAM_LEARNING_RATE),
        # A Loss object (not a name): FedProx rounds need one.
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def build(options: TrainerOptions) -> KerasTrainer:
    """The trainer factory: this client's data (from ``options``) and our model."""
    return KerasTrainer(options, model=compiled_convnet)


def load_trained(
    weights: str | Path, input_shape: tuple[int, ...] = (8, 8, 1), num_classes: int = 10
) -> keras.Model:
    """Our model with a run's final weights (``weights.safetensors`` of its trained_model).

    The server exports ``model.keras`` only for the built-in models; a model of one's
    own is rebuilt by one's own code and given the weights by name.
    """
    model = compiled_convnet(input_shape, num_classes)
    set_weights(model, read_weights(weights))
    return model

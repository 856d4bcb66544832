"""PyTorch models for ``TorchTrainer``: the built-in 2NN and CNN, or a user's factory.

The built-ins are the same networks as the Keras ones (``training/models.py``,
McMahan et al. 2017), layer for layer and unit for unit:

* ``mlp``: the "2NN": flatten, Linear 200 ReLU, Linear 200 ReLU, Linear ``num_classes``.
* ``cnn``: Conv 5x5x32 ReLU, MaxPool 2x2, Conv 5x5x64 ReLU, MaxPool 2x2, Linear 512 ReLU,
  Linear ``num_classes``; "same" padding for the convolutions and pools rounding up
  (``ceil_mode``), as Keras' ``padding="same"`` does, so 8x8 digits give 2x2x64 features.

They output logits (the trainer's loss is ``cross_entropy``, which applies the
softmax), start from Glorot-uniform kernels and zero biases as Keras' defaults do,
drawn from a generator seeded by ``seed``. Weight shapes follow PyTorch's layout
(``Linear`` is ``(out, in)``, ``Conv2d`` ``(out, in, kh, kw)``) and names are the
``state_dict`` keys (``fc1.weight``), so a Keras and a PyTorch client cannot share
one federation: the server refuses updates whose names differ from its model's.

Samples reach every model channels-first, PyTorch's convention: a dataset whose
samples are ``(height, width, channels)`` (as the built-in image datasets are) is
given to the model as ``(channels, height, width)``; see ``torch_input_shape``.

A user's model: ``model="MODULE:FACTORY"`` names a callable, importable in the
client's environment, called as ``factory(input_shape, num_classes, seed)`` with
the channels-first sample shape (a tuple of ints), the class count and the
federation's seed (``torch.manual_seed(seed)`` is also set just before, so a
factory that relies on PyTorch's default initialisation is seeded too). It returns
a ``torch.nn.Module`` mapping a float32 batch ``(n, *input_shape)`` to logits
``(n, num_classes)``. This module is one of the two of the package that import torch.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

BUILTIN_MODELS = ("mlp", "cnn")


def torch_input_shape(sample_shape: Sequence[int]) -> tuple[int, ...]:
    """The shape a torch model sees for dataset samples of ``sample_shape``.

    ``(height, width, channels)`` becomes ``(channels, height, width)``; any other rank
    is unchanged (flat features, or ``(height, width)`` grayscale without a channel axis).
    """
    shape = tuple(int(d) for d in sample_shape)
    if len(shape) == 3:
        return (shape[2], shape[0], shape[1])
    return shape


def _glorot(module: nn.Module, generator: torch.Generator) -> None:
    """Keras' defaults: Glorot-uniform kernels, zero biases."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear | nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class MLP(nn.Module):
    """The 2NN: two hidden layers of 200 ReLU units.

    Args:
        input_shape: one sample's shape (flattened).
        num_classes: output logits.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        features = math.prod(input_shape)
        self.fc1 = nn.Linear(features, 200)
        self.fc2 = nn.Linear(200, 200)
        self.output = nn.Linear(200, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the flattened batch ``x``."""
        x = torch.flatten(x, 1)
        return self.output(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class CNN(nn.Module):
    """Two 5x5 convolutions with 2x2 max pooling, a 512-unit layer and the output layer.

    Args:
        input_shape: ``(channels, height, width)``, or ``(height, width)`` for one channel.
        num_classes: output logits.

    Raises:
        ValueError: the input is not an image.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        shape = tuple(input_shape)
        if len(shape) not in (2, 3):
            raise ValueError(
                f"model 'cnn' needs image input ([channels,] height, width), got shape {shape}; "
                "use --model mlp for flat features"
            )
        self.add_channel = len(shape) == 2
        channels, height, width = (1, *shape) if self.add_channel else shape
        self.conv1 = nn.Conv2d(channels, 32, 5, padding="same")
        self.conv2 = nn.Conv2d(32, 64, 5, padding="same")
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        # Each pool halves a side, rounding up (Keras' "same" pooling).
        pooled = math.ceil(math.ceil(height / 2) / 2) * math.ceil(math.ceil(width / 2) / 2)
        self.fc1 = nn.Linear(64 * pooled, 512)
        self.output = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the image batch ``x``."""
        if self.add_channel:
            x = x.unsqueeze(1)
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.output(torch.relu(self.fc1(torch.flatten(x, 1))))


def is_factory_spec(name: str) -> bool:
    """Whether ``name`` is a user's ``MODULE:FACTORY`` rather than a built-in model."""
    return ":" in name


def build_torch_model(
    name: str, input_shape: Sequence[int], num_classes: int, seed: int = 0
) -> nn.Module:
    """Build ``mlp``, ``cnn`` or a user's ``MODULE:FACTORY`` model with seeded weights.

    Args:
        name: ``mlp``, ``cnn`` or ``MODULE:FACTORY`` (see the module docstring).
        input_shape: one sample's channels-first shape, e.g. ``(1, 8, 8)``.
        num_classes: output logits.
        seed: initialisation seed: the same seed gives identical weights.

    Raises:
        ValueError: unknown name, unusable shape, or a factory that cannot be imported,
            fails, or does not return a ``torch.nn.Module``.
    """
    shape = tuple(int(d) for d in input_shape)
    if is_factory_spec(name):
        return _user_model(name.strip(), shape, num_classes, seed)
    key = name.strip().lower()
    if key not in BUILTIN_MODELS:
        raise ValueError(
            f"unknown model {name!r} for the torch trainer; valid: mlp, cnn, or MODULE:FACTORY "
            "returning a torch.nn.Module"
        )
    if num_classes < 2:
        raise ValueError(f"model {name!r} needs at least 2 classes, got {num_classes}")
    model: nn.Module = MLP(shape, num_classes) if key == "mlp" else CNN(shape, num_classes)
    _glorot(model, torch.Generator().manual_seed(seed))
    return model


def _user_model(spec: str, shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"model {spec!r} is not MODULE:FACTORY, e.g. my_package.models:build")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except ImportError as exc:
        raise ValueError(
            f"model {spec!r}: cannot import module {module_name!r}: {exc} "
            "(is the package installed in this image or on PYTHONPATH?)"
        ) from exc
    except AttributeError:
        raise ValueError(
            f"model {spec!r}: module {module_name!r} has no attribute {attribute!r}"
        ) from None
    if not callable(target):
        raise ValueError(
            f"model {spec!r}: {attribute!r} is a {type(target).__name__}, not a callable factory"
        )
    torch.manual_seed(seed)
    try:
        model = target(shape, num_classes, seed)
    except Exception as exc:  # the user's code: any failure is a bad model
        raise ValueError(
            f"model {spec!r}: factory(input_shape={shape}, num_classes={num_classes}, "
            f"seed={seed}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model

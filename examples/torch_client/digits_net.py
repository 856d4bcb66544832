"""A user's own PyTorch model for fl-kubeflow's torch trainer.

Run a federation with it (from the repository root)::

    PYTHONPATH=examples/torch_client fl-kubeflow local --trainer torch \\
        --model digits_net:build --rounds 5

The trainer calls ``build(input_shape, num_classes, seed)`` once per client, with
the samples' channels-first shape (``(1, 8, 8)`` for digits), and trains what it
returns: any ``torch.nn.Module`` that maps a float32 batch ``(n, *input_shape)`` to
logits ``(n, num_classes)``. Its ``state_dict`` is what travels, so buffers such as
BatchNorm's running statistics are averaged with the weights.
"""

from __future__ import annotations

import torch
from torch import nn


class DigitsNet(nn.Module):
    """Conv 3x3x16 with batch norm, 2x2 pooling, dropout and a linear classifier.

    Args:
        input_shape: ``(channels, height, width)``.
        num_classes: output logits.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(16 * (height // 2) * (width // 2), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the image batch ``x``."""
        return self.classifier(self.dropout(torch.flatten(self.features(x), 1)))


def build(input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """The factory ``--model digits_net:build`` names.

    Args:
        input_shape: one sample's channels-first shape, e.g. ``(1, 8, 8)``.
        num_classes: how many classes the dataset has.
        seed: the federation's seed (the trainer has already called
            ``torch.manual_seed(seed)``, so PyTorch's default initialisation is seeded).

    Returns:
        The model to train.
    """
    if len(input_shape) != 3:
        raise ValueError(
            f"digits_net needs image samples (channels, height, width), got {input_shape}"
        )
    return DigitsNet(input_shape, num_classes)

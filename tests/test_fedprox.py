"""FedProx's proximal term in KerasTrainer, against a numpy reference of the same training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fl_kubeflow import strategies
from fl_kubeflow.training.datasets import ClientData

pytestmark = pytest.mark.slow

keras = pytest.importorskip("keras")

from fl_kubeflow.training.keras_trainer import (  # noqa: E402
    KerasTrainer,
    TrainerOptions,
    proximal_mu,
)

N, FEATURES, CLASSES, LR, EPOCHS = 12, 4, 3, 0.5, 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[KerasTrainer, ClientData]:
    """Softmax regression (one Dense layer) on 12 random points: gradients fit on paper."""
    folder: Path = tmp_path_factory.mktemp("fedprox")
    model = keras.Sequential(
        [
            keras.Input(shape=(FEATURES,), name="input"),
            keras.layers.Dense(CLASSES, activation="softmax", name="out"),
        ],
        name="softmax_regression",
    )
    path = folder / "tiny.keras"
    model.save(path)
    rng = np.random.default_rng(0)
    data = ClientData(
        x_train=rng.standard_normal((N, FEATURES)).astype(np.float32),
        y_train=rng.integers(0, CLASSES, N).astype(np.int64),
        x_test=rng.standard_normal((4, FEATURES)).astype(np.float32),
        y_test=rng.integers(0, CLASSES, 4).astype(np.int64),
        num_classes=CLASSES,
        input_shape=(FEATURES,),
        description="12 random points",
    )
    # Full-batch plain SGD: each epoch is one step on the mean loss, so the batch order
    # (the trainer's seeded shuffle) does not matter and the reference needs no copy of it.
    options = TrainerOptions(
        model=str(path),
        optimizer="sgd",
        momentum=0.0,
        learning_rate=LR,
        batch_size=N,
        local_epochs=EPOCHS,
    )
    return KerasTrainer(options, data=data), data


def reference_fedprox(
    kernel: np.ndarray, bias: np.ndarray, data: ClientData, mu: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gradient descent on mean cross-entropy + mu/2 ||w - w0||^2, written out by hand.

    For softmax regression p = softmax(x W + b), d(mean CE)/dW = x^T (p - onehot(y)) / n
    and d/db = mean(p - onehot(y)); the proximal term adds mu (W - W0) and mu (b - b0).
    """
    x = data.x_train.astype(np.float64)
    onehot = np.eye(CLASSES)[data.y_train]
    w0, b0 = kernel.astype(np.float64), bias.astype(np.float64)
    w, b = w0.copy(), b0.copy()
    for _ in range(EPOCHS):
        logits = x @ w + b
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        grad_w = x.T @ (p - onehot) / N + mu * (w - w0)
        grad_b = (p - onehot).mean(axis=0) + mu * (b - b0)
        w, b = w - LR * grad_w, b - LR * grad_b
    return w, b


def split(weights):
    kernel = next(v for k, v in weights.items() if k.endswith("kernel"))
    bias = next(v for k, v in weights.items() if k.endswith("bias"))
    return kernel, bias


@pytest.mark.parametrize("mu", [0.0, 0.7, 5.0])
def test_matches_the_reference(tiny, mu):
    trainer, data = tiny
    rng = np.random.default_rng(1)
    # A global model far from the data's optimum, so the proximal pull is visible.
    kernel = rng.standard_normal((FEATURES, CLASSES)).astype(np.float32)
    bias = rng.standard_normal(CLASSES).astype(np.float32)
    start = dict(zip(sorted(trainer.initial_weights()), [kernel, bias], strict=True))
    assert split(start)[0] is kernel
    result = trainer.fit(start, server_round=1, config={"proximal_mu": mu})
    got_w, got_b = split(result.weights)
    want_w, want_b = reference_fedprox(kernel, bias, data, mu)
    np.testing.assert_allclose(got_w, want_w, atol=2e-5)
    np.testing.assert_allclose(got_b, want_b, atol=2e-5)
    if mu > 0:
        # The proximal term is reported apart from the data loss.
        assert result.metrics["proximal_term"] > 0
        assert result.metrics["loss"] > 0 and 0 <= result.metrics["accuracy"] <= 1


def test_larger_mu_stays_closer_to_the_global_model(tiny):
    trainer, _ = tiny
    start = trainer.initial_weights()

    def moved(mu: float) -> float:
        out = trainer.fit(start, 1, {"proximal_mu": mu}).weights
        return sum(float(np.sum((out[k] - start[k]) ** 2)) for k in start)

    distances = [moved(mu) for mu in (0.0, 0.5, 2.0)]
    assert distances[0] > distances[1] > distances[2] > 0


def test_mu_from_the_strategy_config_and_bad_values():
    config = strategies.create("fedprox", proximal_mu=0.25).configure_fit(1)
    assert proximal_mu(config) == 0.25
    assert proximal_mu({}) == 0.0
    for bad in (-0.1, "x", float("nan"), True):
        with pytest.raises(ValueError, match="proximal_mu"):
            proximal_mu({"proximal_mu": bad})

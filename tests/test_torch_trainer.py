"""TorchTrainer: real PyTorch training on small digits data, and its errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fl_kubeflow import wire
from fl_kubeflow.client.trainer import Trainer
from fl_kubeflow.training.datasets import ClientData, load_client_data
from fl_kubeflow.training.factory import build_trainer
from fl_kubeflow.training.options import TrainerOptions

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from fl_kubeflow.training.torch_models import build_torch_model  # noqa: E402
from fl_kubeflow.training.torch_trainer import TorchTrainer  # noqa: E402

HERE = "tests.test_torch_trainer"
MLP_SHAPES = [(200, 64), (200,), (200, 200), (200,), (10, 200), (10,)]


@pytest.fixture(scope="module")
def digits() -> ClientData:
    """One of three iid clients: ~480 train / 120 test samples."""
    return load_client_data("digits", client_id=0, num_clients=3, seed=0)


def assert_same(a: wire.Weights, b: wire.Weights) -> None:
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# Factories a user could write, importable as tests.test_torch_trainer:NAME.


def linear(input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Softmax regression, with PyTorch's default (seeded by the trainer) initialisation."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes))


def batchnorm_net(input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Has buffers (running stats, an int64 batch counter) besides parameters."""
    features = int(np.prod(input_shape))
    return nn.Sequential(nn.Flatten(), nn.BatchNorm1d(features), nn.Linear(features, num_classes))


def wrong_outputs(input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 3))


def for_mnist(input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, num_classes))


def not_a_module(input_shape: tuple[int, ...], num_classes: int, seed: int) -> object:
    return "a string"


def broken(input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    raise RuntimeError("no GPU here")


NOT_CALLABLE = 42


def test_built_by_the_factory_and_is_a_trainer(digits: ClientData) -> None:
    trainer = build_trainer("torch", TrainerOptions(client_id=1, num_clients=3))
    assert isinstance(trainer, TorchTrainer) and isinstance(trainer, Trainer)
    assert "client 1 of 3" in trainer.data.description
    assert trainer.num_parameters == 64 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10


def test_mlp_is_the_2nn_in_state_dict_layout(digits: ClientData) -> None:
    weights = TorchTrainer(TrainerOptions(model="mlp"), data=digits).initial_weights()
    assert list(weights) == [
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
        "output.weight",
        "output.bias",
    ]
    assert [w.shape for w in weights.values()] == MLP_SHAPES
    assert all(w.dtype == np.float32 for w in weights.values())


def test_cnn_shapes_on_8x8(digits: ClientData) -> None:
    weights = TorchTrainer(TrainerOptions(model="cnn"), data=digits).initial_weights()
    # The Keras CNN's layers in PyTorch's layout: (8, 8) -> pool -> 4x4 -> pool -> 2x2x64.
    assert [w.shape for w in weights.values()] == [
        (32, 1, 5, 5),
        (32,),
        (64, 32, 5, 5),
        (64,),
        (512, 256),
        (512,),
        (10, 512),
        (10,),
    ]


def test_cnn_rounds_odd_sides_up_and_needs_images() -> None:
    model = build_torch_model("cnn", (3, 7, 5), 4)  # 7x5 -> 4x3 -> 2x2
    assert model.fc1.in_features == 64 * 2 * 2
    assert model(torch.zeros(2, 3, 7, 5)).shape == (2, 4)
    assert build_torch_model("cnn", (6, 6), 2)(torch.zeros(1, 6, 6)).shape == (1, 2)
    with pytest.raises(ValueError, match="needs image input"):
        build_torch_model("cnn", (64,), 10)


@pytest.mark.parametrize("model", ["mlp", "cnn", f"{HERE}:linear"])
def test_initial_weights_deterministic_by_seed(digits: ClientData, model: str) -> None:
    a = TorchTrainer(TrainerOptions(model=model, seed=3), data=digits).initial_weights()
    b = TorchTrainer(TrainerOptions(model=model, seed=3), data=digits).initial_weights()
    c = TorchTrainer(TrainerOptions(model=model, seed=4), data=digits).initial_weights()
    assert_same(a, b)
    kernels = [name for name in a if name.endswith("weight")]
    assert kernels and all(not np.array_equal(a[k], c[k]) for k in kernels)
    if model != f"{HERE}:linear":  # the built-ins start with zero biases, as Keras' do
        assert all(not a[n].any() for n in a if n.endswith("bias"))


@pytest.mark.slow
def test_fit_improves_accuracy_and_replays_a_round(digits: ClientData) -> None:
    trainer = TorchTrainer(TrainerOptions(local_epochs=2), data=digits)
    start = trainer.initial_weights()
    before = trainer.evaluate(start, 0)
    result = trainer.fit(start, 1, {"proximal_mu": 0.0, "unknown": "ignored"})
    after = trainer.evaluate(result.weights, 1)
    assert before is not None and after is not None
    assert before.num_examples == after.num_examples == len(digits.x_test)
    assert after.metrics["accuracy"] > before.metrics["accuracy"] + 0.4
    assert after.metrics["accuracy"] > 0.8
    assert after.metrics["loss"] < before.metrics["loss"]
    assert set(result.metrics) == {"loss", "accuracy"}
    assert result.metrics["accuracy"] > 0.6
    assert result.num_examples == 2 * len(digits.x_train)
    # fit must not have modified the caller's arrays
    assert_same(start, trainer.initial_weights())
    # Same global weights, same round: no momentum carried over, same shuffles.
    assert_same(result.weights, trainer.fit(start, 1, {}).weights)
    other_round = trainer.fit(start, 2, {}).weights  # another round shuffles differently
    assert not np.array_equal(result.weights["fc1.weight"], other_round["fc1.weight"])


@pytest.mark.slow
def test_adam_and_cnn_train(digits: ClientData) -> None:
    for options in (
        TrainerOptions(optimizer="adam", learning_rate=0.001, local_epochs=2),
        TrainerOptions(model="cnn", local_epochs=2, learning_rate=0.02),
    ):
        trainer = TorchTrainer(options, data=digits)
        result = trainer.fit(trainer.initial_weights(), 1, {})
        evaluated = trainer.evaluate(result.weights, 1)
        assert evaluated is not None and evaluated.metrics["accuracy"] > 0.6, options


def test_weights_travel_as_a_state_dict(tmp_path: Path, digits: ClientData) -> None:
    from safetensors.torch import load_file

    trainer = TorchTrainer(TrainerOptions(model=f"{HERE}:batchnorm_net"), data=digits)
    trained = trainer.fit(trainer.initial_weights(), 1, {}).weights
    assert trained["1.num_batches_tracked"].dtype == np.int64
    assert int(trained["1.num_batches_tracked"]) == -(-len(digits.x_train) // 16) * 2
    # As the server writes weights.safetensors; a user loads it into their own model.
    path = tmp_path / "weights.safetensors"
    path.write_bytes(wire.encode(trained))
    model = batchnorm_net((1, 8, 8), 10, seed=0)
    model.load_state_dict(load_file(path))  # strict: every name and shape matches
    model.eval()
    x = torch.from_numpy(digits.x_test.transpose(0, 3, 1, 2).copy())
    accuracy = float((model(x).argmax(1).numpy() == digits.y_test).mean())
    evaluated = trainer.evaluate(wire.decode(path.read_bytes()), 1)
    assert evaluated is not None
    assert accuracy == pytest.approx(evaluated.metrics["accuracy"])


def test_load_weights_checks_names_and_shapes(digits: ClientData) -> None:
    trainer = TorchTrainer(TrainerOptions(), data=digits)
    weights = trainer.initial_weights()
    missing = dict(weights)
    del missing["fc1.bias"]
    with pytest.raises(ValueError, match=r"missing \['fc1.bias'\]"):
        trainer.fit(missing, 1, {})
    renamed = {("x" + k if k == "output.bias" else k): v for k, v in weights.items()}
    with pytest.raises(ValueError, match=r"unexpected \['xoutput.bias'\]"):
        trainer.evaluate(renamed, 1)
    wrong_shape = dict(weights, **{"output.weight": np.zeros((9, 200), np.float32)})
    with pytest.raises(ValueError, match=r"'output.weight'.*\(9, 200\).*\(10, 200\)"):
        trainer.fit(wrong_shape, 1, {})
    with pytest.raises(ValueError, match="proximal_mu"):
        trainer.fit(weights, 1, {"proximal_mu": -1})
    # Read-only arrays (as decoded from a read-only buffer) are accepted.
    frozen = {k: v.copy() for k, v in weights.items()}
    for v in frozen.values():
        v.flags.writeable = False
    assert trainer.evaluate(frozen, 0) is not None


def test_evaluate_none_without_test_data() -> None:
    data = load_client_data("digits", 0, 4, test_fraction=0.0)
    trainer = TorchTrainer(TrainerOptions(), data=data)
    assert trainer.evaluate(trainer.initial_weights(), 0) is None


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("resnet", r"unknown model 'resnet' for the torch trainer"),
        ("no_such_module_xyz:build", r"cannot import module 'no_such_module_xyz'.*PYTHONPATH"),
        (f"{HERE}:missing", rf"module '{HERE}' has no attribute 'missing'"),
        (f"{HERE}:NOT_CALLABLE", r"'NOT_CALLABLE' is a int, not a callable factory"),
        (f"{HERE}:not_a_module", r"returned a str, not a torch.nn.Module"),
        (
            f"{HERE}:broken",
            r"factory\(input_shape=\(1, 8, 8\), num_classes=10, seed=0\) "
            r"failed: RuntimeError: no GPU here",
        ),
        (
            f"{HERE}:wrong_outputs",
            r"outputs \(2, 3\) for a batch of 2 but dataset 'digits' has "
            r"10 classes",
        ),
        (f"{HERE}:for_mnist", r"cannot take dataset 'digits''s samples of shape \(1, 8, 8\)"),
    ],
)
def test_bad_models_fail_at_construction_naming_the_problem(
    digits: ClientData, model: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        TorchTrainer(TrainerOptions(model=model), data=digits)
    assert model in str(info.value)


N, FEATURES, CLASSES, LR, EPOCHS = 12, 4, 3, 0.5, 3


def reference_prox_sgd(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, mu: float
) -> tuple[np.ndarray, np.ndarray]:
    """Full-batch SGD on softmax regression plus mu/2 ||w - w0||^2, gradients by hand."""
    w0, b0 = w.copy(), b.copy()
    onehot = np.eye(CLASSES)[y]
    for _ in range(EPOCHS):
        logits = x @ w.T + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad_logits = (p - onehot) / len(x)
        w = w - LR * (grad_logits.T @ x + mu * (w - w0))
        b = b - LR * (grad_logits.sum(0) + mu * (b - b0))
    return w, b


@pytest.mark.parametrize("mu", [0.0, 0.7])
def test_fedprox_matches_a_numpy_reference(mu: float) -> None:
    rng = np.random.default_rng(0)
    data = ClientData(
        x_train=rng.normal(size=(N, FEATURES)).astype(np.float32),
        y_train=rng.integers(0, CLASSES, N),
        x_test=np.zeros((0, FEATURES), np.float32),
        y_test=np.zeros((0,), np.int64),
        num_classes=CLASSES,
        input_shape=(FEATURES,),
        description="12 random points",
    )
    options = TrainerOptions(
        model=f"{HERE}:linear",
        local_epochs=EPOCHS,
        batch_size=N,  # one full batch per epoch: the order of samples does not matter
        learning_rate=LR,
        momentum=0.0,
    )
    trainer = TorchTrainer(options, data=data)
    start = trainer.initial_weights()
    result = trainer.fit(start, 1, {"proximal_mu": mu} if mu else {})
    w, b = reference_prox_sgd(
        start["1.weight"].astype(np.float64),
        start["1.bias"].astype(np.float64),
        data.x_train.astype(np.float64),
        data.y_train,
        mu,
    )
    np.testing.assert_allclose(result.weights["1.weight"], w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.weights["1.bias"], b, rtol=1e-4, atol=1e-5)
    assert ("proximal_term" in result.metrics) == (mu > 0)


def test_without_torch_the_factory_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"  # as if PyTorch were not installed
        "from fl_kubeflow.training.factory import build_trainer, TrainerFactoryError\n"
        "from fl_kubeflow.training.options import TrainerOptions\n"
        "try:\n"
        "    build_trainer('torch', TrainerOptions())\n"
        "except TrainerFactoryError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "trainer 'torch'" in done.stdout
    assert "pip install 'fl-kubeflow[torch]'" in done.stdout

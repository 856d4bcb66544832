"""KerasTrainer and export: real Keras training on small digits data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fl_kubeflow import wire
from fl_kubeflow.client.trainer import Trainer
from fl_kubeflow.training.datasets import ClientData, load_client_data

pytestmark = pytest.mark.slow

keras = pytest.importorskip("keras")

from fl_kubeflow.training import export  # noqa: E402
from fl_kubeflow.training.keras_trainer import KerasTrainer, TrainerOptions  # noqa: E402


@pytest.fixture(scope="module")
def digits() -> ClientData:
    """One of three iid clients: ~480 train / 120 test samples."""
    return load_client_data("digits", client_id=0, num_clients=3, seed=0)


def small_data(n_train: int, n_test: int = 20, seed: int = 0) -> ClientData:
    full = load_client_data("digits", 0, 1, seed=seed)
    return ClientData(
        x_train=full.x_train[:n_train],
        y_train=full.y_train[:n_train],
        x_test=full.x_test[:n_test],
        y_test=full.y_test[:n_test],
        num_classes=10,
        input_shape=(8, 8, 1),
        description=f"{n_train} digits",
    )


def assert_same(a: wire.Weights, b: wire.Weights) -> None:
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_implements_trainer_protocol(digits: ClientData) -> None:
    assert isinstance(KerasTrainer(TrainerOptions(), data=digits), Trainer)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_initial_weights_deterministic_by_seed(digits: ClientData, model: str) -> None:
    a = KerasTrainer(TrainerOptions(model=model, seed=3), data=digits).initial_weights()
    b = KerasTrainer(TrainerOptions(model=model, seed=3), data=digits).initial_weights()
    c = KerasTrainer(TrainerOptions(model=model, seed=4), data=digits).initial_weights()
    assert_same(a, b)
    kernels = [name for name in a if name.endswith("kernel")]
    assert kernels and all(not np.array_equal(a[k], c[k]) for k in kernels)
    # Names sort into model order, and say which variable they are.
    assert list(a) == sorted(a)
    assert next(iter(a)) == f"0000:{model}/" + ("fc1" if model == "mlp" else "conv1") + "/kernel"


def test_mlp_is_the_2nn(digits: ClientData) -> None:
    weights = KerasTrainer(TrainerOptions(model="mlp"), data=digits).initial_weights()
    shapes = [w.shape for w in weights.values()]
    assert shapes == [(64, 200), (200,), (200, 200), (200,), (200, 10), (10,)]


def test_cnn_shapes_on_8x8(digits: ClientData) -> None:
    trainer = KerasTrainer(TrainerOptions(model="cnn"), data=digits)
    shapes = [w.shape for w in trainer.initial_weights().values()]
    # 8x8 -> pool -> 4x4 -> pool -> 2x2x64 = 256 features into the 512 dense layer.
    assert shapes == [
        (5, 5, 1, 32),
        (32,),
        (5, 5, 32, 64),
        (64,),
        (256, 512),
        (512,),
        (512, 10),
        (10,),
    ]


def test_fit_improves_accuracy(digits: ClientData) -> None:
    trainer = KerasTrainer(TrainerOptions(local_epochs=3), data=digits)
    start = trainer.initial_weights()
    before = trainer.evaluate(start, 0)
    result = trainer.fit(start, 1, {})
    after = trainer.evaluate(result.weights, 1)
    assert before is not None and after is not None
    assert before.num_examples == after.num_examples == len(digits.x_test)
    assert after.metrics["accuracy"] > before.metrics["accuracy"] + 0.4
    assert after.metrics["accuracy"] > 0.75
    assert after.metrics["loss"] < before.metrics["loss"]
    assert set(result.metrics) == {"loss", "accuracy"}
    assert result.metrics["accuracy"] > 0.6
    # fit must not have modified the caller's arrays
    assert_same(start, trainer.initial_weights())


def test_num_examples_exact_and_optimizer_reset_per_round() -> None:
    trainer = KerasTrainer(TrainerOptions(local_epochs=2, batch_size=32), data=small_data(101))
    weights = trainer.initial_weights()
    first = trainer.fit(weights, 1, {"proximal_mu": 0.0, "unknown": "ignored"})
    assert first.num_examples == 202
    # ceil(101 / 32) = 4 steps an epoch, the partial batch included; the iteration
    # counter starts from zero each round because the optimizer state is reset.
    assert int(trainer.model.optimizer.iterations.numpy()) == 8
    second = trainer.fit(weights, 1, {})
    assert int(trainer.model.optimizer.iterations.numpy()) == 8
    # Same global weights, same round: no momentum carried over, same shuffles.
    assert_same(first.weights, second.weights)
    third = trainer.fit(weights, 2, {})  # another round shuffles differently
    assert not np.array_equal(
        first.weights["0000:mlp/fc1/kernel"], third.weights["0000:mlp/fc1/kernel"]
    )


def test_adam_trains(digits: ClientData) -> None:
    options = TrainerOptions(optimizer="adam", learning_rate=0.001, local_epochs=2)
    trainer = KerasTrainer(options, data=digits)
    result = trainer.fit(trainer.initial_weights(), 1, {})
    evaluated = trainer.evaluate(result.weights, 1)
    assert evaluated is not None and evaluated.metrics["accuracy"] > 0.6


def test_weights_round_trip_through_wire(digits: ClientData) -> None:
    trainer = KerasTrainer(TrainerOptions(), data=digits)
    trained = trainer.fit(trainer.initial_weights(), 1, {}).weights
    decoded = wire.decode(wire.encode(trained))
    assert wire.describe(decoded) == wire.describe(trained)
    other = KerasTrainer(TrainerOptions(seed=9), data=digits)  # different initial weights
    direct = trainer.evaluate(trained, 1)
    via_wire = other.evaluate(decoded, 1)
    assert direct is not None and via_wire is not None
    assert via_wire.metrics == pytest.approx(direct.metrics, rel=1e-6)
    from fl_kubeflow.training.models import get_weights

    assert_same(dict(sorted(get_weights(other.model).items())), dict(sorted(trained.items())))


def test_set_weights_checks_names_and_shapes(digits: ClientData) -> None:
    trainer = KerasTrainer(TrainerOptions(), data=digits)
    weights = trainer.initial_weights()
    missing = dict(weights)
    del missing["0001:mlp/fc1/bias"]
    with pytest.raises(ValueError, match=r"missing \['0001:mlp/fc1/bias'\]"):
        trainer.fit(missing, 1, {})
    renamed = {("x" + k if k.startswith("0005") else k): v for k, v in weights.items()}
    with pytest.raises(ValueError, match="unexpected"):
        trainer.evaluate(renamed, 1)
    wrong_shape = dict(weights, **{"0004:mlp/output/kernel": np.zeros((200, 9), np.float32)})
    with pytest.raises(ValueError, match=r"0004:mlp/output/kernel.*\(200, 9\).*\(200, 10\)"):
        trainer.fit(wrong_shape, 1, {})


def test_evaluate_none_without_test_data() -> None:
    data = load_client_data("digits", 0, 4, test_fraction=0.0)
    trainer = KerasTrainer(TrainerOptions(), data=data)
    assert trainer.evaluate(trainer.initial_weights(), 0) is None


def test_loads_data_from_options() -> None:
    trainer = KerasTrainer(TrainerOptions(client_id=2, num_clients=4, partition="dirichlet:1"))
    assert "client 2 of 4" in trainer.data.description
    assert trainer.num_parameters == 64 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10


def save_model(path: Path, input_shape: tuple[int, ...], units: int, activation: str) -> str:
    inputs = keras.Input(shape=input_shape)
    hidden = keras.layers.Dense(32, activation="relu")(keras.layers.Flatten()(inputs))
    outputs = keras.layers.Dense(units, activation=activation)(hidden)
    keras.Model(inputs, outputs, name="user").save(path)
    return str(path)


def test_user_keras_model_with_logits_trains(tmp_path: Path, digits: ClientData) -> None:
    path = save_model(tmp_path / "user.keras", (8, 8, 1), 10, "linear")
    trainer = KerasTrainer(TrainerOptions(model=path, local_epochs=3), data=digits)
    initial = trainer.initial_weights()
    # A user's model starts from the file's weights, whatever the seed.
    from_file = keras.models.load_model(path, compile=False).get_weights()
    assert len(initial) == len(from_file)
    for ours, theirs in zip(initial.values(), from_file, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    result = trainer.fit(initial, 1, {})
    evaluated = trainer.evaluate(result.weights, 1)
    # With the loss on probabilities instead of logits this would not learn.
    assert evaluated is not None and evaluated.metrics["accuracy"] > 0.7


def test_user_model_with_wrong_input_fails_at_construction(
    tmp_path: Path, digits: ClientData
) -> None:
    path = save_model(tmp_path / "mnist.keras", (28, 28, 1), 10, "softmax")
    with pytest.raises(ValueError) as info:
        KerasTrainer(TrainerOptions(model=path), data=digits)
    assert "(28, 28, 1)" in str(info.value) and "(8, 8, 1)" in str(info.value)


def test_user_model_with_wrong_classes_fails_at_construction(
    tmp_path: Path, digits: ClientData
) -> None:
    path = save_model(tmp_path / "five.keras", (8, 8, 1), 5, "softmax")
    with pytest.raises(ValueError, match=r"\(5,\) \(5 classes\).*10 classes"):
        KerasTrainer(TrainerOptions(model=path), data=digits)


def test_cnn_on_flat_features_fails_at_construction() -> None:
    flat = ClientData(
        x_train=np.zeros((4, 64), np.float32),
        y_train=np.array([0, 1, 2, 3]),
        x_test=np.zeros((0, 64), np.float32),
        y_test=np.zeros(0, np.int64),
        num_classes=4,
        input_shape=(64,),
        description="flat",
    )
    with pytest.raises(ValueError, match=r"cnn.*\(64,\)"):
        KerasTrainer(TrainerOptions(model="cnn"), data=flat)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (TrainerOptions(local_epochs=0), "local_epochs"),
        (TrainerOptions(batch_size=0), "batch_size"),
        (TrainerOptions(learning_rate=-1), "learning_rate"),
        (TrainerOptions(optimizer="rmsprop"), "optimizer"),
        (TrainerOptions(momentum=1.0), "momentum"),
        (TrainerOptions(model="resnet"), "unknown model 'resnet'"),
        (TrainerOptions(model="/nonexistent/m.keras"), "does not exist"),
    ],
)
def test_bad_options_rejected(digits: ClientData, options: TrainerOptions, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        KerasTrainer(options, data=digits)


# ----------------------------------------------------------------- export


def test_export_keras_loads_and_predicts(tmp_path: Path, digits: ClientData) -> None:
    trainer = KerasTrainer(TrainerOptions(local_epochs=2), data=digits)
    weights = trainer.fit(trainer.initial_weights(), 1, {}).weights
    path = export.export_keras(weights, "mlp", (8, 8, 1), 10, tmp_path / "out" / "model.keras")
    loaded = keras.models.load_model(path)
    predictions = loaded.predict(digits.x_test, verbose=0)
    assert predictions.shape == (len(digits.x_test), 10)
    expected = trainer.model.predict(digits.x_test, verbose=0)  # trainer holds `weights`
    np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-6)
    accuracy = loaded.evaluate(digits.x_test, digits.y_test, verbose=0, return_dict=True)
    assert accuracy["accuracy"] > 0.7  # saved compiled: evaluate works too


def test_export_cli(tmp_path: Path, digits: ClientData, capsys: pytest.CaptureFixture) -> None:
    trainer = KerasTrainer(TrainerOptions(model="cnn"), data=digits)
    weights_file = tmp_path / "final.safetensors"
    weights_file.write_bytes(wire.encode(trainer.initial_weights()))
    assert set(export.read_weights(weights_file)) == set(trainer.initial_weights())
    output = tmp_path / "model.keras"
    code = export.main(
        [
            "--weights",
            str(weights_file),
            "--model",
            "cnn",
            "--dataset",
            "digits",
            "--output",
            str(output),
        ]
    )
    assert code == 0 and output.is_file()
    loaded = keras.models.load_model(output)
    assert loaded.input_shape == (None, 8, 8, 1) and loaded.output_shape == (None, 10)
    # Wrong model for these weights: a clear failure, not a traceback.
    code = export.main(
        [
            "--weights",
            str(weights_file),
            "--model",
            "mlp",
            "--input-shape",
            "8,8,1",
            "--num-classes",
            "10",
            "--output",
            str(tmp_path / "x.keras"),
        ]
    )
    assert code == 1
    assert "weights do not match the model" in capsys.readouterr().err


def _own_model(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    inputs = keras.Input(input_shape, name="pixels")
    x = keras.layers.Flatten(name="flat")(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="out")(x), name="own")


def test_own_model_builder_is_seeded_compiled_and_checked() -> None:
    data = small_data(64)
    seen: list[tuple] = []

    def builder(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
        seen.append((input_shape, num_classes))
        return _own_model(input_shape, num_classes)

    trainer = KerasTrainer(TrainerOptions(seed=5), data=data, model=builder)
    again = KerasTrainer(TrainerOptions(seed=5), data=data, model=builder)
    assert seen == [((8, 8, 1), 10)] * 2
    assert_same(trainer.initial_weights(), again.initial_weights())
    assert sorted(trainer.initial_weights()) == ["0000:out/kernel", "0001:out/bias"]
    # Uncompiled: compiled as the built-ins are, so fit reports loss and accuracy.
    result = trainer.fit(trainer.initial_weights(), 1, {})
    assert set(result.metrics) == {"loss", "accuracy"}


def not_a_model(input_shape: tuple[int, ...], num_classes: int) -> str:
    return "no model"


def too_many_classes(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    return _own_model(input_shape, num_classes + 1)


def test_own_model_builder_errors_name_the_builder() -> None:
    data = small_data(16)
    with pytest.raises(ValueError, match=r"model not_a_model\(\) returned a str, not a keras"):
        KerasTrainer(TrainerOptions(), data=data, model=not_a_model)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"model too_many_classes\(\) outputs shape \(11,\)"):
        KerasTrainer(TrainerOptions(), data=data, model=too_many_classes)

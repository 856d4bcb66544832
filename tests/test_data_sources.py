"""Client data where users keep it: CSV/Parquet tables and npz files on a real S3 server
(SeaweedFS on loopback), over http on a loopback server, and per-client location lists;
bad inputs fail with errors naming the location and the problem."""

from __future__ import annotations

import functools
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fl_kubeflow.training.datasets import (
    DatasetError,
    client_dataset,
    load_client_data,
    load_trainer_data,
)
from fl_kubeflow.training.options import TrainerOptions
from fl_kubeflow.training.tables import TableColumns
from tests.fl_processes import run_cli
from tests.http_files import serve_directory
from tests.s3_server import s3_server  # noqa: F401  (pytest fixture)

FEATURES = [f"px{i}" for i in range(64)]


@functools.cache
def digits_frames(num_clients: int = 2) -> list[pd.DataFrame]:
    """scikit-learn's digits as one table per client (iid shards), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.target))
    frames = []
    for shard in np.array_split(order, num_clients):
        frame = pd.DataFrame(bunch.data[shard] / 16.0, columns=FEATURES)
        frame.insert(0, "label", bunch.target[shard])
        frames.append(frame)
    return frames


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    frame.to_parquet(sink, index=False)
    return sink.getvalue()


@pytest.fixture(scope="module")
def s3_tables(s3_server) -> list[str]:  # noqa: F811
    """Client 0's digits as CSV, client 1's as Parquet, in the bucket."""
    first, second = digits_frames()
    return [
        s3_server.put("digits/c0.csv", csv_bytes(first)),
        s3_server.put("digits/c1.parquet", parquet_bytes(second)),
    ]


@pytest.fixture
def s3_env(s3_server, monkeypatch):  # noqa: F811
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


def test_each_client_reads_its_own_table_from_s3(s3_env, s3_tables):
    for client_id, frame in enumerate(digits_frames()):
        data = load_trainer_data(
            TrainerOptions(client_id=client_id, num_clients=2, data_locations=tuple(s3_tables))
        )
        assert data.input_shape == (64,)
        assert data.num_classes == 10
        assert len(data.x_train) + len(data.x_test) == len(frame)
        assert len(data.x_test) == round(len(frame) * 0.2)
        assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
        assert s3_tables[client_id] in data.description
        # Rows keep their labels: each row's features are found in the table with that label.
        row = data.x_train[0]
        matches = frame[np.isclose(frame[FEATURES].to_numpy(), row).all(axis=1)]
        assert int(matches["label"].iloc[0]) == int(data.y_train[0])


def test_feature_columns_pick_and_order_the_features(s3_env, s3_server):  # noqa: F811
    frame = pd.DataFrame({"b": [1.0, 2.0, 3.0], "y": [0, 1, 1], "a": [10.0, 20.0, 30.0]})
    url = s3_server.put("cols/t.csv", csv_bytes(frame))
    data = load_client_data(
        f"csv:{url}", 0, 1, test_fraction=0.0, columns=TableColumns.parse("y", "a, b")
    )
    np.testing.assert_array_equal(data.x_train, [[10, 1], [20, 2], [30, 3]])
    np.testing.assert_array_equal(data.y_train, [0, 1, 1])


def test_npz_from_s3_with_a_client_id_template(s3_env, s3_server):  # noqa: F811
    sink = io.BytesIO()
    np.savez(sink, x_train=np.ones((5, 3), np.float32), y_train=np.arange(5) % 2)
    s3_server.put("npz/c1.npz", sink.getvalue())
    data = load_client_data(f"npz:s3://{s3_server.bucket}/npz/c{{client_id}}.npz", 1, 2)
    assert data.x_train.shape == (5, 3)


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("missing", "does not exist"),
        ("wrong-secret", "access denied"),
        ("no-label", "no label column 'label'"),
        ("text-feature", "must be numeric, these are not: {'colour'"),
        ("text-label", "must hold integer class ids"),
    ],
)
def test_bad_inputs_name_the_location_and_the_problem(
    s3_env,
    s3_server,  # noqa: F811
    monkeypatch,
    case,
    fragment,
):
    key = f"bad/{case}.csv"
    url = s3_server.url(key)
    numeric = {"px0": [0.1, 0.2], "px1": [0.3, 0.4]}
    if case == "wrong-secret":
        s3_server.put(key, csv_bytes(digits_frames()[0].head(4)))
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    elif case == "no-label":
        s3_server.put(key, csv_bytes(pd.DataFrame({"target": [0, 1], **numeric})))
    elif case == "text-feature":
        frame = pd.DataFrame({"label": [0, 1], "colour": ["red", "blue"], **numeric})
        s3_server.put(key, csv_bytes(frame))
    elif case == "text-label":
        s3_server.put(key, csv_bytes(pd.DataFrame({"label": ["cat", "dog"], **numeric})))
    with pytest.raises(DatasetError) as info:
        load_client_data(url, 0, 1, timeout=10)
    assert url in str(info.value)
    assert fragment in str(info.value)


def test_unreachable_endpoint_fails_within_the_timeout(monkeypatch):
    from tests.ports import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "something")
    with pytest.raises(DatasetError, match=r"could not read s3://b/c0\.csv from http://127"):
        load_client_data("s3://b/c0.csv", 0, 1, timeout=2)


@pytest.fixture(scope="module")
def http_root(tmp_path_factory) -> Iterator[str]:
    """A loopback http server over a folder holding client 0's digits as Parquet."""
    root = tmp_path_factory.mktemp("http")
    (root / "c0.parquet").write_bytes(parquet_bytes(digits_frames()[0]))
    with serve_directory(root) as url:
        yield url


def test_table_over_http_and_a_missing_one(http_root):
    data = load_client_data(f"{http_root}/c{{client_id}}.parquet", 0, 2)
    assert data.input_shape == (64,)
    with pytest.raises(DatasetError, match=r"c1\.parquet does not exist \(HTTP 404\)"):
        load_client_data(f"parquet:{http_root}/c{{client_id}}.parquet", 1, 2)


def test_location_lists_need_one_file_per_client(tmp_path):
    with pytest.raises(DatasetError, match="has 1 entries but the run has 2 clients"):
        client_dataset("digits", ["/d/c0.csv"], 0, 2)
    with pytest.raises(DatasetError, match=r"data_locations\[1\] = 'digits'"):
        client_dataset("digits", ["/d/c0.csv", "digits"], 1, 2)
    assert client_dataset("digits", ["/d/c0.csv", "csv:/d/other"], 1, 2) == "csv:/d/other"
    assert client_dataset("digits", [], 1, 2) == "digits"


def fl(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli(*args, env=env, timeout=timeout)


@pytest.mark.slow
def test_client_with_bad_credentials_fails_before_joining(s3_server, s3_tables):  # noqa: F811
    from tests.ports import free_port

    # Nothing listens at --server: the client must fail on its data, not wait for a server.
    done = fl(
        "client",
        "--server",
        f"http://127.0.0.1:{free_port()}",
        "--num-clients",
        "2",
        "--data-locations",
        json.dumps(s3_tables),
        "--retry-timeout",
        "120",
        env=s3_server.env(AWS_SECRET_ACCESS_KEY="wrong"),
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{s3_tables[0]}: access denied" in done.stderr


@pytest.mark.slow
def test_federated_run_reads_each_clients_table_from_s3(
    tmp_path: Path,
    s3_server,  # noqa: F811
    s3_tables,
):
    out = tmp_path / "run"
    done = fl(
        "local",
        "--output",
        str(out),
        "--clients",
        "2",
        "--rounds",
        "3",
        "--local-epochs",
        "1",
        "--data-locations",
        json.dumps(s3_tables),
        "--join-timeout",
        "120",
        env=s3_server.env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    history = json.loads((out / "history.json").read_text())
    assert history["status"] == "finished"
    # Every training row of both tables took part (80% of each table, one local epoch).
    assert history["rounds"][-1]["num_examples"] == sum(
        len(frame) - round(len(frame) * 0.2) for frame in digits_frames()
    )
    accuracy = history["rounds"][-1]["evaluate"]["metrics"]["accuracy"]
    assert accuracy >= 0.85, accuracy
    # The export took its shapes from the weights (it never read the tables): flat 64 inputs.
    check = (
        "import keras, numpy as np, sys; m = keras.models.load_model(sys.argv[1]); "
        "print(m.predict(np.zeros((2, 64), 'float32'), verbose=0).shape)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", check, str(out / "model.keras")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.stdout.strip() == "(2, 10)", loaded.stderr


def test_export_takes_a_tables_shapes_from_the_weights_without_reading_it():
    from fl_kubeflow.training.export import model_shapes

    weights = {
        "0000:mlp/fc1/kernel": np.zeros((64, 200), np.float32),
        "0001:mlp/fc1/bias": np.zeros(200, np.float32),
        "0004:mlp/output/bias": np.zeros(10, np.float32),
    }
    # Nothing serves this bucket: a read would fail, so these answers come from the weights.
    assert model_shapes("mlp", "s3://nowhere/c0.parquet", weights) == ((64,), 10)
    assert model_shapes("mlp", "csv:/absent/c{client_id}", weights) == ((64,), 10)
    assert model_shapes("mlp", "digits", weights) == ((8, 8, 1), 10)
    with pytest.raises(ValueError, match="pass --input-shape and --num-classes"):
        model_shapes("cnn", "s3://nowhere/c0.csv", weights)


def test_local_preflight_checks_each_listed_file(tmp_path):
    from fl_kubeflow.local.preflight import check_options

    (tmp_path / "c0.csv").write_text("label,x\n0,1\n")
    present, absent = str(tmp_path / "c0.csv"), str(tmp_path / "c1.parquet")
    check_options("digits", "iid", "mlp", 2, (present, "s3://remote/c1.csv"))
    with pytest.raises(ValueError, match=r"client 1's file '.*c1\.parquet' does not exist"):
        check_options("digits", "iid", "mlp", 2, (present, absent))
    with pytest.raises(ValueError, match="has 2 entries but the run has 3 clients"):
        check_options("digits", "iid", "mlp", 3, (present, absent))


@pytest.mark.slow
def test_client_task_fails_on_a_missing_object_before_joining(
    s3_env,
    s3_server,  # noqa: F811
    s3_tables,
):
    from fl_kubeflow.tasks import ClientTaskError, run_client_task
    from tests.ports import free_port

    missing = s3_server.url("digits/nobody.csv")
    with pytest.raises(ClientTaskError, match=rf"{missing} does not exist at http://127"):
        run_client_task(
            run_id="data-test",
            client_id=1,
            num_clients=2,
            # Nothing listens here: reaching it would mean the data was not checked first.
            server_address=f"http://127.0.0.1:{free_port()}",
            data_locations=json.dumps([s3_tables[0], missing]),
            retry_timeout=120,
        )

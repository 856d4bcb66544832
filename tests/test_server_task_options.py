"""The pipeline's strategy_options JSON reaches the server task, checked before serving."""

from __future__ import annotations

import pytest

from fl_kubeflow.tasks.server_task import ServerTaskError, parse_strategy_options, run_server_task


def test_options_parse_from_json_or_mapping():
    assert parse_strategy_options('{"eta": 0.03, "fraction_fit": 0.5}') == {
        "eta": 0.03,
        "fraction_fit": 0.5,
    }
    assert parse_strategy_options("") == {}
    assert parse_strategy_options({"momentum": 0.5}) == {"momentum": 0.5}


@pytest.mark.parametrize(
    ("strategy", "options", "message"),
    [
        ("fedavg", "{eta: 1}", "is not JSON"),
        ("fedavg", "[1, 2]", "JSON object"),
        ("fedavgm", '{"mommentum": 0.5}', "no option mommentum"),
        ("krum", '{"num_malicious": 2}', "num_malicious"),
        ("nope", "{}", "unknown strategy"),
    ],
)
def test_bad_options_fail_before_serving(tmp_path, strategy, options, message):
    with pytest.raises(ServerTaskError, match=message):
        run_server_task(
            run_id="7" + "0" * 35,
            num_clients=4,
            num_rounds=1,
            model_dir=tmp_path / "m",
            strategy=strategy,
            strategy_options=options,
            token_dir=tmp_path / "no-pod",
        )
    assert not (tmp_path / "m").exists()

"""The run's token never reaches the compiled pipeline: no parameter, no env, no literal."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from fl_kubeflow_kfp.pipeline.federation import DATA_CREDENTIAL_KEYS, DATA_CREDENTIALS
from fl_kubeflow_kfp.pipeline.fl_pipeline import compile_pipeline

ROOT = Path(__file__).resolve().parents[1]


def test_no_token_parameter_or_env_in_the_yaml(tmp_path):
    path = compile_pipeline(tmp_path / "p.yaml")
    text = path.read_text()
    docs = list(yaml.safe_load_all(text))
    spec = docs[0]
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in parameters if re.search("token|secret|password", p, re.I)]
    for component in spec["components"].values():
        for name in component.get("inputDefinitions", {}).get("parameters", {}):
            assert not re.search("token|secret|password", name, re.I), name
    platform = docs[1] if len(docs) > 1 else {}
    assert "FL_KUBEFLOW_TOKEN" not in yaml.safe_dump(platform)
    assert "secretAsVolume" not in text
    # The one Secret in the pipeline: the clients' object-storage credentials (docs/data.md).
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secret_envs = {name: e["secretAsEnv"] for name, e in executors.items() if "secretAsEnv" in e}
    assert list(secret_envs) == ["exec-fl-client"]
    (only,) = secret_envs["exec-fl-client"]
    assert [(k["secretKey"], k["envVar"]) for k in only["keyToEnv"]] == [
        (key, key) for key in DATA_CREDENTIAL_KEYS
    ]
    assert only["optional"] is True
    assert only["secretNameParameter"]["componentInputParameter"].endswith("data_credentials")
    assert (
        spec["root"]["inputDefinitions"]["parameters"]["data_credentials"]["defaultValue"]
        == DATA_CREDENTIALS
    )
    # No literal that looks like a generated token (43 URL-safe base64 characters).
    assert not re.search(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])", text)


def test_committed_yaml_has_no_token_either():
    text = (ROOT / "fl_pipeline.yaml").read_text()
    assert "FL_KUBEFLOW_TOKEN" not in text
    assert not re.search(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])", text)

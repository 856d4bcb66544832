"""No credential reaches a compiled pipeline: only Secret names are parameters, mounted by name.

The all-in-one pipeline's clients read their own credential Secrets through the API; the
server pipeline mounts its TLS Secret (optional) and reads the registry Secret by name; the
client pipeline mounts its credential Secret. None of them has a token parameter, an env
variable with a token, or a literal that looks like one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from fl_kubeflow_kfp.pipeline.client_pipeline import compile_client_pipeline
from fl_kubeflow_kfp.pipeline.federation import (
    CREDENTIAL_MOUNT,
    DATA_CREDENTIAL_KEYS,
    DATA_CREDENTIALS,
    TLS_MOUNT,
)
from fl_kubeflow_kfp.pipeline.fl_pipeline import compile_pipeline
from fl_kubeflow_kfp.pipeline.server_pipeline import compile_server_pipeline

ROOT = Path(__file__).resolve().parents[1]
# What a generated token looks like: 43 URL-safe base64 characters.
TOKEN_LIKE = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
# Parameters that are the NAME of a Secret (or its mount path, or a reload interval):
# allowed, never a credential themselves.
SECRET_NAMES = {
    "data_credentials",
    "tls_secret",
    "credentials_secret",
    "credential_secret",
    "credential_dir",
    "credentials_reload",
}
COMPILERS = {
    "all-in-one": compile_pipeline,
    "server": compile_server_pipeline,
    "client": compile_client_pipeline,
}


def executors(platform: dict) -> dict:
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.parametrize("kind", list(COMPILERS))
def test_no_credential_parameter_env_or_literal_in_the_yaml(kind: str, tmp_path: Path) -> None:
    text = COMPILERS[kind](tmp_path / "p.yaml").read_text()
    spec, platform = yaml.safe_load_all(text)
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    names = {*parameters}
    for component in spec["components"].values():
        inner = component.get("inputDefinitions", {}).get("parameters", {})
        names |= {name.removeprefix("pipelinechannel--") for name in inner}
    suspicious = {n for n in names if re.search("token|secret|password|credential", n, re.I)}
    assert suspicious <= SECRET_NAMES
    for name in suspicious & {*parameters}:
        default = parameters[name].get("defaultValue")
        assert not isinstance(default, str) or re.fullmatch(
            r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", default
        )
    assert "FL_KUBEFLOW_TOKEN" not in text
    assert not TOKEN_LIKE.search(text)
    for executor in executors(platform).values():
        # A Secret's keys reach a pod only as the data credentials' AWS variables.
        for env in executor.get("secretAsEnv", []):
            assert [(k["secretKey"], k["envVar"]) for k in env["keyToEnv"]] == [
                (key, key) for key in DATA_CREDENTIAL_KEYS
            ]
            assert env["optional"] is True
            assert env["secretNameParameter"]["componentInputParameter"].endswith(
                "data_credentials"
            )


def test_each_pipeline_mounts_exactly_its_secrets_by_parameter(tmp_path: Path) -> None:
    mounts = {}
    for kind, compile_ in COMPILERS.items():
        _, platform = yaml.safe_load_all(compile_(tmp_path / f"{kind}.yaml").read_text())
        mounts[kind] = {
            (
                name,
                volume["mountPath"],
                volume["optional"],
                volume["secretNameParameter"]["componentInputParameter"].split("--")[-1],
            )
            for name, executor in executors(platform).items()
            for volume in executor.get("secretAsVolume", [])
        }
    # The all-in-one pipeline reads its per-client Secrets through the API: no volumes.
    assert mounts["all-in-one"] == set()
    # Four server variants (checkpoints x initial model), each with the optional TLS volume.
    assert {m[1:] for m in mounts["server"]} == {(TLS_MOUNT, True, "tls_secret")}
    assert len(mounts["server"]) == 4
    assert mounts["client"] == {
        ("exec-fl-client", CREDENTIAL_MOUNT, False, "credential_secret"),
    }


def test_data_credentials_default_is_the_documented_secret(tmp_path: Path) -> None:
    spec, _ = yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text())
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["data_credentials"]["defaultValue"] == DATA_CREDENTIALS


@pytest.mark.parametrize(
    "name", ["fl_pipeline.yaml", "fl_server_pipeline.yaml", "fl_client_pipeline.yaml"]
)
def test_committed_yaml_has_no_token_either(name: str) -> None:
    text = (ROOT / name).read_text()
    assert "FL_KUBEFLOW_TOKEN" not in text
    assert not TOKEN_LIKE.search(text)

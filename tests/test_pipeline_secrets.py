"""The run's token never reaches the compiled pipeline: no parameter, no env, no literal."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
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
    assert "secretAsEnv" not in text and "secretAsVolume" not in text
    # No literal that looks like a generated token (43 URL-safe base64 characters).
    assert not re.search(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])", text)


def test_committed_yaml_has_no_token_either():
    text = (ROOT / "fl_pipeline.yaml").read_text()
    assert "FL_KUBEFLOW_TOKEN" not in text
    assert not re.search(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])", text)

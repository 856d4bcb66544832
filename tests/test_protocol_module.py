"""protocol.py is the one home of protocol v1's names, importable by server and client alike."""

from __future__ import annotations

import json
import subprocess
import sys

from fl_kubeflow import protocol
from fl_kubeflow.server import errors


def _modules_imported_by(module: str) -> list[str]:
    """The fl_kubeflow modules a fresh interpreter has loaded after importing ``module``."""
    code = (
        f"import json, sys; import {module}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('fl_kubeflow'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout)


def test_protocol_imports_neither_server_nor_client_nor_numpy():
    loaded = _modules_imported_by("fl_kubeflow.protocol")
    assert loaded == ["fl_kubeflow", "fl_kubeflow.protocol"]
    code = "import sys, fl_kubeflow.protocol; print('numpy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_every_request_error_code_is_a_protocol_code():
    codes = {
        getattr(protocol, name)
        for name in dir(protocol)
        if name.isupper() and isinstance(getattr(protocol, name), str)
    }
    raised = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.RequestError)
    }
    assert raised <= codes
    assert errors.TooLarge("x", limit=1).body() == protocol.error_body(
        protocol.TOO_LARGE, "x", limit=1
    )

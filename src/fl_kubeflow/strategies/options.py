"""Options written as text: ``--strategy-option key=value`` pairs (and secagg_options').

The values are checked by the strategy that takes them (``fl_kubeflow.checks``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


def parse_option_pairs(pairs: Iterable[str], kind: str = "strategy option") -> dict[str, Any]:
    """``["momentum=0.9", "clipping=client"]`` -> ``{"momentum": 0.9, "clipping": "client"}``.

    Values are read as JSON when they parse (numbers, true/false, null) and kept as
    strings otherwise, so the CLI and a pipeline's JSON parameter give the same types.
    ``kind`` names a pair in errors (the pipeline's secagg_options are pairs too).
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"{kind} {pair!r} must look like key=value")
        if key in options:
            raise ValueError(f"{kind} {key} is given twice")
        try:
            options[key] = json.loads(text)
        except ValueError:
            options[key] = text.strip()
    return options

"""``fl-kubeflow local``: placeholder until the local runner lands."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    del sub

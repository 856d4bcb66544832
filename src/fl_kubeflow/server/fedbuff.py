"""Asynchronous rounds (FedBuff, Nguyen et al., AISTATS 2022): the Federation of a
``--mode async`` run.

Clients fetch the newest model whenever they are ready and send an update tagged with
the version it started from; every K updates the server applies their
staleness-weighted mean change and makes the next version. docs/asynchronous.md is the
normative description (versions, concurrency, staleness, what history records).

``AsyncFederation`` keeps ``Federation``'s public methods and HTTP surface; it overrides
the seams that decide who gets which model (``_try_model``), which round an update
counts in (``_check_round_open``), how it is folded, and when a version is made
(``_drive_fit``, ``_aggregate``).
"""

from __future__ import annotations

from fl_kubeflow.server.federation import Federation


class AsyncFederation(Federation):
    """One asynchronous run: model versions, a buffer of K updates, staleness limits."""

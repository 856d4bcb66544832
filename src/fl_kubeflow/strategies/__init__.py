"""Aggregation strategies, selectable by name, each with keyword options.

``create("fedadam", eta=0.01)`` builds one; ``build`` builds the one a run uses and
checks it against the federation (the CLI, the server task and ``serve`` all ask it).
Adding ``noise_multiplier`` and ``clipping_norm`` (and optionally ``clipping``,
``target_delta``) wraps an averaging strategy in central differential privacy
(``dp_fixed_clipping``).
Under secure aggregation ``build`` also refuses rules that need each update
(``Strategy.check_secure_aggregation``).
Every strategy also takes ``fraction_fit``, ``fraction_evaluate`` and ``seed``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fl_kubeflow import defaults
from fl_kubeflow.strategies.base import COMMON_OPTIONS, RoundAggregator, Strategy
from fl_kubeflow.strategies.dp_fixed_clipping import DPFixedClipping
from fl_kubeflow.strategies.fedavg import FedAvg, weighted_average
from fl_kubeflow.strategies.fedavgm import FedAvgM
from fl_kubeflow.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from fl_kubeflow.strategies.fedprox import FedProx
from fl_kubeflow.strategies.krum import Krum, MultiKrum
from fl_kubeflow.strategies.options import parse_option_pairs
from fl_kubeflow.strategies.robust import FedMedian, FedTrimmedAvg
from fl_kubeflow.strategies.sampling import sample_clients

if TYPE_CHECKING:
    from fl_kubeflow.async_params import AsyncParams
    from fl_kubeflow.secagg.params import SecAggParams

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedAvgM,
        FedProx,
        FedAdam,
        FedYogi,
        FedAdagrad,
        FedMedian,
        FedTrimmedAvg,
        Krum,
        MultiKrum,
    )
}

# Options that wrap the strategy in central DP instead of going to its constructor.
DP_OPTIONS = ("noise_multiplier", "clipping_norm", "clipping", "target_delta")


def option_names(name: str) -> list[str]:
    """Every option ``create(name, ...)`` accepts, its own first."""
    cls = _lookup(name)
    own: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is Strategy:
            continue
        for param in inspect.signature(init).parameters.values():
            if param.kind is param.KEYWORD_ONLY and param.name not in own:
                own.append(param.name)
    dp = list(DP_OPTIONS) if cls.averaging else []
    return own + list(COMMON_OPTIONS) + dp


def _lookup(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}"
        ) from None


def create(name: str, **options: Any) -> Strategy:
    """Build the strategy called ``name`` with ``options``.

    Raises:
        ValueError: unknown name (listing the known ones), unknown option (listing
            the valid ones), or a bad option value (naming the option).
    """
    cls = _lookup(name)
    valid = option_names(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        extra = (
            ""
            if cls.averaging or not set(unknown) & set(DP_OPTIONS)
            else ("; differential privacy needs an averaging strategy")
        )
        raise ValueError(
            f"strategy {name!r} has no option {', '.join(unknown)}{extra}; "
            f"valid options: {', '.join(valid)}"
        )
    dp = {k: options.pop(k) for k in DP_OPTIONS if k in options}
    strategy = cls(**options)
    if dp:
        for required in ("noise_multiplier", "clipping_norm"):
            if required not in dp:
                raise ValueError(
                    f"differential privacy options {', '.join(sorted(dp))} need {required} too "
                    "(noise_multiplier=0 clips without noise)"
                )
        strategy = DPFixedClipping(strategy, **dp)
    return strategy


def build(
    name: str,
    options: Mapping[str, Any],
    *,
    num_clients: int,
    min_clients: int | None,
    secure_aggregation: SecAggParams | None = None,
    asynchronous: AsyncParams | None = None,
) -> Strategy:
    """The strategy of one run: ``create(name, **options)``, checked for this federation.

    ``min_clients`` is the run's quorum setting (None or 0: all ``num_clients``).
    With ``secure_aggregation`` (the run's SecAgg+ options) the strategy must work on a
    masked sum and the options must serve this many clients; with ``asynchronous`` (the
    run's FedBuff options) it must average a buffer of updates from different versions.

    Raises:
        ValueError: from ``create``, or an option that cannot work with this many
            clients and this quorum (naming the option), or a strategy or secure
            aggregation option that cannot work together, before anything starts.
    """
    strategy = create(name, **options)
    quorum = defaults.quorum(num_clients, min_clients)
    strategy.check(num_clients, quorum)
    if secure_aggregation is not None:
        check_secure(strategy, secure_aggregation, num_clients, quorum)
    if asynchronous is not None:
        check_async(strategy, asynchronous, num_clients)
    return strategy


def check_secure(
    strategy: Strategy, secure_aggregation: SecAggParams, num_clients: int, quorum: int
) -> None:
    """Raise ValueError, saying why, if ``strategy`` cannot run under these SecAgg+ options
    for ``num_clients`` clients and this quorum (``build`` and the Federation ask it)."""
    strategy.check_secure_aggregation()
    secure_aggregation.check_federation(num_clients)
    if quorum < num_clients:
        # A round's key stage may close with the quorum: its graph must exist too.
        try:
            secure_aggregation.check_federation(quorum)
        except ValueError as exc:
            raise ValueError(f"min_clients={quorum} under secure aggregation: {exc}") from None


def check_async(strategy: Strategy, asynchronous: AsyncParams, num_clients: int) -> None:
    """Raise ValueError, saying why, if ``strategy`` cannot run asynchronously (FedBuff)
    with these options for ``num_clients`` clients (``build`` and the Federation ask it)."""
    strategy.check_asynchronous()
    asynchronous.check_federation(num_clients)


__all__ = [
    "COMMON_OPTIONS",
    "DP_OPTIONS",
    "STRATEGIES",
    "DPFixedClipping",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedMedian",
    "FedProx",
    "FedTrimmedAvg",
    "FedYogi",
    "Krum",
    "MultiKrum",
    "RoundAggregator",
    "Strategy",
    "build",
    "check_async",
    "check_secure",
    "create",
    "option_names",
    "parse_option_pairs",
    "sample_clients",
    "weighted_average",
]

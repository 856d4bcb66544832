"""A task's retry strategy as Argo applies it under KFP 2.17's manifests, and Argo's decision.

KFP compiles ``set_retry`` into an Argo ``retryStrategy`` on the executor template with a
limit and a backoff but no ``retryPolicy``. The 2.17 manifests configure Argo's
``templateDefaults.retryStrategy = {limit: 2, retryPolicy: OnError}``, which Argo merges
into every template (the template's own fields win). So:

* a task without ``set_retry`` is retried twice, immediately, but only after an Argo "Error"
  (the pod deleted or evicted, a container that never started);
* a task with ``set_retry`` gets its own limit and backoff, and still ``OnError``: a non-zero
  exit ("Failed") is not retried at all.

``decide`` follows ``processNodeRetries`` of Argo v4.0.5 (workflow/controller/operator.go):
the backoff deadline is checked before the policy, ``backoffMaxDuration`` counts from the
first attempt's start, a retry whose backoff would end past that deadline is not made, and
a retry that is made must finish by it (the pod's ``activeDeadlineSeconds``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.e2e.kfp_ir import ARGO_TEMPLATE_DEFAULT_RETRY, duration_seconds

ERROR = "Error"
FAILED = "Failed"
SUCCEEDED = "Succeeded"

ON_ERROR = "OnError"
ON_FAILURE = "OnFailure"
ALWAYS = "Always"


@dataclass(frozen=True)
class RetryStrategy:
    """An Argo retryStrategy after the template defaults were merged in."""

    limit: int
    policy: str
    backoff_duration: float | None = None
    backoff_factor: float | None = None
    backoff_max_duration: float | None = None

    @classmethod
    def for_task(
        cls,
        retry_policy: dict[str, Any] | None,
        template_defaults: dict[str, Any] | None = None,
    ) -> RetryStrategy:
        """Merge a task's IR ``retryPolicy`` into Argo's template defaults."""
        defaults = ARGO_TEMPLATE_DEFAULT_RETRY if template_defaults is None else template_defaults
        merged: dict[str, Any] = dict(defaults)
        backoff: dict[str, float | None] = {}
        if retry_policy:
            # KFP sets limit and backoff only; retryPolicy stays whatever the defaults say.
            merged["limit"] = int(retry_policy.get("maxRetryCount", 0))
            backoff = {
                "duration": duration_seconds(retry_policy.get("backoffDuration")),
                "factor": retry_policy.get("backoffFactor"),
                "max_duration": duration_seconds(retry_policy.get("backoffMaxDuration")),
            }
        # Argo's own default when nothing sets a policy (RetryPolicyActual).
        policy = merged.get("retryPolicy") or ON_FAILURE
        return cls(
            limit=int(merged.get("limit", 0)),
            policy=policy,
            backoff_duration=backoff.get("duration"),
            backoff_factor=backoff.get("factor"),
            backoff_max_duration=backoff.get("max_duration"),
        )


@dataclass(frozen=True)
class Attempt:
    """One finished attempt: its phase and when it started and finished (epoch seconds)."""

    phase: str
    started_at: float
    finished_at: float


@dataclass(frozen=True)
class Decision:
    """Retry or not; when to start the retry and the deadline it must finish by."""

    retry: bool
    reason: str
    start_at: float | None = None
    deadline: float | None = None


def decide(strategy: RetryStrategy, attempts: list[Attempt], now: float) -> Decision:
    """What Argo does after the last of ``attempts`` ended (not Succeeded)."""
    last = attempts[-1]
    if last.phase == SUCCEEDED:
        return Decision(False, "succeeded")
    start_at = last.finished_at
    deadline: float | None = None
    if strategy.backoff_duration is not None:
        if strategy.backoff_max_duration is not None:
            deadline = attempts[0].started_at + strategy.backoff_max_duration
            if now > deadline:
                return Decision(False, "Max duration limit exceeded")
        wait = strategy.backoff_duration
        factor = int(strategy.backoff_factor or 0)  # Argo parses the factor as an int32
        if factor > 0:
            wait = strategy.backoff_duration * factor ** (len(attempts) - 1)
        start_at = last.finished_at + wait
        if deadline is not None and start_at > deadline:
            return Decision(False, "Backoff would exceed max duration limit")
    retried = {FAILED: strategy.policy in (ALWAYS, ON_FAILURE)}
    retried[ERROR] = strategy.policy in (ALWAYS, ON_ERROR)
    if not retried.get(last.phase, False):
        return Decision(False, f"{last.phase}: not retried under retryPolicy {strategy.policy}")
    if len(attempts) > strategy.limit:
        return Decision(False, "No more retries left")
    return Decision(True, f"retry {len(attempts)} of {strategy.limit}", start_at, deadline)

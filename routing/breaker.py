"""Circuit breaker per deployment, shared through the health store (Redis when configured).

    closed --(N consecutive failures, or failure ratio >= R over a window of >= M requests)--> open
    open --(cool-down elapsed; the first caller atomically claims the one trial)--> half-open
    half-open --(trial succeeds)--> closed;  --(trial fails)--> open (a new cool-down)

A trial that never reports (a crashed process) frees its slot after ``trial_timeout_s``.
Counting happens in ``routing.health`` (the same atomic update as the live stats);
this module is the read side the failover loop and the engine use.

``breaker_allow`` is the hot-path check: for a closed or still-cooling deployment it reads only
the in-process view (no I/O), so skipping an open deployment costs microseconds. Only when a
cool-down has elapsed does it make one atomic claim (a Lua script in Redis).
"""

from __future__ import annotations

import time

from routing.health import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    STATE_NAMES,
    DeploymentStats,
    HealthStore,
    health_store,
)

# Failures that say nothing about a deployment's health: the request itself was wrong.
NOT_HEALTH_FAILURES = frozenset({"bad_request", "context_length", "unsupported", "content_filter"})


def breaker_state(deployment_id: int, *, store: HealthStore | None = None) -> str:
    """``closed``, ``open`` or ``half_open`` as this process currently sees it."""
    stats = (store or health_store()).view(deployment_id)
    return STATE_NAMES[stats.state] if stats is not None else "closed"


def breaker_is_open(deployment_id: int, *, store: HealthStore | None = None) -> bool:
    """True while the deployment should be skipped and no trial is due (no I/O)."""
    return cooling((store or health_store()).view(deployment_id))


def cooling(stats: DeploymentStats | None) -> bool:
    """Is this view of a deployment an open breaker with no trial due (still cooling down, or
    a trial in flight elsewhere)? Once its cool-down is over the deployment takes its place
    among the candidates again, and the first request to reach it claims the trial."""
    if stats is None or stats.state == CLOSED:
        return False
    now = time.time()
    if stats.state == OPEN:
        return now < stats.open_until
    return now < stats.trial_until  # HALF_OPEN: a trial is in flight elsewhere


def breaker_allow(deployment_id: int, *, store: HealthStore | None = None) -> bool:
    """May a request go to this deployment now? Claims the half-open trial when one is due."""
    store = store or health_store()
    stats = store.view(deployment_id)
    if stats is None or stats.state == CLOSED:
        return True
    now = time.time()
    if stats.state == OPEN and now < stats.open_until:
        return False
    if stats.state == HALF_OPEN and now < stats.trial_until:
        return False
    return store.try_claim(deployment_id)


__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "NOT_HEALTH_FAILURES",
    "OPEN",
    "breaker_allow",
    "breaker_is_open",
    "breaker_state",
    "cooling",
]

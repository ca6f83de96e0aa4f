"""What a run learns of its account and of itself before it starts: ``/usage``, the
concurrency it may use, its id and name. Shared by every flow."""

from __future__ import annotations

import uuid

from prefect import get_run_logger
from prefect.context import FlowRunContext

from prefect_ig1.blocks import IG1Credentials
from prefect_ig1.client import AccountUsage, AuthenticationError, IG1Error

__all__ = ["DEFAULT_CONCURRENCY", "MAX_CONCURRENCY", "concurrency_from", "read_usage",
           "run_identity"]

DEFAULT_CONCURRENCY = 8
MAX_CONCURRENCY = 256
"""Calls in flight at most, however high /usage's max_throughput claims to be."""


def read_usage(credentials: IG1Credentials) -> AccountUsage | None:
    """``/usage`` (spend, commit, max_throughput); None when unavailable (not fatal)."""
    logger = get_run_logger()
    try:
        usage = credentials.usage()
    except IG1Error as exc:
        if isinstance(exc, AuthenticationError):
            raise
        logger.info("IG1 /usage unavailable (%s)", exc)
        return None
    if usage.remaining <= 0:
        logger.warning("IG1 budget already spent this month (%.2f of %.2f): calls will fail "
                       "with 402 until the commit is raised", usage.current, usage.commit)
    return usage


def concurrency_from(usage: AccountUsage | None) -> int:
    """``max_throughput`` from ``/usage``, capped; else a safe default."""
    claimed = (usage.max_throughput if usage else None) or DEFAULT_CONCURRENCY
    if claimed > MAX_CONCURRENCY:
        get_run_logger().warning("IG1 /usage claims max_throughput=%d: capped at %d calls in "
                                 "flight (pass max_concurrency to choose)", claimed,
                                 MAX_CONCURRENCY)
    return max(1, min(claimed, MAX_CONCURRENCY))


def run_identity() -> tuple[str, str]:
    """(id, name) of this flow run: two runs may share a name, never an id."""
    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None:
        return str(context.flow_run.id), str(context.flow_run.name)
    run_id = uuid.uuid4().hex
    return run_id, run_id[:12]

"""Spend before, during and after a run: the forecast, the budget check, the events.

Before the first call the run knows how many items it will send; with the tokens per
item of the last run on the same prefix (or ``DEFAULT_CALL_TOKENS``), the profile's
prices and the budget left on ``/usage``, it forecasts its spend, and refuses to start
when the forecast alone passes the budget left (unless ``allow_over_budget``). At the end
it emits a Prefect event (``ig1.run.completed`` / ``ig1.run.stopped`` /
``ig1.run.failed``) that automations can act on, and ``ig1.budget.low`` when less than
10 % of the month's commit is left.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from prefect import get_run_logger
from prefect.events import emit_event
from pydantic import BaseModel, Field, computed_field

from prefect_ig1.blocks import IG1Credentials, Prices
from prefect_ig1.client import AccountUsage, IG1Error
from prefect_ig1.flows.storage import ObjectTooLarge, list_objects, read_json
from prefect_ig1.tasks.ledger import DEFAULT_CALL_TOKENS, ModelSpend

__all__ = ["LOW_BUDGET_SHARE", "Forecast", "OverBudget", "SpendReport", "check_budget",
           "emit_budget_low", "emit_run_event", "forecast_run", "forecast_spend", "spend_payload",
           "tokens_per_item_of_last_run"]

LOW_BUDGET_SHARE = 0.10
logger = logging.getLogger(__name__)


class OverBudget(IG1Error):
    """The run's forecast alone passes the budget left this month: nothing was sent."""


class Forecast(BaseModel):
    """What the run expects to spend, known before its first call."""

    items: int
    tokens_per_item: float
    basis: Literal["last_run", "default"]
    tokens: int
    cost: float | None = None
    budget_left: float | None = None
    commit: float | None = None

    def describe(self) -> str:
        cost = f", ~{self.cost:.4f} in cost" if self.cost is not None else ""
        left = (f"; {self.budget_left:.4f} of {self.commit:.4f} left this month"
                if self.budget_left is not None and self.commit is not None else "")
        return (f"{self.items} item(s) to send, ~{self.tokens:,} tokens "
                f"({self.tokens_per_item:,.0f} per item, from the {self.basis.replace('_', ' ')})"
                f"{cost}{left}")


class SpendReport(BaseModel):
    """What every run reports of its spend: the base of each flow's report (``run.json``)."""

    forecast: Forecast | None = None
    dry_run: bool = False
    spend: list[ModelSpend] = Field(
        default_factory=list, description="The run's ledger: one line per model, then 'all'.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cost(self) -> float | None:
        """What the run's calls cost, when the profile has prices."""
        return self.spend[-1].cost if self.spend else None


def tokens_per_item_of_last_run(s3: Any, bucket: str, output_prefix: str) -> float | None:
    """Tokens per described item of the newest earlier run that described some, if any."""
    keys = [obj.key for obj in list_objects(s3, bucket, f"{output_prefix}_runs/")
            if obj.key.endswith("/run.json")]
    for key in sorted(keys, reverse=True)[:5]:  # folders start with their start time
        try:
            run = read_json(s3, bucket, key, max_bytes=1024 * 1024) or {}
            described = int(run.get("counts", {}).get("described", 0))
            tokens = int(run.get("input_tokens", 0)) + int(run.get("output_tokens", 0))
        except (ObjectTooLarge, ValueError, TypeError, AttributeError):
            continue  # another run's outputs are data, not trusted
        if described > 0 and tokens > 0:
            return tokens / described
    return None


def forecast_spend(items: int, per_item: float | None, prices: Prices | None,
                   usage: AccountUsage | None) -> Forecast:
    tokens_per_item = per_item if per_item is not None else float(DEFAULT_CALL_TOKENS)
    tokens = round(items * tokens_per_item)
    # Without the input/output split, price every token as input: the cheaper side of
    # most price lists, so the check below errs towards running.
    cost = prices.cost(tokens, 0) if prices is not None else None
    return Forecast(items=items, tokens_per_item=tokens_per_item,
                    basis="last_run" if per_item is not None else "default", tokens=tokens,
                    cost=cost, budget_left=usage.remaining if usage else None,
                    commit=usage.commit if usage else None)


def forecast_run(report: SpendReport, items: int, per_item: float | None,
                 prices: Prices | None, usage: AccountUsage | None, *, dry_run: bool,
                 allow_over_budget: bool) -> bool:
    """Forecast the run into ``report`` and log it; True when the run stops here
    (``dry_run``). Refuses a run whose forecast alone passes the budget left."""
    report.forecast = forecast_spend(items, per_item, prices, usage)
    get_run_logger().info("Forecast: %s", report.forecast.describe())
    if dry_run:
        report.dry_run = True
        return True
    check_budget(report.forecast, allow_over_budget)
    return False


def check_budget(forecast: Forecast, allow_over_budget: bool) -> None:
    """Refuse to start when the forecast alone passes what is left of the month's commit."""
    if forecast.cost is None or forecast.budget_left is None:
        return
    if forecast.cost > forecast.budget_left and not allow_over_budget:
        raise OverBudget(
            f"This run would spend ~{forecast.cost:.4f} ({forecast.describe()}), more than the "
            f"{forecast.budget_left:.4f} left of this month's IG1 commit: nothing was sent. "
            "Raise the commit, narrow the prefix, or pass allow_over_budget=True.")


def emit_budget_low(usage: AccountUsage | None, credentials: IG1Credentials) -> None:
    """``ig1.budget.low`` when less than LOW_BUDGET_SHARE of the commit is left."""
    if usage is None or usage.commit <= 0 or usage.remaining >= LOW_BUDGET_SHARE * usage.commit:
        return
    emit_event(event="ig1.budget.low",
               resource={"prefect.resource.id": f"ig1.account.{_host(credentials.base_url)}"},
               payload={"current": usage.current, "commit": usage.commit,
                        "remaining": usage.remaining,
                        "remaining_share": round(usage.remaining / usage.commit, 4)})


def emit_run_event(kind: Literal["completed", "stopped", "failed"], *, flow_run_id: str | None,
                   run_name: str, payload: dict[str, Any]) -> None:
    """One event per run for automations (the resource is the flow run)."""
    resource = {"prefect.resource.id": f"prefect.flow-run.{flow_run_id or run_name}",
                "prefect.resource.name": run_name}
    emit_event(event=f"ig1.run.{kind}", resource=resource, payload=payload)


def spend_payload(spend: list[ModelSpend], counts: dict[str, int],
                  stopped_by: str | None) -> dict[str, Any]:
    total = spend[-1] if spend else ModelSpend(model="all")
    return {"counts": counts, "requests": total.requests, "cache_hits": total.cache_hits,
            "input_tokens": total.input_tokens, "output_tokens": total.output_tokens,
            "reasoning_tokens": total.reasoning_tokens, "cost": total.cost,
            "stopped_by": stopped_by}


def _host(base_url: str) -> str:
    return base_url.split("://", 1)[-1].split("/", 1)[0]

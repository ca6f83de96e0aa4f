"""What a run spent: requests, cache hits and tokens per model, and their cost when priced.

IG1 bills tokens against a monthly commit. A ``Ledger`` is filled by the call engine as
answers arrive (thread-safe), so a run can report its spend (``run.json``, the
``ig1-usage`` artifact), and a ``SpendCap`` can stop it before it passes a cap: what is
spent plus what is in flight (each call in flight counted at the run's average so far)
must stay within ``max_tokens`` / ``max_spend``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from prefect_ig1.blocks import Prices
from prefect_ig1.client import IG1Error, Response

__all__ = ["DEFAULT_CALL_TOKENS", "Ledger", "ModelSpend", "SpendCap", "SpendCapReached",
           "flow_run_ledger", "usage_rows"]

DEFAULT_CALL_TOKENS = 1_500
"""Tokens a call is assumed to cost before the run has answers of its own (an image of
1024 px is ~1,000 input tokens on Qwen2.5-VL, plus a few sentences out)."""


class ModelSpend(BaseModel):
    """One model's line of the ledger."""

    model: str
    requests: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float | None = None

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class SpendCapReached(IG1Error):
    """The run's ``max_tokens`` or ``max_spend`` would be passed: it stops sending."""


@dataclass
class Ledger:
    """Spend by model, as answers arrive."""

    lines: dict[str, ModelSpend] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def paid(self, model: str, response: Response, prices: Prices | None) -> None:
        """An answer that was sent and billed."""
        usage = response.usage
        details = (usage.output_tokens_details or {}) if usage else {}
        reasoning = details.get("reasoning_tokens")
        with self._lock:
            line = self.lines.setdefault(model, ModelSpend(model=model))
            line.requests += 1
            if usage is not None:
                line.input_tokens += usage.input_tokens
                line.output_tokens += usage.output_tokens
                line.reasoning_tokens += reasoning if isinstance(reasoning, int) else 0
                if prices is not None:
                    line.cost = (line.cost or 0.0) + prices.cost(usage.input_tokens,
                                                                 usage.output_tokens)

    def failed(self, model: str) -> None:
        """A request sent that brought no answer (billed or not, it was a request)."""
        with self._lock:
            self.lines.setdefault(model, ModelSpend(model=model)).requests += 1

    def hit(self, model: str) -> None:
        """An answer from the cache: nothing paid."""
        with self._lock:
            self.lines.setdefault(model, ModelSpend(model=model)).cache_hits += 1

    def total(self) -> ModelSpend:
        with self._lock:
            lines = list(self.lines.values())
        priced = [line.cost for line in lines if line.cost is not None]
        return ModelSpend(
            model="all", requests=sum(line.requests for line in lines),
            cache_hits=sum(line.cache_hits for line in lines),
            input_tokens=sum(line.input_tokens for line in lines),
            output_tokens=sum(line.output_tokens for line in lines),
            reasoning_tokens=sum(line.reasoning_tokens for line in lines),
            cost=sum(priced) if priced else None)

    def rows(self) -> list[ModelSpend]:
        """One line per model, then the total."""
        with self._lock:
            lines = [line.model_copy() for line in self.lines.values()]
        return [*sorted(lines, key=lambda line: line.model), self.total()]


@dataclass
class SpendCap:
    """Caps on one run's tokens and cost; ``admit`` before each send, ``settle`` after.

    Until the run has its first answer, one call at a time is sent (its cost is unknown:
    a 12 MP photo or a one-line ticket); after that, each call in flight is reserved at
    the run's average, so the cap is passed at most by how far real calls differ from it.
    """

    ledger: Ledger
    max_tokens: int | None = None
    max_spend: float | None = None
    prices: Prices | None = None
    _in_flight: int = 0
    _answered: int = 0
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def __post_init__(self) -> None:
        if self.max_spend is not None and self.prices is None:
            raise ValueError("max_spend needs prices: set input_price_per_million and "
                             "output_price_per_million on the ResponsesModel profile")

    @property
    def active(self) -> bool:
        return self.max_tokens is not None or self.max_spend is not None

    def admit(self) -> None:
        """Reserve one call, or raise ``SpendCapReached`` if it could pass a cap."""
        with self._changed:
            self._changed.wait_for(lambda: self._answered > 0 or self._in_flight == 0)
            total = self.ledger.total()
            answered = max(self._answered, 1)
            tokens = total.tokens / answered if self._answered else 0.0
            cost = (total.cost or 0.0) / answered if self._answered else 0.0
            calls = self._in_flight + 1
            if self.max_tokens is not None and total.tokens + calls * tokens > self.max_tokens:
                raise SpendCapReached(
                    f"max_tokens={self.max_tokens:,} would be passed: {total.tokens:,} tokens "
                    f"spent, {self._in_flight} call(s) in flight at ~{tokens:,.0f} each")
            spent = total.cost or 0.0
            if self.max_spend is not None and spent + calls * cost > self.max_spend:
                raise SpendCapReached(
                    f"max_spend={self.max_spend:g} would be passed: {spent:.4f} spent, "
                    f"{self._in_flight} call(s) in flight at ~{cost:.4f} each")
            self._in_flight = calls

    def settle(self, answered: bool) -> None:
        """The reserved call is over; ``answered`` when its cost is in the ledger now."""
        with self._changed:
            self._in_flight -= 1
            self._answered += int(answered)
            self._changed.notify_all()


def usage_rows(spend: list[ModelSpend]) -> list[dict[str, Any]]:
    """The ``ig1-usage`` table: one row per model and the total (cost when priced)."""
    return [{"model": line.model, "requests": line.requests, "cache hits": line.cache_hits,
             "input tokens": line.input_tokens, "output tokens": line.output_tokens,
             "reasoning tokens": line.reasoning_tokens,
             "cost": None if line.cost is None else round(line.cost, 6)} for line in spend]


_FLOW_RUN_LEDGERS: OrderedDict[str, Ledger] = OrderedDict()
_FLOW_RUN_LEDGERS_KEPT = 64
_flow_run_lock = threading.Lock()


def flow_run_ledger(flow_run_id: str) -> Ledger:
    """The ledger of ``create_response`` calls in one flow run of this process (the last
    few runs are kept: a user's flow has no end hook to hand it to)."""
    with _flow_run_lock:
        ledger = _FLOW_RUN_LEDGERS.pop(flow_run_id, None) or Ledger()
        _FLOW_RUN_LEDGERS[flow_run_id] = ledger
        while len(_FLOW_RUN_LEDGERS) > _FLOW_RUN_LEDGERS_KEPT:
            _FLOW_RUN_LEDGERS.popitem(last=False)
        return ledger

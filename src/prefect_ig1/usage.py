"""The month's IG1 spend at a glance, and whether the commit lasts the month.

    python -m prefect_ig1.usage [--credentials BLOCK_NAME]

Prints ``/usage`` (spend, commit, remaining) and ``/usage/history`` (by model and day),
the month's daily rate and the days left at that rate. Exits 1 when the commit runs out
before the month ends at the current rate, so a scheduled check can alert; 2 when the
account cannot be read.
"""

from __future__ import annotations

import argparse
import calendar
import sys
from collections import defaultdict
from datetime import date
from typing import TextIO, cast

from prefect_ig1.blocks import IG1Credentials
from prefect_ig1.client import AccountUsage, IG1Error, UsageDay

__all__ = ["main", "month_view"]


def month_view(usage: AccountUsage, history: list[UsageDay], today: date,
               out: TextIO) -> bool:
    """Write the month's view; True when the commit lasts the month at the current rate."""
    month = today.strftime("%Y-%m")
    days = [row for row in history if row.date.startswith(month)]
    by_model: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for row in days:
        by_model[row.model][0] += row.requests
        by_model[row.model][1] += row.cost
    out.write(f"IG1 usage, {month} to date\n\n")
    out.write(f"{'model':<40} {'requests':>10} {'cost':>12}\n")
    for model, (requests, cost) in sorted(by_model.items()):
        out.write(f"{model:<40} {int(requests):>10,} {cost:>12.4f}\n")
    out.write(f"\n{'day':<12} {'model':<40} {'requests':>10} {'cost':>12}\n")
    for row in sorted(days, key=lambda r: (r.date, r.model)):
        out.write(f"{row.date:<12} {row.model:<40} {row.requests:>10,} {row.cost:>12.4f}\n")

    elapsed = today.day
    month_days = calendar.monthrange(today.year, today.month)[1]
    rate = usage.current / elapsed
    out.write(f"\nspent {usage.current:.4f} of a {usage.commit:.4f} commit, "
              f"{usage.remaining:.4f} left\n")
    if rate <= 0:
        out.write("no spend yet this month\n")
        return True
    days_left = usage.remaining / rate
    lasts = usage.current + rate * (month_days - elapsed) <= usage.commit
    out.write(f"{rate:.4f} a day on average: {max(days_left, 0):.1f} day(s) left at that rate; "
              f"{month_days - elapsed} day(s) left in the month\n")
    out.write("the commit lasts the month\n" if lasts else
              "the commit runs out before the month ends: raise it or slow down\n")
    return lasts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefect_ig1.usage",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--credentials", help="an IG1Credentials block name (default: "
                                              "IG1AI_API_KEY / IG1AI_BASE_URL)")
    args = parser.parse_args(argv)
    try:
        credentials = (cast(IG1Credentials, IG1Credentials.load(args.credentials))
                       if args.credentials else IG1Credentials.from_env())
        client = credentials.get_client()
        usage, history = client.usage(), client.usage_history()
    except (IG1Error, ValueError) as exc:
        print(f"cannot read IG1 usage: {exc}", file=sys.stderr)
        return 2
    return 0 if month_view(usage, history, date.today(), sys.stdout) else 1


if __name__ == "__main__":
    raise SystemExit(main())

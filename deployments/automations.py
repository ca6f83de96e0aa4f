"""Prefect automations that tell you when a run stopped or the month's budget runs low.

    python -m prefect_ig1.deployments.automations --notify BLOCK_NAME

Every run emits ``ig1.run.completed`` / ``ig1.run.stopped`` / ``ig1.run.failed`` and, when
less than 10 % of the IG1 commit is left, ``ig1.budget.low`` (``prefect_ig1.flows.spend``).
These automations send a notification through any Prefect notification block (Slack,
Teams, e-mail, a webhook) on ``ig1.run.stopped`` and on ``ig1.budget.low`` (at most once
a day). Creating them again replaces them (matched by name).
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import cast
from uuid import UUID

from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

__all__ = ["BUDGET_LOW", "RUN_STOPPED", "automations", "create_automations"]

RUN_STOPPED = "ig1: a run stopped"
BUDGET_LOW = "ig1: budget low"


def automations(notification_block_id: UUID) -> list[AutomationCore]:
    """The two automations, notifying through the block with this id."""
    return [
        AutomationCore(
            name=RUN_STOPPED,
            description="An IG1 run stopped sending (402, refused credentials, or its spend cap).",
            trigger=EventTrigger(expect={"ig1.run.stopped"}, posture=Posture.Reactive,
                                 threshold=1, within=timedelta(0)),
            actions=[SendNotification(
                block_document_id=notification_block_id,
                subject="IG1 run {{ event.resource.name }} stopped",
                body="{{ event.payload.stopped_by }}\n"
                     "counts: {{ event.payload.counts }}; tokens in/out: "
                     "{{ event.payload.input_tokens }}/{{ event.payload.output_tokens }}; "
                     "cost: {{ event.payload.cost }}. A rerun does exactly the rest.")],
        ),
        AutomationCore(
            name=BUDGET_LOW,
            description="Less than 10 % of the month's IG1 commit is left.",
            trigger=EventTrigger(expect={"ig1.budget.low"}, posture=Posture.Reactive,
                                 threshold=1, within=timedelta(days=1)),
            actions=[SendNotification(
                block_document_id=notification_block_id,
                subject="IG1 budget low",
                body="{{ event.payload.remaining }} of {{ event.payload.commit }} left this "
                     "month ({{ event.payload.remaining_share }}): raise the commit or slow "
                     "the schedules down. `python -m prefect_ig1.usage` shows the month.")],
        ),
    ]


def create_automations(notification_block: str) -> list[UUID]:
    """Create (or replace) both automations; ``notification_block`` is "type-slug/name"
    or a block name of a notification block saved on the server."""
    block = cast(Block, Block.load(notification_block, _sync=True))  # type: ignore[call-arg]
    block_id = block._block_document_id  # the id Prefect's actions take
    if block_id is None:
        raise ValueError(f"{notification_block!r} is not a saved block")
    created = []
    with get_client(sync_client=True) as client:
        for automation in automations(block_id):
            for existing in client.read_automations_by_name(automation.name):
                client.delete_automation(existing.id)
            created.append(client.create_automation(automation))
    return created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefect_ig1.deployments.automations",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--notify", required=True,
                        help="a saved notification block, as 'block-type-slug/block-name'")
    args = parser.parse_args(argv)
    for automation_id in create_automations(args.notify):
        print(f"automation {automation_id} created")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

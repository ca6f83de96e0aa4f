"""Serve every deployment of ``deployments/prefect.yaml`` from one process, no work pool.

    IG1_IMAGES_BUCKET=my-photos IG1_IMAGES_PREFIX=incoming/ python -m prefect_ig1.deployments.serve

The YAML is the one source of truth: the same schedules, triggers, parameters
and concurrency limits as ``prefect deploy --all``. Stops cleanly on SIGTERM.

Serve or workers, not both, on one server: a deployment ``prefect deploy`` made for a work
pool keeps its pool (and loses its path) when served, so its runs crash; serve refuses it
unless ``--take-over`` (which deletes and re-creates it). On stop the deployments stay
un-paused (Prefect's default pauses them, and workers taking over found them paused).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
from pathlib import Path
from types import FrameType
from typing import Any, cast

import yaml
from prefect import Flow, serve
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments.runner import RunnerDeployment
from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
from prefect.exceptions import ObjectNotFound
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron
from pydantic import TypeAdapter

__all__ = ["PREFECT_YAML", "deployments_of_work_pools", "load_deployments", "main",
           "take_over"]

logger = logging.getLogger(__name__)

PREFECT_YAML = Path(__file__).with_name("prefect.yaml")
_ENV_TEMPLATE = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")
_TRIGGERS: TypeAdapter[DeploymentTriggerTypes] = TypeAdapter(DeploymentTriggerTypes)


def _with_environment(value: Any) -> Any:
    """Fill ``{{ $VAR }}`` from the environment, as ``prefect deploy`` does."""
    if isinstance(value, str):
        return _ENV_TEMPLATE.sub(lambda match: os.environ.get(match.group(1), ""), value)
    if isinstance(value, list):
        return [_with_environment(item) for item in value]
    if isinstance(value, dict):
        return {key: _with_environment(item) for key, item in value.items()}
    return value


def load_deployments(path: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """The deployments declared in ``prefect.yaml``, ready for ``serve``."""
    config = _with_environment(yaml.safe_load(path.read_text(encoding="utf-8")))
    deployments = []
    for spec in config["deployments"]:
        flow: Flow[Any, Any] = load_flow_from_entrypoint(spec["entrypoint"])
        limit = spec.get("concurrency_limit")
        deployments.append(cast(RunnerDeployment, flow.to_deployment(
            name=spec["name"],
            description=spec.get("description"),
            tags=spec.get("tags"),
            parameters=spec.get("parameters"),
            schedules=[Cron(s["cron"], timezone=s.get("timezone", "UTC"))
                       for s in spec.get("schedules") or []],
            triggers=[_TRIGGERS.validate_python(t) for t in spec.get("triggers") or []],
            concurrency_limit=ConcurrencyLimitConfig(**limit) if limit else None,
            paused=spec.get("paused"),
        )))
    return deployments


def deployments_of_work_pools(deployments: list[RunnerDeployment]) -> dict[str, str]:
    """Which of these already exist on the server for a work pool (``prefect deploy``):
    ``{"flow/deployment": "pool"}``."""
    owned = {}
    with get_client(sync_client=True) as client:
        for deployment in deployments:
            with contextlib.suppress(ObjectNotFound):
                existing = client.read_deployment_by_name(deployment.full_name)
                if existing.work_pool_name:
                    owned[deployment.full_name] = existing.work_pool_name
    return owned


def take_over(owned: dict[str, str]) -> None:
    """Delete deployments made for a work pool, so serve re-creates them without it."""
    with get_client(sync_client=True) as client:
        for name, pool in owned.items():
            client.delete_deployment(client.read_deployment_by_name(name).id)
            logger.warning("took over %s from work pool %r: deleted, served from here now; "
                           "its workers no longer get its runs", name, pool)


def _stopped_hint(deployments: list[RunnerDeployment]) -> str:
    names = ", ".join(deployment.full_name for deployment in deployments)
    return (f"serve stopped; {names} stay un-paused, and their runs wait (Late) until "
            "`python -m prefect_ig1.deployments.serve` runs again, or until workers take over: "
            "`prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml`")


def _stop(signum: int, frame: FrameType | None) -> None:
    # Once: a second signal while the runner shuts down must not interrupt the shutdown.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt  # serve() shuts down its runner on this


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; 2 when a deployment belongs to a work pool (no --take-over)."""
    parser = argparse.ArgumentParser(prog="python -m prefect_ig1.deployments.serve",
                                     description="Serve the deployments of prefect.yaml here.")
    parser.add_argument("--take-over", action="store_true",
                        help="delete deployments `prefect deploy` made for a work pool and "
                             "serve them from here instead")
    args = parser.parse_args(argv)
    if not os.environ.get("IG1_IMAGES_BUCKET"):
        parser.error("set IG1_IMAGES_BUCKET (and IG1_IMAGES_PREFIX) to the bucket to watch")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    deployments = load_deployments()
    owned = deployments_of_work_pools(deployments)
    if owned and not args.take_over:
        listed = ", ".join(f"{name} (work pool {pool!r})" for name, pool in owned.items())
        parser.exit(2, f"{parser.prog}: error: {listed} came from `prefect deploy` and run on "
                       "that pool's workers; serving them too would crash their runs. Use serve "
                       "or workers on one server: stop here and keep the workers, or rerun "
                       "with --take-over to serve them from here.\n")
    take_over(owned)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:  # Prefect's runner may handle SIGTERM itself and exit from inside serve()
        with contextlib.suppress(KeyboardInterrupt):
            serve(*deployments, pause_on_shutdown=False)
    finally:
        logger.warning(_stopped_hint(deployments))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # an interrupt that reached the top is a stop, not a crash
        raise SystemExit(0) from None

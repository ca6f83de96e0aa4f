"""Serve every deployment of ``deployments/prefect.yaml`` from one process, no work pool.

    IG1_IMAGES_BUCKET=my-photos IG1_IMAGES_PREFIX=incoming/ python -m prefect_ig1.deployments.serve

The YAML is the one source of truth: the same schedules, triggers, parameters
and concurrency limits as ``prefect deploy --all``. Stops cleanly on SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from pathlib import Path
from types import FrameType
from typing import Any, cast

import yaml
from prefect import Flow, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments.runner import RunnerDeployment
from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron
from pydantic import TypeAdapter

__all__ = ["PREFECT_YAML", "load_deployments", "main"]

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
        )))
    return deployments


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # serve() shuts down its runner on this


def main() -> int:
    for name in ("IG1_IMAGES_BUCKET",):
        if not os.environ.get(name):
            raise SystemExit(f"set {name} (and IG1_IMAGES_PREFIX) to the bucket to watch")
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with contextlib.suppress(KeyboardInterrupt):
        serve(*load_deployments())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

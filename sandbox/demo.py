"""End-to-end demo on embedded defaults: no key, no cloud.

Starts the IG1 emulator on 127.0.0.1, then runs a Prefect flow (ephemeral
mode) that describes generated images, answers a text prompt and a
structured prompt through ``create_response``; runs it again to show that
nothing is paid for twice. ``python -m sandbox.demo``
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel, Field

from .emulator import EmulatorServer
from .sample_images import sample_images

DEMO_KEY = "sk-demo-not-a-real-key"


class ReleaseNote(BaseModel):
    """A one-line release note."""

    title: str = Field(description="A short title.")
    risk: int = Field(description="Risk from 1 (low) to 5 (high).")


def _prepare_environment(emulator: EmulatorServer) -> None:
    home = Path(".demo/prefect").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(home / "storage"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["IG1AI_API_KEY"] = DEMO_KEY
    os.environ["IG1AI_BASE_URL"] = emulator.base_url


def main() -> int:
    with EmulatorServer(api_key=DEMO_KEY, latency=0.05) as emulator:
        _prepare_environment(emulator)
        from prefect import flow

        from ig1 import InputImage, InputMessage, InputText, Response
        from tasks import create_response

        @flow(name="ig1-demo", log_prints=False)
        def demo() -> list[tuple[str, Response]]:
            asks = {name: [InputMessage(role="user", content=[
                InputText(text="Describe this image in one sentence."),
                InputImage.from_bytes(data)])] for name, data in sample_images()[:3]}
            futures = [(name, create_response.submit(message, temperature=0.2))
                       for name, message in asks.items()]
            futures.append(("text prompt", create_response.submit(
                "Write me a nice poem about DevOps.", max_output_tokens=40)))
            futures.append(("structured prompt", create_response.submit(
                "Summarise the release: faster image uploads.", response_format=ReleaseNote)))
            return [(name, future.result()) for name, future in futures]

        for attempt in ("first run", "second run (same requests)"):
            before = emulator.stats.requests
            started = time.perf_counter()
            answers = demo()
            calls = emulator.stats.requests - before
            print(f"\n== {attempt}: {calls} HTTP call(s) to the IG1 emulator at "
                  f"{emulator.base_url}, {time.perf_counter() - started:.1f} s")
            for name, response in answers:
                shown = response.parsed if response.parsed is not None else response.output_text
                print(f"- {name}: {' | '.join(str(shown).splitlines())[:160]}")
                print(f"    from {response.model}, request_id {response.request_id}, "
                      f"{response.usage.total_tokens if response.usage else '?'} tokens")
        print(f"\nCached responses live in {os.environ['PREFECT_LOCAL_STORAGE_PATH']}; "
              "the second run made no HTTP call.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

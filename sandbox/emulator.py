"""Offline IG1 Responses API: a real HTTP server on 127.0.0.1 with switchable faults.

Tests and the demo talk to it over real sockets, so the client's pooling, timeouts,
retries and SSE parsing are exercised exactly as against api.ig1.ai.

    with EmulatorServer() as server:
        server.fail_next("429", count=2)
        httpx.post(f"{server.base_url}/responses", headers=..., json=...)
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
import time
from collections.abc import Sequence
from types import FrameType, TracebackType
from typing import Any

import uvicorn

from ._app import build_app
from ._faults import FAULT_KINDS
from ._settings import EmulatorSettings, EmulatorState, EmulatorStats, apply_changes, parse_mix

__all__ = ["FAULT_KINDS", "EmulatorServer", "EmulatorSettings", "EmulatorStats", "main"]

DEFAULT_API_KEY = "sk-emulator-key"
_NOISE = (
    "ASGI callable returned without completing response.",  # the "drop" fault, on purpose
    "Cancel %s running task(s), timeout graceful shutdown exceeded",  # stop() during a hang
)


class _QuietFaults(logging.Filter):
    """Hide uvicorn's complaints about faults the emulator causes on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _NOISE


_QUIET = _QuietFaults()


def _listening_socket(host: str, port: int) -> socket.socket:
    """IPPROTO_TCP explicitly: with protocol 0 asyncio skips TCP_NODELAY (+~40 ms per request)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class EmulatorServer:
    """IG1's API on a background thread; settings, faults and counters are for the tests."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        **settings: Any,
    ) -> None:
        defaults = EmulatorSettings()
        apply_changes(defaults, settings)
        self._state = EmulatorState(api_key, defaults)
        self._host = host
        self._port = port
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def api_key(self) -> str:
        return self._state.api_key

    @property
    def url(self) -> str:
        """Root URL, e.g. "http://127.0.0.1:54321" (GET /usage lives here)."""
        if self._sock is None:
            raise RuntimeError("the emulator is not started")
        return f"http://{self._host}:{self._sock.getsockname()[1]}"

    @property
    def base_url(self) -> str:
        """What a client uses as its base URL: url + "/v1"."""
        return f"{self.url}/v1"

    @property
    def listening_socket(self) -> socket.socket | None:
        """The socket accepting connections, so tests can check its options."""
        return self._sock

    @property
    def settings(self) -> EmulatorSettings:
        """The live settings; assigning a field takes effect on the next request."""
        return self._state.settings

    @property
    def stats(self) -> EmulatorStats:
        """A consistent snapshot of the counters (copy; read it again to refresh)."""
        return self._state.snapshot_stats()

    def configure(self, **changes: Any) -> None:
        """Change several settings at once, validated; unknown names raise ValueError."""
        self._state.configure(changes)

    def fail_next(self, kind: str, count: int = 1) -> None:
        """Make the next `count` POST /v1/responses fail as `kind` (FIFO, then normal)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {FAULT_KINDS}")
        if count < 0:
            raise ValueError("count must be >= 0")
        self._state.add_faults(kind, count)

    @property
    def pending_faults(self) -> list[str]:
        with self._state.lock:
            return list(self._state.faults)

    def reset(self) -> None:
        """Clear counters and queued faults, and restore the settings given at construction."""
        self._state.reset()

    def start(self, timeout: float = 10.0) -> EmulatorServer:
        """Bind, serve on a daemon thread, and return once it accepts connections.

        After ``stop()``, ``start()`` binds the same port again with the same settings,
        counters and queued faults: clients see an outage, then the same server back.
        """
        if self._thread is not None:
            raise RuntimeError("the emulator is already started")
        self._sock = _listening_socket(self._host, self._port)
        self._port = self._sock.getsockname()[1]
        self._state.stopping.clear()
        config = uvicorn.Config(
            build_app(self._state),
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
        logging.getLogger("uvicorn.error").addFilter(_QUIET)  # adding twice is a no-op
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"ig1-emulator-{self._sock.getsockname()[1]}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the emulator did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop promptly, even with requests hanging (they are cancelled after ~1 s)."""
        server, thread = self._server, self._thread
        if server is not None and thread is not None:
            self._state.stopping.set()  # hanging/latent requests answer now
            server.should_exit = True
            thread.join(timeout=0.5)
            if thread.is_alive():
                server.force_exit = True
                thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._server = self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m prefect_ig1.sandbox.emulator",
        description="Run the offline IG1 API emulator."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY,
                        help="the only key it accepts (default %(default)s): set IG1AI_API_KEY "
                             "to it and IG1AI_BASE_URL to the URL it prints")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per response")
    parser.add_argument("--max-in-flight", type=int, default=None, help="429 above this")
    parser.add_argument("--retry-after", type=float, default=0.0, help="seconds sent on 429")
    parser.add_argument("--shape", choices=("auto", "text", "image"), default="auto")
    parser.add_argument("--budget-requests", type=int, default=None, help="402 after this")
    parser.add_argument("--max-throughput", type=int, default=16, help="reported by /usage")
    parser.add_argument("--usage-commit", type=float, default=1000.0, help="reported by /usage")
    parser.add_argument("--fault-rate", type=float, default=0.0,
                        help="share of requests failing at random (0-1)")
    parser.add_argument("--fault-mix", type=parse_mix, default=None,
                        help='weights of the random faults, e.g. "429=2,500,502,drop"')
    parser.add_argument("--fault-seed", type=int, default=0, help="seed of the random faults")
    parser.add_argument("--image-patch-size", type=int, default=28,
                        help="each input_image bills one input token per patch of this many "
                             "pixels a side, after Qwen's smart_resize (28: Qwen2.5-VL, "
                             "32: Qwen3-VL; default %(default)s)")
    parser.add_argument("--max-image-tokens", type=int, default=16384,
                        help="the most tokens one image costs; larger images are billed as "
                             "scaled down to fit (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve in the foreground until SIGINT/SIGTERM, for benchmarks and manual runs."""
    args = _parser().parse_args(argv)
    server = EmulatorServer(
        args.api_key,
        host=args.host,
        port=args.port,
        latency=args.latency,
        max_in_flight=args.max_in_flight,
        retry_after=args.retry_after,
        shape=args.shape,
        budget_requests=args.budget_requests,
        max_throughput=args.max_throughput,
        usage_commit=args.usage_commit,
        fault_rate=args.fault_rate,
        fault_seed=args.fault_seed,
        image_patch_size=args.image_patch_size,
        max_image_tokens=args.max_image_tokens,
        **({"fault_mix": args.fault_mix} if args.fault_mix else {}),
    )
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with server:
        print(server.base_url, flush=True)
        print(f"IG1AI_BASE_URL={server.base_url} IG1AI_API_KEY={server.api_key}", flush=True)
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The call engine: many IG1 calls of one run, each paid at most once, within bounds.

    with CallEngine(max_concurrency=16) as engine:
        for result in respond_many(prompts, engine=engine, model="my-model"):
            print(result.key, result.response.output_text if result.ok else result.error)

``respond_many`` alone opens and closes an engine of its own. Every flow of this package
(and any user's flow) fans out through here; what it guarantees:

- the content cache is looked up before a call slot is taken, and again once it is held
  (an overlapping run may have paid meanwhile); an answer is stored before its slot is
  freed, so a crash pays again for at most ``max_concurrency`` answers;
- one send of the same request at a time per process (single flight, across runs);
- at most ``max_concurrency`` calls in flight, and one slot of the Prefect global
  concurrency limit ``concurrency_limit_name`` per call for all workers (strict; a slot
  not granted within ``slot_timeout_seconds`` is a transient ``TimeoutError``);
- under ``concurrency_limit_name``, a 429's ``Retry-After`` pauses every worker of the
  limit, not only this process (a Prefect Variable, ``prefect_ig1.tasks.pause``);
- 401/403/402 stop the run before the refused call's slot is freed: no waiting call is
  sent after the first refusal (they raise ``NotAttempted``);
- a transient failure gets one slower second chance after ``retry_delay_seconds``;
- every answer is entered in the run's ``ledger`` (requests, cache hits, tokens, cost by
  model); with ``max_tokens`` / ``max_spend``, a call that could pass the cap (spent plus
  in flight) is not sent, and the run stops as on a 402 (``SpendCapReached``).

Inside a flow run, ``respond_many`` runs each window of ``window_size`` requests as one
Prefect task (a task per call costs more CPU than the call: ``benchmarks/RESULTS.md``);
results stream back as each call completes. The engine is process-local: use it with
Prefect's default thread-pool task runner.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from pydantic import BaseModel

from prefect_ig1.blocks import IG1Credentials, Prices, ResponsesModel
from prefect_ig1.client import AuthenticationError, BudgetExhaustedError, Response, is_transient

from .cache import ResponseCache
from .ledger import Ledger, SpendCap, SpendCapReached
from .pause import SharedPause
from .responses import PreparedCall, create_response, prepare_call, send_cached

__all__ = [
    "CallEngine",
    "CallResult",
    "NotAttempted",
    "check_global_limit",
    "is_run_stopping",
    "respond_many",
]

T = TypeVar("T")
DEFAULT_WINDOW_SIZE = 50


class NotAttempted(Exception):
    """The run stopped (IG1 refused a call: 401/403/402) before this call was sent."""

    def __init__(self) -> None:
        super().__init__("the run stopped (IG1 refused a call) before this call was sent")


def is_run_stopping(exc: BaseException) -> bool:
    """401/403, 402 and the run's own spend cap stop the whole run: every further call would
    fail (or pass the cap) the same way."""
    return isinstance(exc, AuthenticationError | BudgetExhaustedError | SpendCapReached)


@dataclass(frozen=True)
class CallResult:
    """One request's outcome: its key, the answer or the error, and whether it was free."""

    key: str
    response: Response | None = None
    error: BaseException | None = None
    from_cache: bool = False

    @property
    def ok(self) -> bool:
        return self.response is not None

    @property
    def input_tokens(self) -> int:
        """Tokens paid for by this call (0 for a cache hit)."""
        usage = self.response.usage if self.response and not self.from_cache else None
        return usage.input_tokens if usage else 0

    @property
    def output_tokens(self) -> int:
        usage = self.response.usage if self.response and not self.from_cache else None
        return usage.output_tokens if usage else 0


_inflight: dict[str, tuple[CallEngine, Future[tuple[Response, bool]]]] = {}
_inflight_lock = threading.Lock()


class CallEngine:
    """One run's calls: its bound, its stop switch, its request count and its workers.

    A plain class on purpose: Prefect passes it to window tasks as it is (it does not
    rebuild plain objects), so every window of the run shares this one instance.
    """

    def __init__(self, *, max_concurrency: int = 8, concurrency_limit_name: str | None = None,
                 slot_timeout_seconds: float = 600.0, retry_delay_seconds: float = 10.0,
                 cache: ResponseCache | None = None, workers: int | None = None,
                 max_tokens: int | None = None, max_spend: float | None = None,
                 prices: Prices | None = None) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency
        self.concurrency_limit_name = concurrency_limit_name
        self.slot_timeout_seconds = slot_timeout_seconds
        self.retry_delay_seconds = retry_delay_seconds
        self.cache = cache or ResponseCache.for_task(create_response)
        self.stop_reason: BaseException | None = None
        self.requests_sent = 0
        self.ledger = Ledger()
        self.cap = SpendCap(self.ledger, max_tokens=max_tokens, max_spend=max_spend,
                            prices=prices)
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self.shared_pause = SharedPause(concurrency_limit_name) if concurrency_limit_name else None
        """Tells the limit's other workers of this run's 429s, and holds it on theirs."""
        self._workers = ThreadPoolExecutor(workers or 2 * max_concurrency + 2,
                                           thread_name_prefix="ig1-call")

    def __enter__(self) -> CallEngine:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the work submitted, then free the threads: nothing of the run outlives it."""
        self._workers.shutdown(wait=True)
        if self.shared_pause is not None:
            self.shared_pause.close()

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def stop(self, reason: BaseException) -> None:
        """Send nothing more in this run (the first reason is kept)."""
        with self._lock:
            self.stop_reason = self.stop_reason or reason

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn`` on the run's workers (they may wait for call slots)."""
        return self._workers.submit(fn, *args, **kwargs)

    def call(self, call: PreparedCall, *, counted: bool = True) -> tuple[Response, bool]:
        """``(response, from_cache)`` under every guarantee above; ``counted`` calls add
        to ``requests_sent`` (a flow's summary calls may keep their own count)."""
        key = call.cache_key

        def pay() -> tuple[Response, bool]:
            hit = self._hit(call)
            if hit is not None:
                return hit, True
            try:
                return self._send(call, counted)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # The client's quick retries are spent: one slower second chance, like
                # create_response's task retry, before the error is the caller's.
                time.sleep(self.retry_delay_seconds)
                return self._send(call, counted)

        return self._once(key, pay, on_shared=lambda: self.ledger.hit(call.request.model))

    def cached(self, key: str, call: PreparedCall) -> CallResult | None:
        """``call``'s answer when the cache already holds it, else None (nothing sent)."""
        hit = self._hit(call)
        return None if hit is None else CallResult(key, response=hit, from_cache=True)

    def _hit(self, call: PreparedCall) -> Response | None:
        """The cached answer to ``call``, counted as a hit on the run's ledger."""
        hit = self.cache.get(call.cache_key, text_format=call.text_format)
        if hit is not None:
            self.ledger.hit(call.request.model)
        return hit

    def result(self, key: str, call: PreparedCall | BaseException) -> CallResult:
        """``call`` as a ``CallResult``: errors are returned, never raised."""
        if isinstance(call, BaseException):
            return CallResult(key, error=call)
        try:
            response, cached = self.call(call)
        except Exception as exc:
            return CallResult(key, error=exc)
        return CallResult(key, response=response, from_cache=cached)

    def _send(self, call: PreparedCall, counted: bool) -> tuple[Response, bool]:
        model = call.request.model
        with self._slots, global_slot(self.concurrency_limit_name, self.slot_timeout_seconds):
            if self.stopped:
                raise NotAttempted
            if self.shared_pause is not None:
                self.shared_pause.watch(call.credentials.get_client().throttle)
            if self.cap.active:
                try:
                    self.cap.admit()  # may wait for the run's first answer
                except SpendCapReached as exc:
                    self.stop(exc)
                    raise NotAttempted from exc
                if self.stopped:  # the run stopped while this call waited
                    self.cap.settle(False)
                    raise NotAttempted
            sent = answered = False

            def count() -> None:
                nonlocal sent
                sent = True
                if counted:
                    with self._lock:
                        self.requests_sent += 1

            try:
                # Looked up again now that a slot is ours; stored before the slot is freed.
                response, cached = send_cached(call, self.cache, on_send=count)
                if cached:
                    self.ledger.hit(model)
                else:
                    self.ledger.paid(model, response, call.prices)
                    answered = True
            except Exception as exc:
                if sent:
                    self.ledger.failed(model)
                if is_run_stopping(exc):  # before the slot is freed: no waiting call may send
                    self.stop(exc)
                raise
            finally:
                if self.cap.active:
                    self.cap.settle(answered)
            return response, cached

    def _once(self, key: str, produce: Callable[[], tuple[Response, bool]], *,
              on_shared: Callable[[], None]) -> tuple[Response, bool]:
        """Single flight per process: the same request from two callers at once, of this run
        or of another run in this process, is paid for once. Another run's failure (its stop,
        its credentials) is not this run's: then this caller tries itself."""
        while True:
            with _inflight_lock:
                entry = _inflight.get(key)
                if entry is None:
                    pending: Future[tuple[Response, bool]] = Future()
                    _inflight[key] = (self, pending)
                    break
            owner, waited = entry
            try:
                response, _ = waited.result()
            except BaseException:
                if owner is self:
                    raise
                continue  # the cache first, then a call of its own
            on_shared()
            return response, True
        try:
            result = produce()
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        finally:
            with _inflight_lock:
                _inflight.pop(key, None)
        pending.set_result(result)
        return result


def global_slot(limit_name: str | None, timeout_seconds: float | None = None
                ) -> AbstractContextManager[Any]:
    """One slot of the Prefect global concurrency limit shared by all runs, if one is named;
    waiting longer than ``timeout_seconds`` raises TimeoutError (a retryable failure)."""
    if not limit_name:
        return nullcontext()
    return concurrency(limit_name, occupy=1, strict=True, timeout_seconds=timeout_seconds)


def check_global_limit(limit_name: str) -> None:
    """Fail before any work when the named limit does not exist (say how to create it)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_global_concurrency_limit_by_name(limit_name)
    except ObjectNotFound:
        raise ValueError(
            f"The global concurrency limit {limit_name!r} does not exist on this Prefect "
            f"server: create it with `prefect gcl create {limit_name} --limit N` (N calls in "
            "flight for all workers), or leave concurrency_limit_name unset.") from None


class _Job:
    """One request of a window: opaque to Prefect's parameter handling (not rebuilt)."""

    __slots__ = ("call", "key")

    def __init__(self, key: str, call: PreparedCall | BaseException) -> None:
        self.key = key
        self.call = call


@task(name="respond-window", cache_policy=NO_CACHE, persist_result=False,
      task_run_name="respond-window-{first_key}")
def respond_window(jobs: list[_Job], engine: CallEngine, results: queue.Queue[CallResult],
                   first_key: str = "") -> int:
    """One Prefect task for a window of calls; each result is streamed as it completes."""
    futures = [engine.submit(_run_job, engine, job, results) for job in jobs]
    for future in futures:
        future.result()
    return len(futures)


def _run_job(engine: CallEngine, job: _Job, results: queue.Queue[CallResult]) -> None:
    try:
        results.put(engine.result(job.key, job.call))
    except BaseException as exc:  # a result for every job, or the consumer would wait forever
        results.put(CallResult(job.key, error=exc))


def respond_many(
    requests: Iterable[Any],
    *,
    engine: CallEngine | None = None,
    model: ResponsesModel | str | None = None,
    credentials: IG1Credentials | str | None = None,
    instructions: str | None = None,
    response_format: type[BaseModel] | dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    max_concurrency: int = 8,
    concurrency_limit_name: str | None = None,
    retry_delay_seconds: float = 10.0,
    window_size: int = DEFAULT_WINDOW_SIZE,
) -> Iterator[CallResult]:
    """Results of many calls, as they complete (not in input order).

    Each request is a ``PreparedCall``, an input (a prompt, or a list of messages) built
    with ``model``/``instructions``/``response_format``/``params``, or a ``(key, either)``
    pair; the key defaults to the request's position. A request that is invalid comes back
    as a result with its error; nothing else is lost. Requests are read lazily: at most
    ~2 x ``max_concurrency`` (or two windows) are held at once.
    """
    if window_size < 1:
        raise ValueError(f"window_size must be at least 1, got {window_size}")
    with ExitStack() as stack:
        if engine is None:
            if concurrency_limit_name:
                check_global_limit(concurrency_limit_name)
            engine = stack.enter_context(CallEngine(
                max_concurrency=max_concurrency, concurrency_limit_name=concurrency_limit_name,
                retry_delay_seconds=retry_delay_seconds))

        def prepared(position: int, request: Any) -> _Job:
            key, item = (request if isinstance(request, tuple) and len(request) == 2
                         and isinstance(request[0], str) else (str(position), request))
            if isinstance(item, PreparedCall):
                return _Job(key, item)
            try:
                return _Job(key, prepare_call(item, model=model, credentials=credentials,
                                              instructions=instructions,
                                              response_format=response_format, params=params))
            except Exception as exc:
                return _Job(key, exc)

        jobs = (prepared(position, request) for position, request in enumerate(requests))
        yield from _fan_out(jobs, engine, window_size)


def _fan_out(jobs: Iterator[_Job], engine: CallEngine, window_size: int) -> Iterator[CallResult]:
    results: queue.Queue[CallResult] = queue.Queue()
    in_flow = FlowRunContext.get() is not None
    # Two windows may wait at once: the next one is sent while the last answers of the
    # current one come in, so the calls never idle on a window's slowest answer.
    limit = max(2 * engine.max_concurrency, 2 * window_size)
    windows: list[PrefectFuture[int]] = []
    waiting = 0  # submitted, not yet yielded

    def take(block: bool) -> Iterator[CallResult]:
        nonlocal waiting
        while waiting:
            try:
                result = results.get(timeout=1.0) if block else results.get_nowait()
            except queue.Empty:
                if not block:
                    return
                _raise_failed_window(windows)
                continue
            waiting -= 1
            yield result
            if block:
                return

    # A cache in a local folder answers in ~40 us: answered here, such a request costs no
    # thread, no window task and no queue (a rerun is mostly these). A remote cache is
    # read by the workers, in parallel.
    inline = engine.cache.is_local
    while True:
        window: list[_Job] = []
        for job in jobs:
            hit = engine.cached(job.key, job.call) if inline and isinstance(
                job.call, PreparedCall) else None
            if hit is not None:
                yield hit
                continue
            window.append(job)
            if len(window) == window_size:
                break
        if not window:
            break
        while waiting + len(window) > limit:
            yield from take(block=True)
        waiting += len(window)
        if in_flow:
            windows.append(respond_window.submit(window, engine, results,
                                                 first_key=window[0].key))
        else:
            for job in window:
                engine.submit(_run_job, engine, job, results)
        yield from take(block=False)
    while waiting:
        yield from take(block=True)
    for future in windows:
        future.result()


def _raise_failed_window(windows: list[PrefectFuture[int]]) -> None:
    """A window task that failed outside its calls (Prefect itself) would leave its results
    missing: raise its error instead of waiting forever."""
    for future in windows:
        if future.state.is_failed() or future.state.is_crashed():
            future.result()

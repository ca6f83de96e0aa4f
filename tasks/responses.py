"""``create_response``: a Prefect task wrapping exactly one IG1 Responses call.

Cached by content (``prefect_ig1.tasks.cache``), so the same request is never paid for
twice, across flow runs and processes sharing result storage; retried by the
task only for transient failures, after the client's own quick retries.

The cache is read and written in the task's body, as JSON only (``send_cached``),
not by Prefect's cache policy: Prefect's result records may name pickle as their
serializer, and a shared result storage must never run what it holds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, cast

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import FlowRunContext, TaskRunContext
from prefect.settings import get_current_settings
from prefect.tasks import Task
from pydantic import BaseModel

from prefect_ig1.blocks import IG1Credentials, Prices, ResponsesModel
from prefect_ig1.client import Response, ResponsesRequest, is_transient

from .cache import ResponseCache, answer_schema, response_cache_key
from .ledger import flow_run_ledger, usage_rows

__all__ = [
    "PreparedCall",
    "acreate_response",
    "aprepare_call",
    "aresolve_credentials",
    "aresolve_model",
    "asend_cached",
    "create_response",
    "prepare_call",
    "resolve_credentials",
    "resolve_model",
    "retry_on_transient_failure",
    "send_cached",
]

logger = logging.getLogger("prefect_ig1.tasks.responses")
_BLOCK_MEMO_SECONDS = 60.0
_block_memo: dict[str, tuple[float, ResponsesModel]] = {}
_memo_lock = threading.Lock()


def resolve_model(model: ResponsesModel | str | None) -> ResponsesModel:
    """A profile from a block, a saved block's name, or a bare model id.

    A block found is remembered for a minute (one API read per run, not per call); a name
    that is no block is not, so a profile saved meanwhile is found on the next call.
    """
    if isinstance(model, ResponsesModel):
        return model
    if model is None:
        return ResponsesModel()
    block = _remembered(model)
    if block is None:
        try:
            block = cast(ResponsesModel,
                         ResponsesModel.load(model, _sync=True))  # type: ignore[call-arg]
        except ValueError:  # no such block: the string is a model id
            return ResponsesModel(model=model)
        _remember(model, block)
    return block


async def aresolve_model(model: ResponsesModel | str | None) -> ResponsesModel:
    """Async twin of ``resolve_model``: loads with Prefect's async API."""
    if isinstance(model, ResponsesModel):
        return model
    if model is None:
        return ResponsesModel()
    block = _remembered(model)
    if block is None:
        try:
            block = await ResponsesModel.aload(model)
        except ValueError:
            return ResponsesModel(model=model)
        _remember(model, block)
    return block


def _remembered(name: str) -> ResponsesModel | None:
    with _memo_lock:
        seen = _block_memo.get(name)
    if seen is None or time.monotonic() - seen[0] > _BLOCK_MEMO_SECONDS:
        return None
    return seen[1]


def _remember(name: str, block: ResponsesModel) -> None:
    with _memo_lock:
        _block_memo[name] = (time.monotonic(), block)


def resolve_credentials(credentials: IG1Credentials | str | None,
                        profile: ResponsesModel) -> IG1Credentials:
    """A credentials block, a saved block's name, or the profile's (else the environment's)."""
    if isinstance(credentials, IG1Credentials):
        return credentials
    if isinstance(credentials, str):
        return cast(IG1Credentials,
                    IG1Credentials.load(credentials, _sync=True))  # type: ignore[call-arg]
    return profile.get_credentials()


async def aresolve_credentials(credentials: IG1Credentials | str | None,
                               profile: ResponsesModel) -> IG1Credentials:
    """Async twin of ``resolve_credentials``."""
    if isinstance(credentials, str):
        return await IG1Credentials.aload(credentials)
    return resolve_credentials(credentials, profile)


@dataclass(frozen=True)
class PreparedCall:
    """Everything one call needs, resolved once: where to send what."""

    credentials: IG1Credentials
    request: ResponsesRequest
    text_format: type[BaseModel] | None
    prices: Prices | None = None
    """The profile's token prices, for the run's ledger (never part of the cache key)."""

    @cached_property
    def cache_key(self) -> str:
        """Computed once: the engine, the cache and the log ask for it up to five times a
        call, and each time would re-read the whole request (the image's base64 included)."""
        return response_cache_key(self.request, base_url=self.credentials.base_url,
                                  text_format=self.text_format)


def prepare_call(
    input: Any,
    *,
    model: ResponsesModel | str | None = None,
    credentials: IG1Credentials | str | None = None,
    instructions: str | None = None,
    response_format: type[BaseModel] | dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> PreparedCall:
    """Resolve blocks and validate the request: shared by the tasks and batch code."""
    profile = resolve_model(model)
    return _build_call(profile, resolve_credentials(credentials, profile), input,
                       instructions, response_format, params)


async def aprepare_call(
    input: Any,
    *,
    model: ResponsesModel | str | None = None,
    credentials: IG1Credentials | str | None = None,
    instructions: str | None = None,
    response_format: type[BaseModel] | dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> PreparedCall:
    """Async twin of ``prepare_call`` (blocks loaded with Prefect's async API)."""
    profile = await aresolve_model(model)
    return _build_call(profile, await aresolve_credentials(credentials, profile), input,
                       instructions, response_format, params)


def _build_call(profile: ResponsesModel, credentials: IG1Credentials, input: Any,
                instructions: str | None,
                response_format: type[BaseModel] | dict[str, Any] | None,
                params: dict[str, Any] | None) -> PreparedCall:
    request = profile.build_request(input, instructions=instructions,
                                    response_format=response_format, **(params or {}))
    text_format = response_format if isinstance(response_format, type) else None
    return PreparedCall(credentials, request, text_format, profile.prices)


def retry_on_transient_failure(task: Task[Any, Any], task_run: TaskRun, state: State) -> bool:
    """Task-level retry predicate: only what a later attempt can fix (never 4xx, never 402)."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


_TASK_OPTIONS: dict[str, Any] = {
    # The answer is cached by send_cached, as JSON; Prefect stores nothing of its own.
    "cache_policy": NO_CACHE,
    "persist_result": False,
    "retries": 2,
    "retry_delay_seconds": [10, 60],
    "retry_condition_fn": retry_on_transient_failure,
    "tags": ["ig1"],
}


def send_cached(call: PreparedCall, cache: ResponseCache, *, refresh: bool = False,
                on_send: Callable[[], None] | None = None) -> tuple[Response, bool]:
    """``(response, from_cache)``: the cached answer, else one call whose answer is stored
    (when ``is_cacheable``). ``refresh`` skips the lookup, not the store; ``on_send`` is
    called just before the request goes out (the engine counts requests with it)."""
    if not refresh:
        hit = cache.get(call.cache_key, text_format=call.text_format)
        if hit is not None:
            return hit, True
    if on_send is not None:
        on_send()
    response = call.credentials.get_client().send(call.request, text_format=call.text_format)
    _store(cache, call, response)
    return response, False


async def asend_cached(call: PreparedCall, cache: ResponseCache, *,
                       refresh: bool = False) -> tuple[Response, bool]:
    """Async twin of ``send_cached``."""
    if not refresh:
        hit = await cache.aget(call.cache_key, text_format=call.text_format)
        if hit is not None:
            return hit, True
    client = call.credentials.get_async_client()
    response = await client.send(call.request, text_format=call.text_format)
    await asyncio.to_thread(_store, cache, call, response)
    return response, False


def _store(cache: ResponseCache, call: PreparedCall, response: Response) -> None:
    # The answer is paid for: a storage failure costs a later hit, not this answer.
    # With a pydantic text_format the client has validated the answer already.
    schema = answer_schema(call.request) if call.text_format is None else None
    try:
        cache.put(call.cache_key, response, schema=schema)
    except Exception as exc:
        logger.warning("IG1 answer not cached under %s (%s: %s)", call.cache_key,
                       type(exc).__name__, exc)


def _task_cache(default: Task[Any, Any]) -> tuple[ResponseCache, bool]:
    """The running task's cache and refresh flag (``with_options`` makes a copy of the task)."""
    context = TaskRunContext.get()
    task = context.task if context is not None else default
    refresh = task.refresh_cache
    if refresh is None:
        refresh = get_current_settings().tasks.refresh_cache
    return ResponseCache.for_task(task), refresh


def _log_answer(call: PreparedCall, response: Response, cached: bool) -> None:
    """Log the answer, and keep the flow run's ``ig1-usage`` artifact up to date."""
    usage = response.usage
    get_run_logger().info(
        "IG1 %s %s (status %s, %s tokens, request_id %s, cache key %s)",
        call.request.model, "answer from the cache" if cached else "answered",
        response.status, usage.total_tokens if usage else "?",
        response.request_id, call.cache_key[-12:],
    )
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    ledger = flow_run_ledger(str(context.flow_run.id))
    if cached:
        ledger.hit(call.request.model)
    else:
        ledger.paid(call.request.model, response, call.prices)
    create_table_artifact(  # type: ignore[call-arg]
        key="ig1-usage", table=usage_rows(ledger.rows()), _sync=True,  # also from acreate
        description=f"IG1 usage of the create_response calls of flow run "
                    f"{context.flow_run.name}")


@task(name="create_response", **_TASK_OPTIONS)
def create_response(
    input: Any,
    *,
    model: ResponsesModel | str | None = None,
    credentials: IG1Credentials | str | None = None,
    instructions: str | None = None,
    response_format: type[BaseModel] | dict[str, Any] | None = None,
    **params: Any,
) -> Response:
    """One IG1 Responses call. ``params`` are sampling parameters over the profile's defaults.

    Set ``cache_expiration`` / ``refresh_cache`` with ``create_response.with_options(...)``.
    """
    call = prepare_call(input, model=model, credentials=credentials, instructions=instructions,
                        response_format=response_format, params=params)
    cache, refresh = _task_cache(create_response)
    response, cached = send_cached(call, cache, refresh=refresh)
    _log_answer(call, response, cached)
    return response


@task(name="acreate_response", **_TASK_OPTIONS)
async def acreate_response(
    input: Any,
    *,
    model: ResponsesModel | str | None = None,
    credentials: IG1Credentials | str | None = None,
    instructions: str | None = None,
    response_format: type[BaseModel] | dict[str, Any] | None = None,
    **params: Any,
) -> Response:
    """Async twin of ``create_response`` (same cache, same retries)."""
    call = await aprepare_call(input, model=model, credentials=credentials,
                               instructions=instructions, response_format=response_format,
                               params=params)
    cache, refresh = _task_cache(acreate_response)
    response, cached = await asend_cached(call, cache, refresh=refresh)
    _log_answer(call, response, cached)
    return response

"""What real OpenAI-compatible servers add to IG1's documented shapes, switched on per setting.

The defaults leave replies exactly as IG1 documents them. Each switch adds one
thing seen from OpenAI or vLLM (reasoning items and deltas, function calls,
``[DONE]``, fractional ``created_at``, nulls where OpenAI's types allow them,
a 200 whose status is "failed", error events in several shapes), so the
client is tested against what it will meet, not only against the page.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Literal

ErrorEvent = Literal["response.failed", "error", "data_only"]
ERROR_EVENTS: tuple[str, ...] = ("response.failed", "error", "data_only")
DONE_FRAME = b"data: [DONE]\n\n"
REASONING = "The user wants an echo. I will repeat their words."
FRACTION = 0.734  # 1754925861.734: what OpenAI's SDK accepts for created_at


@dataclass(frozen=True)
class Dialect:
    """The switches of one reply (a snapshot of the emulator settings)."""

    reasoning: bool = False
    function_call: bool = False
    fractional_created: bool = False
    null_fields: bool = False
    failed_code: str | None = None
    error_event: ErrorEvent = "response.failed"


def _reasoning_item(number: int) -> dict[str, Any]:
    # vLLM's ResponseReasoningItem: reasoning_text content, empty summary.
    return {"id": f"rs_{number:012d}", "type": "reasoning", "summary": [],
            "content": [{"type": "reasoning_text", "text": REASONING}],
            "encrypted_content": None, "status": None}


def _function_call_item(number: int) -> dict[str, Any]:
    # openai/types/responses/response_function_tool_call.py
    return {"id": f"fc_{number:012d}", "type": "function_call", "call_id": f"call_{number}",
            "name": "lookup", "arguments": '{"query": "echo"}', "status": "completed"}


def _extra_items(dialect: Dialect, number: int) -> list[dict[str, Any]]:
    items = []
    if dialect.reasoning:
        items.append(_reasoning_item(number))
    if dialect.function_call:
        items.append(_function_call_item(number))
    return items


def dress_body(body: dict[str, Any], dialect: Dialect, number: int) -> dict[str, Any]:
    """A finished reply body (either shape) with the dialect's additions."""
    body = copy.deepcopy(body)
    if dialect.fractional_created:
        key = "created_at" if "created_at" in body else "created"
        body[key] = body[key] + FRACTION
    if "created_at" in body and body.get("output"):  # the text shape: items are lists
        body["output"] = [*_extra_items(dialect, number), *body["output"]]
        if dialect.null_fields:
            body["output"].append({"id": f"msg_null_{number}", "type": "message",
                                   "role": "assistant", "status": "completed", "content": None})
    if dialect.null_fields:
        for item in body.get("output") or []:
            parts = item.get("content")
            for part in parts if isinstance(parts, list) else [parts] if parts else []:
                if part.get("type") == "output_text":
                    part["annotations"] = None
                    part["logprobs"] = None
        if isinstance(body.get("usage"), dict):
            body["usage"]["input_tokens_details"] = None
            body["usage"]["output_tokens_details"] = None
    return body


def failed_body(body: dict[str, Any], code: str) -> dict[str, Any]:
    """A 200 whose status is "failed": no output, an ``error`` object (OpenAI's ResponseError)."""
    return {**body, "status": "failed", "output": [], "output_text": "", "usage": None,
            "error": {"code": code, "message": f"The model failed to answer ({code})"}}


def dress_events(events: list[dict[str, Any]], dialect: Dialect,
                 number: int) -> list[dict[str, Any]]:
    """A stream's events with reasoning/function-call items ahead of the message."""
    extras = _extra_items(dialect, number)
    shift = len(extras)
    dressed: list[dict[str, Any]] = []
    for event in events:
        event = copy.deepcopy(event)
        if "output_index" in event:
            event["output_index"] += shift
        if event["type"] == "response.output_item.added" and event["output_index"] == shift:
            dressed += _item_events(extras)
        if event["type"] in ("response.completed", "response.incomplete"):
            event["response"] = dress_body(event["response"], dialect, number)
        elif "response" in event and dialect.fractional_created:
            event["response"]["created_at"] += FRACTION
        dressed.append(event)
    return dressed


def _item_events(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where = {"item_id": item["id"], "output_index": index}
        events.append({"type": "response.output_item.added", "output_index": index,
                       "item": {**item, "content": [], "status": "in_progress"}})
        if item["type"] == "reasoning":  # vLLM's reasoning stream: deltas, then done
            words = REASONING.split(" ")
            events += [{"type": "response.reasoning_text.delta", **where, "content_index": 0,
                        "delta": word + (" " if n < len(words) - 1 else "")}
                       for n, word in enumerate(words)]
            events.append({"type": "response.reasoning_text.done", **where, "content_index": 0,
                           "text": REASONING})
        else:
            events.append({"type": "response.function_call_arguments.done", **where,
                           "arguments": item["arguments"]})
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    return events


def failed_events(events: list[dict[str, Any]], code: str,
                  style: ErrorEvent) -> list[dict[str, Any]]:
    """The stream of a failure: created, in_progress, then the error in the chosen shape."""
    head = [event for event in events if event["type"] in ("response.created",
                                                           "response.in_progress")]
    message = f"The model failed to answer ({code})"
    if style == "response.failed":
        final = failed_body(head[0]["response"], code)
        return [*head, {"type": "response.failed", "response": final}]
    if style == "error":  # openai/types/responses/response_error_event.py
        return [*head, {"type": "error", "code": code, "message": message, "param": None}]
    return [*head, {"error": {"message": message, "type": code, "param": None, "code": code}}]


def frame(event: dict[str, Any]) -> bytes:
    """One SSE frame; an event without ``type`` is data-only, as vLLM sends its errors."""
    data = json.dumps(event)
    if "type" not in event:
        return f"data: {data}\n\n".encode()
    return f"event: {event['type']}\ndata: {data}\n\n".encode()

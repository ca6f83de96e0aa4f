"""Deterministic reply bodies in both documented shapes, and the SSE events of a streamed one."""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from ._request import ParsedRequest
from ._schema_instance import schema_instance

_counter = itertools.count(1)


@dataclass(frozen=True)
class Reply:
    """What the model "said", with the token counts the usage block reports."""

    text: str
    incomplete: bool
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class ReplyIds:
    """Ids and timestamp of one reply; unique per reply even though the text is deterministic."""

    number: int
    token: str
    created: int

    @classmethod
    def new(cls) -> ReplyIds:
        return cls(number=next(_counter), token=secrets.token_hex(8), created=int(time.time()))


def make_reply(
    request: ParsedRequest, image_lines: list[str], body_size: int, json_invalid: bool,
    image_tokens: int = 0,
) -> Reply:
    """Echo what was received (instructions, user text, image facts), then apply the word cap.

    Input tokens: ~4 bytes of JSON per text token, the image data URLs left out (a model
    bills an image by its patches, ``image_tokens``, not by its base64)."""
    lines = []
    if request.instructions:
        lines.append(f"Instructions: {request.instructions}")
    lines.append("Echo: " + " ".join(request.user_texts))
    lines.extend(image_lines)
    text = "\n".join(lines)
    if request.text_format is not None:
        if request.text_format["type"] == "json_schema":
            value = schema_instance(request.text_format["schema"], " ".join(text.split()))
        else:
            value = {"echo": text}
        text = json.dumps(value, ensure_ascii=False)
        if json_invalid:
            text = "Sure! Here is the JSON: " + text[:-1]
    text_bytes = body_size - sum(image.url_chars for image in request.images)
    words = text.split()
    incomplete = request.max_words is not None and len(words) > request.max_words
    if incomplete:
        words = words[: request.max_words]
        text = " ".join(words)
    return Reply(
        text=text,
        incomplete=incomplete,
        input_tokens=max(1, text_bytes // 4) + image_tokens,
        output_tokens=len(words),
    )


def text_shape(
    request: ParsedRequest, reply: Reply | None, ids: ReplyIds, status: str | None = None
) -> dict[str, Any]:
    """The seed's "Text Response"; `reply=None` gives the in-progress skeleton for SSE."""
    body = request.body
    final = status or ("incomplete" if reply and reply.incomplete else "completed")
    output = [] if reply is None else [_text_item(reply, ids, final)]
    return {
        "background": False,
        "created_at": ids.created,
        "id": f"resp_{ids.number:012d}",
        "incomplete_details": (
            {"reason": "max_output_tokens"} if reply and reply.incomplete else None
        ),
        "input_messages": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": request.max_words,
        "max_tool_calls": None,
        "metadata": body.get("metadata"),
        "model": request.model,
        "object": "response",
        "output": output,
        "output_messages": None,
        "output_text": reply.text if reply else "",
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "prompt": None,
        "reasoning": None,
        "service_tier": "auto",
        "status": final,
        "temperature": body.get("temperature"),
        "text": body.get("text"),
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": None,
        "top_p": body.get("top_p"),
        "truncation": "disabled",
        "usage": None if reply is None else _text_usage(reply),
        "user": None,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"annotations": [], "logprobs": None, "text": text, "type": "output_text"}


def _text_item(reply: Reply, ids: ReplyIds, status: str) -> dict[str, Any]:
    return {
        "content": [_text_part(reply.text)],
        "id": f"msg_{ids.number:012d}",
        "phase": None,
        "role": "assistant",
        "status": status,
        "type": "message",
    }


def _text_usage(reply: Reply) -> dict[str, Any]:
    return {
        "input_tokens": reply.input_tokens,
        "input_tokens_details": {
            "cached_tokens": 0,
            "cached_tokens_per_turn": [],
            "input_tokens_per_turn": [],
        },
        "output_tokens": reply.output_tokens,
        "output_tokens_details": {
            "output_tokens_per_turn": [],
            "reasoning_tokens": 0,
            "tool_output_tokens": 0,
            "tool_output_tokens_per_turn": [],
        },
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }


def image_shape(request: ParsedRequest, reply: Reply, ids: ReplyIds) -> dict[str, Any]:
    """The seed's "Image Response": `created`, content as ONE object, no output_text/status."""
    return {
        "id": f"resp-{ids.token}",
        "object": "responses",
        "created": ids.created,
        "model": request.model,
        "output": [
            {
                "type": "message",
                "id": f"msg-{ids.token}",
                "role": "assistant",
                "content": {"type": "output_text", "text": reply.text, "annotations": []},
                "finish_reason": "length" if reply.incomplete else "stop",
            }
        ],
        "usage": {
            "input_tokens": reply.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": reply.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": reply.input_tokens + reply.output_tokens,
        },
    }


def text_chunks(text: str, words_per_chunk: int = 3) -> list[str]:
    """Deltas of a few words each whose concatenation is exactly `text`."""
    pieces = re.findall(r"\S+\s*", text) or [text]
    pieces[0] = text[: len(text) - len(text.lstrip())] + pieces[0] if text.strip() else text
    chunks = [
        "".join(pieces[i : i + words_per_chunk]) for i in range(0, len(pieces), words_per_chunk)
    ]
    assert "".join(chunks) == text
    return chunks


def sse_events(request: ParsedRequest, reply: Reply, ids: ReplyIds) -> list[dict[str, Any]]:
    """OpenAI's Responses stream; like vLLM it ends with response.completed, even if truncated."""
    item_id = f"msg_{ids.number:012d}"
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    full = text_shape(request, reply, ids)
    item = full["output"][0]
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": text_shape(request, None, ids, "in_progress")},
        {"type": "response.in_progress", "response": text_shape(request, None, ids, "in_progress")},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**item, "content": [], "status": "in_progress"},
        },
        {"type": "response.content_part.added", **where, "part": _text_part("")},
    ]
    events += [
        {"type": "response.output_text.delta", **where, "delta": chunk, "logprobs": []}
        for chunk in text_chunks(reply.text)
    ]
    events += [
        {"type": "response.output_text.done", **where, "text": reply.text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": item["content"][0]},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": full},
    ]
    return [{**event, "sequence_number": n} for n, event in enumerate(events)]


def sse_frame(event: dict[str, Any]) -> bytes:
    """One server-sent event: `event:` line, `data:` line, blank line."""
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()

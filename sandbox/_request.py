"""Reading a POST /v1/responses body the way the emulator needs it, refusing what IG1 would."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

UNKNOWN_MODEL = "unknown-model"
_DETAILS = ("auto", "low", "high")


class RequestRefused(Exception):
    """The request is wrong in a way IG1 answers with an error status (400/404)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ImagePart:
    """One input_image, still encoded; decoding is CPU work done off the event loop."""

    where: str
    mime: str
    data: bytes
    detail: str | None
    url_chars: int = 0
    """Length of the data URL in the body: bytes that are image, not text, for the token count."""


@dataclass(frozen=True)
class SeenImage:
    """What the emulator read of one image: the line it echoes and the size it bills."""

    line: str
    width: int
    height: int


@dataclass(frozen=True)
class ParsedRequest:
    """The parts of a request that shape the reply."""

    body: dict[str, Any]
    model: str
    user_texts: list[str] = field(default_factory=list)
    system_texts: list[str] = field(default_factory=list)
    images: list[ImagePart] = field(default_factory=list)
    stream: bool = False
    max_words: int | None = None
    text_format: dict[str, Any] | None = None

    @property
    def instructions(self) -> str | None:
        parts = [self.body["instructions"]] if self.body.get("instructions") else []
        return " ".join([*parts, *self.system_texts]) or None


def load_json_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 like the provider's."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestRefused(400, f"Request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestRefused(400, "Request body must be a JSON object")
    return body


def parse_request(body: dict[str, Any]) -> ParsedRequest:
    """Validate the fields the emulator acts on; extra (vLLM) keys pass, as on the real server."""
    for name in ("model", "input"):
        if name not in body:
            raise RequestRefused(400, f"Missing required field: {name}")
    model, raw_input = body["model"], body["input"]
    if not isinstance(model, str) or not model:
        raise RequestRefused(400, "Field 'model' must be a non-empty string")
    if not isinstance(raw_input, (str, list)):
        raise RequestRefused(400, "Field 'input' must be a string or an array")
    if body.get("previous_response_id") is not None:
        raise RequestRefused(
            404,
            "previous_response_id is not supported: IG1 AI stores no responses (zero retention);"
            " resend the history in 'input'",
        )
    if model == UNKNOWN_MODEL:
        raise RequestRefused(404, f"model not found: {model}")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestRefused(400, "Field 'stream' must be a boolean")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RequestRefused(400, f"Field '{name}' must be a number")
    users: list[str] = []
    systems: list[str] = []
    images: list[ImagePart] = []
    if isinstance(raw_input, str):
        users.append(raw_input)
    else:
        for index, item in enumerate(raw_input):
            _read_item(item, f"input[{index}]", users, systems, images)
    return ParsedRequest(
        body=body,
        model=model,
        user_texts=users,
        system_texts=systems,
        images=images,
        stream=stream,
        max_words=_max_words(body),
        text_format=_text_format(body),
    )


def _read_item(
    item: Any, where: str, users: list[str], systems: list[str], images: list[ImagePart]
) -> None:
    if not isinstance(item, dict) or item.get("type", "message") != "message":
        raise RequestRefused(400, f"{where}: only message items (role + content) are supported")
    role = item.get("role", "user")
    if role not in ("user", "assistant", "system", "developer"):
        raise RequestRefused(400, f"{where}: unknown role {role!r}")
    texts = users if role == "user" else systems if role in ("system", "developer") else []
    content = item.get("content")
    if isinstance(content, str):
        texts.append(content)
        return
    if not isinstance(content, list):
        raise RequestRefused(400, f"{where}.content must be a string or an array of parts")
    for index, part in enumerate(content):
        part_where = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "input_image":
            images.append(_image_part(part, part_where))
        else:
            raise RequestRefused(400, f"{part_where}: unsupported content part {kind!r}")


def _image_part(part: dict[str, Any], where: str) -> ImagePart:
    url = part.get("image_url")
    if isinstance(url, dict):
        url = url.get("url")
    if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
        raise RequestRefused(
            400, f"{where}: image_url must be a data:<mime>;base64,<data> URL (offline emulator)"
        )
    header, payload = url[5:].split(",", 1)
    if not header.endswith(";base64"):
        raise RequestRefused(400, f"{where}: image_url data URL must be base64-encoded")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestRefused(400, f"{where}: image_url is not valid base64 ({exc})") from exc
    detail = part.get("detail")
    if detail is not None and detail not in _DETAILS:
        raise RequestRefused(400, f"{where}: detail must be one of {_DETAILS}, not {detail!r}")
    return ImagePart(where=where, mime=header[: -len(";base64")], data=data, detail=detail,
                     url_chars=len(url))


def describe_image(image: ImagePart) -> SeenImage:
    """Name size, format and hash of what arrived, so tests can see exactly what was sent.
    The size comes from the header (before any decoding); it is what the image bills."""
    digest = hashlib.sha256(image.data).hexdigest()[:16]
    try:
        with Image.open(io.BytesIO(image.data)) as img:
            width, height = img.size
            fmt = img.format or "UNKNOWN"
            img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            img.load()
    except Exception as exc:
        raise RequestRefused(
            400, f"{image.where}: image could not be decoded ({type(exc).__name__}: {exc})"
        ) from exc
    line = f"Image {width}x{height} {fmt} sha256:{digest} detail:{image.detail or 'none'}"
    return SeenImage(line=line, width=width, height=height)


def _max_words(body: dict[str, Any]) -> int | None:
    for name in ("max_output_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RequestRefused(400, f"Field '{name}' must be a positive integer")
        return value
    return None


def _text_format(body: dict[str, Any]) -> dict[str, Any] | None:
    text = body.get("text")
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        if not isinstance(text, dict):
            raise RequestRefused(400, "Field 'text' must be an object")
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict) or not isinstance(fmt.get("name"), str):
            raise RequestRefused(400, "text.format json_schema needs 'name' and 'schema'")
        return dict(fmt)
    raise RequestRefused(400, f"text.format.type {kind!r} is not supported")

"""A deterministic JSON value that conforms to a JSON Schema: the emulator's structured reply."""

from __future__ import annotations

from typing import Any

_MAX_DEPTH = 12


def schema_instance(schema: dict[str, Any], text: str) -> Any:
    """Build a value valid for `schema`; strings carry `text` so the reply still shows the input."""
    return _Builder(schema, text).build(schema, 0)


class _Builder:
    def __init__(self, root: dict[str, Any], text: str) -> None:
        self.root = root
        self.text = text
        self.words = max(1, len(text.split()))

    def resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#"):
            raise ValueError(f"only local $ref are supported, not {ref!r}")
        node: Any = self.root
        for part in ref.lstrip("#").split("/"):
            if part:
                node = node[part.replace("~1", "/").replace("~0", "~")]
        if not isinstance(node, dict):
            raise ValueError(f"$ref {ref!r} does not point to a schema")
        return node

    def build(self, schema: Any, depth: int) -> Any:
        if not isinstance(schema, dict) or depth > _MAX_DEPTH:
            return None if depth > _MAX_DEPTH else self.text
        if "$ref" in schema:
            return self.build(self.resolve(schema["$ref"]), depth + 1)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                return self.build(_prefer_non_null(schema[key]), depth + 1)
        if schema.get("allOf"):
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                sub = self.resolve(part["$ref"]) if "$ref" in part else part
                merged.setdefault("properties", {}).update(sub.get("properties", {}))
                merged["required"] = [*merged.get("required", []), *sub.get("required", [])]
                merged.setdefault("type", sub.get("type"))
            return self.build(merged, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            non_null = [k for k in kind if k != "null"]
            kind = non_null[0] if non_null else "null"
        if kind is None:
            kind = (
                "object" if "properties" in schema else "array" if "items" in schema else "string"
            )
        return self.build_typed(kind, schema, depth)

    def build_typed(self, kind: str, schema: dict[str, Any], depth: int) -> Any:
        if kind == "object":
            props: dict[str, Any] = schema.get("properties", {})
            return {name: self.build(sub, depth + 1) for name, sub in props.items()}
        if kind == "array":
            count = max(1, int(schema.get("minItems", 1)))
            if "maxItems" in schema:
                count = min(count, int(schema["maxItems"]))
            items = schema.get("items", {})
            return [self.build(items, depth + 1) for _ in range(count)]
        if kind in ("integer", "number"):
            return self.number(kind, schema)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self.string(schema)

    def number(self, kind: str, schema: dict[str, Any]) -> int | float:
        value: float = self.words
        if "minimum" in schema:
            value = max(value, schema["minimum"])
        if "exclusiveMinimum" in schema:
            value = max(value, schema["exclusiveMinimum"] + 1)
        if "maximum" in schema:
            value = min(value, schema["maximum"])
        if "exclusiveMaximum" in schema:
            value = min(value, schema["exclusiveMaximum"] - 1)
        return int(value) if kind == "integer" else float(value)

    def string(self, schema: dict[str, Any]) -> str:
        formats = {
            "date-time": "2024-01-01T00:00:00Z",
            "date": "2024-01-01",
            "time": "00:00:00Z",
            "email": "emulator@example.com",
            "uri": "https://example.com/emulator",
            "uuid": "00000000-0000-4000-8000-000000000000",
        }
        value = formats.get(str(schema.get("format")), self.text)
        min_length = int(schema.get("minLength", 0))
        if len(value) < min_length:
            value = value + "x" * (min_length - len(value))
        if "maxLength" in schema:
            value = value[: int(schema["maxLength"])]
        return value


def _prefer_non_null(options: list[Any]) -> Any:
    for option in options:
        if not (isinstance(option, dict) and option.get("type") == "null"):
            return option
    return options[0]

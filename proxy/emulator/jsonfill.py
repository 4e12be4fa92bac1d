"""Build a JSON value that conforms to a JSON Schema, with its strings taken from given texts.

The emulator's model answers structured-output requests and writes tool-call arguments with this:
the schema decides the shape, the texts (the user's first-person statements, or the words after a
tool's name) fill it, so a fact-extraction prompt gets the user's statements back in whatever shape
it asked for. Deterministic: the same schema and texts always give the same value.

Rules, in short: ``const`` -> the constant; ``enum`` -> the first value the texts name (a value of
fewer than 6 characters as a whole word, a longer one by a word starting with its first 6: "I prefer
tea" names ``preference``), else the first value; ``anyOf``/``oneOf`` -> the first
non-null branch; ``allOf`` -> the branches merged; objects get every declared property; an array gets
one element per text (each element built from that text alone), clipped to ``minItems``/``maxItems``;
a string is all texts joined by a space (``fallback`` when there are none), fitted to
``minLength``/``maxLength`` and to common ``format``s; numbers take the schema's maximum, else its
minimum, else 1; booleans are true. ``$ref`` to ``#/...`` inside the schema is followed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_MAX_DEPTH = 12
_WORD = re.compile(r"[a-z0-9_]+")

_FORMAT_SAMPLES = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "duration": "P1D",
}


def build_instance(schema: Any, texts: Sequence[str], fallback: str = "") -> Any:
    """A value valid against ``schema`` whose strings come from ``texts`` (or ``fallback``)."""
    return _Builder(schema if isinstance(schema, dict) else {}, fallback).build(schema, list(texts), 0)


class _Builder:
    def __init__(self, root: dict[str, Any], fallback: str) -> None:
        self.root = root
        self.fallback = fallback

    def build(self, schema: Any, texts: list[str], depth: int) -> Any:
        if depth > _MAX_DEPTH:  # a recursive schema: stop (may be invalid, but never loops)
            return None
        if not isinstance(schema, dict):  # ``true`` or no schema: anything goes, a string will do
            return self.string({}, texts)
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return self.choose(schema["enum"], texts)
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                return self.build(self.pick_branch(schema[key]), texts, depth + 1)
        if schema.get("allOf"):
            return self.build(self.merge(schema), texts, depth + 1)
        kind = self.kind(schema)
        if kind == "object":
            return self.object(schema, texts, depth)
        if kind == "array":
            return self.array(schema, texts, depth)
        if kind in ("integer", "number"):
            return self.number(schema, integer=kind == "integer")
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self.string(schema, texts)

    @staticmethod
    def choose(values: list[Any], texts: list[str]) -> Any:
        """The first enum value the texts name (see the module docstring), else the first value."""
        words = _WORD.findall(" ".join(texts).lower())
        for value in values:
            if not isinstance(value, str) or not value:
                continue
            name = value.lower()
            if name in words if len(name) < 6 else any(word.startswith(name[:6]) for word in words):
                return value
        return values[0]

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        """Follow local ``$ref``s (``#/$defs/x``, ``#/definitions/x``); siblings override."""
        seen = 0
        while isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#") and seen < _MAX_DEPTH:
            target: Any = self.root
            for part in filter(None, schema["$ref"].lstrip("#").strip("/").split("/")):
                key = part.replace("~1", "/").replace("~0", "~")
                target = target.get(key, {}) if isinstance(target, dict) else {}
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
            seen += 1
        return schema

    def pick_branch(self, branches: list[Any]) -> Any:
        for branch in branches:
            if isinstance(branch, dict) and self.kind(self.resolve(branch)) != "null":
                return branch
        return branches[0]

    def merge(self, schema: dict[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = self.resolve(part) if isinstance(part, dict) else {}
            for key, value in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = [*merged.get("required", []), *value]
                else:
                    merged.setdefault(key, value)
        return merged

    @staticmethod
    def kind(schema: dict[str, Any]) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind:
            return str(kind)
        if "properties" in schema or "additionalProperties" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        return "string"

    def object(self, schema: dict[str, Any], texts: list[str], depth: int) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        return {name: self.build(sub, texts, depth + 1) for name, sub in properties.items()}

    def array(self, schema: dict[str, Any], texts: list[str], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems") or []
        items_schema = schema.get("items", {}) if isinstance(schema.get("items", {}), dict) else {}
        values = [self.build(sub, texts, depth + 1) for sub in prefix]
        values += [self.build(items_schema, [text], depth + 1) for text in texts[len(prefix) :]]
        if schema.get("uniqueItems"):
            values = _unique(values)
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        while len(values) < low:
            values.append(self.build(items_schema, [f"{self.fallback} ({len(values) + 1})".strip()], depth + 1))
        return values[:high] if high is not None else values

    @staticmethod
    def number(schema: dict[str, Any], integer: bool) -> int | float:
        step = 1 if integer else 0.5
        high = schema.get("maximum")
        if high is None and schema.get("exclusiveMaximum") is not None:
            high = schema["exclusiveMaximum"] - step
        low = schema.get("minimum")
        if low is None and schema.get("exclusiveMinimum") is not None:
            low = schema["exclusiveMinimum"] + step
        value = high if high is not None else low if low is not None else 1
        return int(value) if integer else float(value)

    def string(self, schema: dict[str, Any], texts: list[str]) -> str:
        if schema.get("format") in _FORMAT_SAMPLES:
            return _FORMAT_SAMPLES[schema["format"]]
        value = " ".join(text for text in texts if text) or self.fallback
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if len(value) < low:
            value = value + "." * (low - len(value))
        return value[:high] if high is not None else value


def _unique(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if value not in out:
            out.append(value)
    return out

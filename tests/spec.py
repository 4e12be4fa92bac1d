"""Validate objects against OpenAI's published OpenAPI description.

The spec (``../shared/data/openai-openapi.yaml`` beside the repo root) is the ground truth for every
object the emulator and the Assistants bridge return, so tests check shapes against it instead of
against hand-written expectations. Loading 3 MB of YAML takes about a second: it is parsed once per
process and each schema's validator is cached.

Usage::

    from tests.spec import validate
    validate(obj, "CreateChatCompletionResponse")   # raises jsonschema.ValidationError

OpenAPI 3.1 schemas are JSON Schema 2020-12, except that this document still uses the 3.0 keyword
``nullable: true`` in places; it is rewritten to ``anyOf [schema, null]`` on load.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

SPEC_PATH = Path(__file__).resolve().parents[2] / "shared/data/openai-openapi.yaml"
_BASE_URI = "urn:openai-openapi"


def _rewrite_nullable(node: Any) -> Any:
    """Turn OpenAPI 3.0 ``nullable: true`` into its JSON Schema equivalent, recursively."""
    if isinstance(node, list):
        return [_rewrite_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _rewrite_nullable(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def spec() -> dict[str, Any]:
    """The parsed OpenAPI document; skips the calling test when the file is absent."""
    if not SPEC_PATH.exists():
        pytest.skip(f"OpenAI OpenAPI description not found at {SPEC_PATH}")
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with SPEC_PATH.open("rb") as fh:
        document = yaml.load(fh, Loader=loader)
    document["components"] = _rewrite_nullable(document["components"])
    return document


@functools.cache
def _registry() -> Any:
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    return Registry().with_resource(_BASE_URI, DRAFT202012.create_resource(spec()))


@functools.cache
def validator(name: str) -> Any:
    """A cached 2020-12 validator for ``#/components/schemas/<name>``."""
    from jsonschema import Draft202012Validator

    if name not in spec()["components"]["schemas"]:
        raise KeyError(f"no schema named {name!r} in the OpenAPI description")
    return Draft202012Validator({"$ref": f"{_BASE_URI}#/components/schemas/{name}"}, registry=_registry())


class SpecError(AssertionError):
    """An instance does not match its schema; the message is short (no schema dump)."""


def validate(instance: Any, name: str) -> None:
    """Raise :class:`SpecError` (an AssertionError) if ``instance`` is not a valid ``name``.

    The message names the failing location (a JSON path) and the closest error, plus the errors of
    the closest ``anyOf``/``oneOf`` branch, instead of jsonschema's full schema dump.
    """
    from jsonschema.exceptions import best_match

    error = best_match(validator(name).iter_errors(instance))
    if error is None:
        return
    lines = [f"{name}: {error.message[:300]} (at {error.json_path}, rule {error.validator!r})"]
    lines += [f"  branch: {sub.message[:200]} (at {sub.json_path})" for sub in (error.context or [])[:5]]
    raise SpecError("\n".join(lines))


def stream_event_schemas(union: str = "ResponseStreamEvent") -> dict[str, str]:
    """Map each SSE event ``type`` in a union schema to the name of its schema.

    Lets a test validate every event of a stream against the schema the spec defines for it.
    """
    schemas = spec()["components"]["schemas"]
    branches = schemas[union].get("anyOf") or schemas[union].get("oneOf") or []
    mapping: dict[str, str] = {}
    for branch in branches:
        name = branch["$ref"].rsplit("/", 1)[-1]
        for event_type in schemas[name].get("properties", {}).get("type", {}).get("enum", []):
            mapping[event_type] = name
    return mapping

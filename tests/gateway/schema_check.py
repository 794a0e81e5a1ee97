"""Validate gateway output against the OpenAI schemas vendored in the repository: the providers
branch's gateway/schemas/openai/schemas.json (chat, completions, embeddings, models, errors) and
tests/gateway/schemas/openai_responses.json (Responses API objects and stream events)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parents[2]
FILES = (
    ROOT / "gateway" / "schemas" / "openai" / "schemas.json",
    Path(__file__).with_name("schemas") / "openai_responses.json",
)


def _nullable(node: Any) -> Any:
    """The spec mixes OpenAPI 3.0's ``nullable: true`` into JSON Schema; JSON Schema validators
    ignore that keyword, so turn it into what it means (``null`` also allowed)."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable(value) for key, value in node.items()}
    if node.pop("nullable", False) is True:
        if isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
            if "enum" in node and None not in node["enum"]:
                node["enum"] = [*node["enum"], None]
        elif "$ref" in node or "allOf" in node or "anyOf" in node or "oneOf" in node:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


@functools.cache
def _documents() -> list[dict[str, Any]]:
    return [_nullable(json.loads(path.read_text())) for path in FILES]


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    for document in _documents():
        if name in document["components"]["schemas"]:
            resource = Resource.from_contents(document, default_specification=DRAFT202012)
            registry = Registry().with_resource("urn:openai", resource)
            schema = {"$ref": f"urn:openai#/components/schemas/{name}"}
            return jsonschema.Draft202012Validator(schema, registry=registry)
    raise KeyError(name)


def validate(name: str, instance: Any) -> None:
    """Raise jsonschema.ValidationError when ``instance`` does not match schema ``name``."""
    _validator(name).validate(instance)

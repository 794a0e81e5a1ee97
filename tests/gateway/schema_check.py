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


@functools.cache
def _documents() -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in FILES]


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

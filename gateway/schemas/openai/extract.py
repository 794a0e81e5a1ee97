"""Extract the OpenAI response schemas our tests validate against from the full OpenAPI file.

Usage: python gateway/schemas/openai/extract.py PATH/TO/openapi.json

Source: openai/openai-openapi at commit f85dbe2 (2026-08-21), MIT license (LICENSE beside this
file). Writes ``schemas.json`` here: the named roots plus every schema they reference, as a
``components.schemas`` mapping, so a validator resolves ``#/components/schemas/X`` references
without the 1,400-schema original. The product never reads the original at run time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOTS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateEmbeddingResponse",
    "CreateCompletionResponse",
    "ListModelsResponse",
    "ErrorResponse",
    "Error",
)
SOURCE = "openai/openai-openapi@f85dbe2 (2026-08-21), MIT"
OUT = Path(__file__).with_name("schemas.json")


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def extract(spec: dict[str, Any]) -> dict[str, Any]:
    schemas = spec["components"]["schemas"]
    keep: dict[str, Any] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep[name] = schemas[name]
        found: set[str] = set()
        _refs(schemas[name], found)
        todo.extend(sorted(found - keep.keys()))
    return {
        "source": SOURCE,
        "roots": list(ROOTS),
        "components": {"schemas": dict(sorted(keep.items()))},
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    out = extract(spec)
    OUT.write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    print(f"wrote {OUT} ({len(out['components']['schemas'])} schemas)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Extract the Responses API schemas (the response object and its stream events) that the
gateway tests validate against, with the providers branch's extractor.

Usage: PYTHONPATH=. python tests/gateway/schemas/extract_responses.py PATH/TO/openapi.json

Source: openai/openai-openapi at commit f85dbe2 (2026-08-21), MIT license (LICENSE beside this
file). Writes ``openai_responses.json`` here; nothing reads the original at run time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gateway.schemas.openai import extract

ROOTS = ("Response", "ResponseStreamEvent")
OUT = Path(__file__).with_name("openai_responses.json")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    extract.ROOTS = ROOTS
    out = extract.extract(spec)
    OUT.write_text(json.dumps(out, indent=0) + "\n")
    print(f"wrote {OUT} ({len(out['components']['schemas'])} schemas)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

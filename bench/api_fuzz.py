"""`make api-fuzz`: schemathesis against the management API's OpenAPI schema (/api/schema/).

    .venv/bin/python bench/api_fuzz.py [--max-examples 20] [--workers 1] [-- extra st args]

Starts the server in the embedded mode on a throwaway SQLite database (a temporary folder),
creates an organization owned by a fresh user and a personal access token for that user, and
runs ``schemathesis run`` with ``Authorization: Token mrp_...`` and these checks:
``not_a_server_error`` (no 5xx), ``response_schema_conformance`` and
``status_code_conformance`` (answers match the schema), ``content_type_conformance``.
Everything on 127.0.0.1; exit status is schemathesis's (0 = no failure).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness as h

SEED = """
import json, django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth import get_user_model
from orgs import services
from orgs.audit import Actor
user = get_user_model().objects.create_user(username="fuzz-owner", password="fuzz-owner-pw-1")
org = services.organization_create(actor=Actor.system(), name="Fuzz", slug="fuzz", owner=user)
token = services.access_token_create(user=user, name="fuzz")
print(json.dumps({"token": token.raw_token}))
"""

CHECKS = (
    "not_a_server_error,response_schema_conformance,status_code_conformance,"
    "content_type_conformance"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-examples", type=int, default=20)
    parser.add_argument("--workers", default="1")
    parser.add_argument("extra", nargs="*", help="passed on to schemathesis run")
    args = parser.parse_args()
    st = Path(h.PY).parent / "schemathesis"
    if not st.exists():
        print("schemathesis is missing: .venv/bin/pip install schemathesis", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mr-fuzz-") as tmp_name, h.services() as started:
        tmp = Path(tmp_name)
        env = h.base_env(tmp)
        seeded = subprocess.run(
            [h.PY, "-c", SEED], cwd=h.ROOT, env=env, capture_output=True, text=True, check=True
        )
        token = seeded.stdout.strip().splitlines()[-1].split('"token": "')[1].rstrip('"}')
        port = h.free_port()
        started.append(h.gateway_service(port, env, 1, tmp / "server.log").start())
        report = h.ROOT / "bench" / "results"
        report.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [
                str(st),
                "run",
                f"http://{h.HOST}:{port}/api/schema/",
                "--url",
                f"http://{h.HOST}:{port}",
                "-H",
                f"Authorization: Token {token}",
                "--checks",
                CHECKS,
                "--max-examples",
                str(args.max_examples),
                "--workers",
                args.workers,
                "--request-timeout",
                "10",
                "--report",
                "junit",
                "--report-dir",
                str(report),
                *args.extra,
            ],
            cwd=h.ROOT,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        )
        server_log = (tmp / "server.log").read_text(errors="replace")
        errors = server_log.count('"level":"error"')
        print(f"[api-fuzz] server error log lines: {errors}")
        return done.returncode


if __name__ == "__main__":
    sys.exit(main())

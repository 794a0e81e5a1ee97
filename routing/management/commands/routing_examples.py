"""What ``auto`` picks for a set of prompts under each strategy, on the installed catalog.

Every decision is made by ``routing.engine.route``, the function the gateway's ``route_call``
calls, on the catalog snapshot the gateway reads, with a policy of the given strategy and
``cost_quality``: the table in docs/routing.md ("What each strategy picks") is this command's
output on the demo catalog. Nothing is sent to a provider.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from orgs.policy import STRATEGIES, PolicyError, PolicySpec
from routing.catalog import catalog_snapshot
from routing.complexity import RequestFeatures
from routing.complexity.model import DATA_DIR
from routing.engine import NoRoute, RouteRequest, route
from routing.health import health_store
from routing.policies import policy_merge

DEFAULT_EXAMPLES = DATA_DIR / "examples.json"
MILLION = Decimal(1_000_000)


def _pick(messages: list[dict[str, Any]], spec: PolicySpec) -> dict[str, Any]:
    features = RequestFeatures.from_messages(messages)
    policy = policy_merge([("organization", spec)])
    try:
        decision = route(request=RouteRequest(features=features), policy=policy)
    except NoRoute as exc:
        return {"error": exc.code}
    first = decision.candidates[0]
    explain = decision.explain
    out: dict[str, Any] = {
        "model": first.model_id,
        "tier": first.model.quality_tier,
        "price_in_per_million": str((first.input_per_token * MILLION).normalize()),
        "price_out_per_million": str((first.output_per_token * MILLION).normalize()),
        "estimated_cost_usd": explain.get("estimated_cost_usd"),
        "reference_cost_usd": explain.get("reference_cost_usd"),
        "estimated_tier": explain.get("tier"),
        "quality": explain.get("quality"),
    }
    est, ref = out["estimated_cost_usd"], out["reference_cost_usd"]
    if est and ref and Decimal(est) > 0:
        out["cheaper_than_reference"] = float(Decimal(ref) / Decimal(est))
    return out


def _cell(pick: dict[str, Any]) -> str:
    if "error" in pick:
        return f"refused ({pick['error']})"
    ratio = pick.get("cheaper_than_reference")
    times = f", {ratio:.0f}x" if ratio is not None and ratio >= 1.5 else ""
    return f"`{pick['model']}` (t{pick['tier']}{times})"


class Command(BaseCommand):
    help = (
        "Route a file of example prompts with auto under each strategy on the installed "
        "catalog (the gateway's routing function) and print the model each strategy picks."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--file", default=str(DEFAULT_EXAMPLES), help="examples JSON")
        parser.add_argument(
            "--strategies", default=",".join(STRATEGIES), help="comma-separated strategies"
        )
        parser.add_argument(
            "--cost-quality", default=None, help="the policy's cost_quality (0 to 1)"
        )
        parser.add_argument("--reference-model", default=None, help="the policy's reference")
        parser.add_argument("--json", action="store_true", help="JSON instead of a table")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            examples = json.loads(Path(options["file"]).read_text())["examples"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CommandError(f"cannot read {options['file']}: {exc}") from None
        strategies = [s.strip() for s in options["strategies"].split(",") if s.strip()]
        document: dict[str, Any] = {}
        if options["cost_quality"] is not None:
            try:
                document["cost_quality"] = Decimal(options["cost_quality"])
            except InvalidOperation:
                raise CommandError("--cost-quality must be a number from 0 to 1") from None
        if options["reference_model"]:
            document["reference_model"] = options["reference_model"]
        specs = {}
        for strategy in strategies:
            try:
                specs[strategy] = PolicySpec.from_document({**document, "strategy": strategy})
            except PolicyError as exc:
                raise CommandError(str(exc)) from None
        catalog_snapshot()  # fail here, not per row, when the catalog cannot be read
        health_store()
        rows = []
        for example in examples:
            picks = {s: _pick(example["messages"], spec) for s, spec in specs.items()}
            rows.append({"name": example["name"], "kind": example.get("kind", ""), **picks})
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=1))
            return
        reference = next(
            (p.get("reference_cost_usd") for r in rows for p in r.values() if isinstance(p, dict)),
            None,
        )
        head = ["prompt", "kind", "tier needed", *strategies]
        self.stdout.write("| " + " | ".join(head) + " |")
        self.stdout.write("|" + "---|" * len(head))
        for row in rows:
            first = next((row[s] for s in strategies if "error" not in row[s]), {})
            cells = [row["name"], row["kind"], str(first.get("estimated_tier", ""))]
            cells += [_cell(row[s]) for s in strategies]
            self.stdout.write("| " + " | ".join(cells) + " |")
        if reference is not None:
            self.stdout.write(
                "\n`tN`: the model's quality tier; `Nx`: how many times cheaper than the "
                "reference model at list price for the request's estimated tokens."
            )

"""Offline routing evaluation: quality / cost curves, APGR, cost saving, baselines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.complexity.data import (
    DEFAULT_TRAIN_FILE,
    DataError,
    model_stats,
    read_records,
    split_holdout,
)
from routing.complexity.evaluation import evaluate
from routing.complexity.model import DEFAULT_ARTEFACT, ArtefactError, load_model
from routing.offline import live_router

MIN_POINTS = 21
BOOTSTRAP = 1000


def _write_decision(handle: TextIO, record_id: str, point: int, model: str) -> None:
    handle.write(json.dumps({"id": record_id, "point": point, "model": model}) + "\n")


class Command(BaseCommand):
    help = (
        "Evaluate the gateway's router (routing.engine.route on a catalog of the training "
        "file's models, cost_quality swept) on routing-data records: per task family and "
        "overall, quality and cost at every point, APGR, cost saving at 95%% of the best single "
        "model with 95%% bootstrap intervals, and the random / best single / prompt length / "
        "oracle baselines."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--data", required=True, help="records to evaluate (JSONL or .gz)")
        parser.add_argument(
            "--train",
            default=str(DEFAULT_TRAIN_FILE),
            help="records that give model prices and quality priors (default: bundled copy)",
        )
        parser.add_argument("--model", default=str(DEFAULT_ARTEFACT), help="model artefact")
        parser.add_argument("--decisions", help="write {id, point, model} JSON lines here")
        parser.add_argument("--points", type=int, default=MIN_POINTS, help="sweep points (>= 21)")
        parser.add_argument(
            "--holdout",
            action="store_true",
            help="evaluate only the held-out 20%% of --data; priors from the other 80%% of --train",
        )
        parser.add_argument(
            "--bootstrap",
            type=int,
            default=BOOTSTRAP,
            help=f"resamples for the 95%% intervals (default {BOOTSTRAP}; 0: none)",
        )
        parser.add_argument("--plot", help="also draw the curves to this PNG")
        parser.add_argument("--indent", type=int, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["points"] < MIN_POINTS:
            raise CommandError(f"--points must be at least {MIN_POINTS}")
        if options["bootstrap"] < 0:
            raise CommandError("--bootstrap must be 0 or more")
        try:
            records = read_records(options["data"])
            train = read_records(options["train"])
            model = load_model(options["model"])
        except (DataError, ArtefactError) as exc:
            raise CommandError(str(exc)) from exc
        if options["holdout"]:
            _, records = split_holdout(records)
            train, _ = split_holdout(train)
        stats = model_stats(train)
        lengths = [r.input_tokens for r in train]
        decisions_path = options.get("decisions")
        handle = None
        try:
            if decisions_path:
                Path(decisions_path).parent.mkdir(parents=True, exist_ok=True)
                handle = open(decisions_path, "w", encoding="utf-8")  # noqa: SIM115
            report = evaluate(
                records,
                stats=stats,
                train_lengths=lengths,
                router=live_router(stats, model),
                points=options["points"],
                decisions=handle,
                write_decision=_write_decision,
                bootstrap=options["bootstrap"],
            )
        finally:
            if handle is not None:
                handle.close()
        report["data"] = str(options["data"]) + (" (held-out 20%)" if options["holdout"] else "")
        report["train"] = str(options["train"])
        report["model"] = str(options["model"])
        if options.get("plot"):
            from routing.complexity.plot import plot_report

            plot_report(report, options["plot"], title=report["data"])
        self.stdout.write(json.dumps(report, indent=options["indent"]))

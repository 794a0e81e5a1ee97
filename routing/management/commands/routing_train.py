"""Retrain the complexity model and write its artefact (deterministic)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.complexity.data import DEFAULT_TRAIN_FILE, DataError, read_records, split_holdout
from routing.complexity.model import DEFAULT_ARTEFACT
from routing.complexity.train import TrainConfig, train_artefact


class Command(BaseCommand):
    help = "Train the request complexity model on routing data and write the model artefact."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--data", default=str(DEFAULT_TRAIN_FILE), help="JSONL(.gz) records")
        parser.add_argument("--out", default=str(DEFAULT_ARTEFACT), help="artefact to write")
        parser.add_argument(
            "--holdout",
            action="store_true",
            help="train only on the 80%% that routing_eval --holdout does not evaluate",
        )
        parser.add_argument("--seed", type=int, default=TrainConfig.seed)
        parser.add_argument("--steps", type=int, default=TrainConfig.steps)

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.perf_counter()
        try:
            records = read_records(options["data"])
        except DataError as exc:
            raise CommandError(str(exc)) from exc
        if options["holdout"]:
            records, _ = split_holdout(records)
        if options["steps"] < 1:
            raise CommandError("--steps must be at least 1")
        config = TrainConfig(seed=options["seed"], steps=options["steps"])
        label = Path(options["data"]).name + (
            " (holdout split: train part)" if options["holdout"] else ""
        )
        blob = train_artefact(records, config=config, data_label=label)
        out = Path(options["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(blob)
        summary = {
            "artefact": str(out),
            "bytes": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "records": len(records),
            "seconds": round(time.perf_counter() - started, 1),
        }
        self.stdout.write(json.dumps(summary))

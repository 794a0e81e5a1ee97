"""K-fold cross-validation of the complexity model inside the training part."""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.complexity.cv import cross_validate
from routing.complexity.data import DEFAULT_TRAIN_FILE, DataError, read_records, split_holdout
from routing.complexity.train import TrainConfig
from routing.offline import live_router


class Command(BaseCommand):
    help = (
        "Cross-validate the complexity model on the training part (the 80%% that routing_eval "
        "--holdout does not evaluate): per fold and mean APGR and cost saving at 95%%."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--data", default=str(DEFAULT_TRAIN_FILE), help="JSONL(.gz) records")
        parser.add_argument("--folds", type=int, default=4)
        parser.add_argument(
            "--all",
            action="store_true",
            help="cross-validate on every record of --data instead of its training part",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.perf_counter()
        try:
            records = read_records(options["data"])
        except DataError as exc:
            raise CommandError(str(exc)) from exc
        if not options["all"]:
            records, _ = split_holdout(records)
        if options["folds"] < 2:
            raise CommandError("--folds must be at least 2")
        result = cross_validate(
            records, k=options["folds"], router_for=live_router, config=TrainConfig()
        )
        result["seconds"] = round(time.perf_counter() - started, 1)
        self.stdout.write(json.dumps(result))

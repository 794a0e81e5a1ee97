"""python manage.py apply_config FILE"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.operator_config import ConfigFileError, config_apply_file


class Command(BaseCommand):
    help = (
        "Apply an operator file (TOML, YAML or JSON): providers, credentials (from environment "
        "variables), model overrides and deployments. Idempotent; a bad file changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = config_apply_file(options["file"])
        except ConfigFileError as exc:
            raise CommandError(str(exc)) from None
        for line in result.changes:
            self.stdout.write(line)
        self.stdout.write(f"{len(result.changes)} changed, {result.unchanged} unchanged")

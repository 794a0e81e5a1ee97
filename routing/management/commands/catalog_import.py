"""python manage.py catalog_import [PATH_OR_URL]"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.catalog_import import CatalogFormatError, catalog_import


class Command(BaseCommand):
    help = (
        "Import a model catalog: the bundled LiteLLM file (default), or a path or URL in the "
        "LiteLLM or OpenRouter /api/v1/models format. Idempotent; all or nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("source", nargs="?", help="path or http(s) URL; default: bundled")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = catalog_import(options["source"])
        except CatalogFormatError as exc:
            raise CommandError(str(exc)) from None
        if options["verbosity"] >= 1:
            self.stdout.write(result.summary())
        if options["verbosity"] > 1:
            for reason, count in sorted(result.skipped_reasons.items()):
                self.stdout.write(f"  skipped {count}: {reason}")
            self.stdout.write(f"  new price versions: {result.price_versions}")

"""python manage.py credentials_rotate"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from routing.crypto import CredentialDecryptError
from routing.services import credentials_rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt every provider credential with the first key of MEGAROUTER_ENCRYPTION_KEYS "
        "(after putting a new key first); then the old keys can be removed."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            count = credentials_rotate()
        except CredentialDecryptError as exc:
            raise CommandError(f"{exc}; nothing was changed") from None
        self.stdout.write(f"re-encrypted {count} credentials")

"""python manage.py credentials_rotate"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from identity.services import client_secrets_rotate
from routing.crypto import CredentialDecryptError
from routing.services import credentials_rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt every provider credential and identity provider client secret with the "
        "first key of MEGAROUTER_ENCRYPTION_KEYS (after putting a new key first); then the old "
        "keys can be removed."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            with transaction.atomic():  # all or nothing
                count = credentials_rotate()
                secrets = client_secrets_rotate()
        except CredentialDecryptError as exc:
            raise CommandError(f"{exc}; nothing was changed") from None
        self.stdout.write(
            f"re-encrypted {count} credentials and {secrets} identity provider client secrets"
        )

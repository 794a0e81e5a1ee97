"""Keeps the gateway key cache coherent with changes made outside orgs services."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from orgs.keys import invalidate_prefixes


def user_saved(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    if created or instance.is_active:
        return
    from orgs.models import ApiKeySecret

    prefixes = list(
        ApiKeySecret.objects.filter(api_key__membership__user_id=instance.pk).values_list(
            "prefix", flat=True
        )
    )
    if prefixes:
        transaction.on_commit(lambda: invalidate_prefixes(prefixes))

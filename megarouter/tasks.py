"""Project-wide housekeeping tasks (app-specific tasks live in each app's tasks.py)."""

from __future__ import annotations

from importlib import import_module

from celery import shared_task
from django.conf import settings


@shared_task(name="megarouter.clear_expired_sessions")
def clear_expired_sessions() -> None:
    """Deletes expired console sessions (what ``manage.py clearsessions`` does)."""
    import_module(settings.SESSION_ENGINE).SessionStore.clear_expired()

"""The Celery app. ``celery -A megarouter worker`` / ``beat``."""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery

from megarouter.bootstrap import exit_on_config_error

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "megarouter.settings")

app = Celery("megarouter")


def _configure() -> None:
    from django.conf import settings

    settings.DATA_DIR  # noqa: B018 (reads settings now so a bad value exits here)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
            Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS[key]).mkdir(parents=True, exist_ok=True)
    app.autodiscover_tasks()


exit_on_config_error(_configure)

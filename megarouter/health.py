"""Liveness and readiness probes for load balancers."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse


def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and serving. Touches nothing else."""
    return JsonResponse({"status": "ok"})


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def check_redis() -> None:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    finally:
        client.close()


def check_broker() -> None:
    url: str = settings.CELERY_BROKER_URL
    if url.startswith("filesystem://"):
        folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
        if not folder.is_dir():
            raise RuntimeError("broker folder is missing")
        probe = folder / ".readyz"
        probe.write_bytes(b"")
        probe.unlink()
        return
    from kombu import Connection

    with Connection(url, connect_timeout=1) as conn:
        conn.ensure_connection(max_retries=1)


def readiness_checks() -> dict[str, Callable[[], None]]:
    checks: dict[str, Callable[[], None]] = {"database": check_database}
    if settings.REDIS_URL:
        checks["redis"] = check_redis
    checks["broker"] = check_broker
    return checks


def readyz(request: HttpRequest) -> JsonResponse:
    """Database, Redis (when configured) and the Celery broker are reachable."""
    results: dict[str, dict[str, object]] = {}
    for name, check in readiness_checks().items():
        started = time.perf_counter()
        try:
            check()
        except Exception as exc:  # a probe reports every failure, whatever its type
            results[name] = {"ok": False, "error": type(exc).__name__}
        else:
            results[name] = {"ok": True}
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 2)
    ready = all(result["ok"] for result in results.values())
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", "checks": results},
        status=200 if ready else 503,
    )

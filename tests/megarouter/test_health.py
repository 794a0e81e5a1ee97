import pytest
from django.test import override_settings


def test_healthz_is_alive_without_touching_the_database(client):
    # No django_db mark: any database access here would raise.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_each_check(client, settings):
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    expected = {"database", "broker"} | ({"redis"} if settings.REDIS_URL else set())
    assert set(body["checks"]) == expected
    assert all(check["ok"] for check in body["checks"].values())


@pytest.mark.django_db
def test_readyz_fails_when_redis_is_unreachable(client):
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["redis"]["error"] == "ConnectionError"
    assert body["checks"]["database"]["ok"] is True


@pytest.mark.django_db
def test_readyz_fails_when_the_broker_is_unreachable(client, tmp_path):
    missing = {
        "data_folder_in": str(tmp_path / "nope"),
        "data_folder_out": str(tmp_path / "nope"),
        "processed_folder": str(tmp_path / "nope2"),
    }
    with override_settings(
        CELERY_BROKER_URL="filesystem://", CELERY_BROKER_TRANSPORT_OPTIONS=missing
    ):
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"] == {
        "ok": False,
        "error": "RuntimeError",
        "ms": response.json()["checks"]["broker"]["ms"],
    }


def test_shared_cache_helpers_answer_not_cached_when_redis_is_down(settings, caplog):
    from megarouter import shared_cache

    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }
    assert shared_cache.get("k") is None
    shared_cache.set("k", 1, timeout=None)
    shared_cache.add("k", 1, timeout=None)
    assert [r.getMessage() for r in caplog.records].count(
        "shared cache unavailable; using the database"
    ) == 3

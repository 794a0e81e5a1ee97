"""Zero data retention: a unique canary string sent through every endpoint (success, stream,
upstream failure, mid-stream failure, bad request) appears in no database row (dumpdata), no
Redis key or value of this suite's database, and no log output."""

from __future__ import annotations

import io
import logging
import uuid

import httpx
import pytest
from django.conf import settings
from django.core.management import call_command

CANARY = f"canary-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def client(gateway_server, sim_world):
    with httpx.Client(base_url=gateway_server.url, headers=sim_world.auth(), timeout=15) as http:
        yield http


def requests_with_canary() -> list[tuple[str, dict]]:
    say = f"Please repeat {CANARY} and use tools"
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
    chat = [{"role": "system", "content": CANARY}, {"role": "user", "content": say}]
    out = []
    for model in (
        "openai/gpt-sim",
        "anthropic/claude-sim",
        "openai/gpt-broken",
        "openai/gpt-cutter",
        "auto",
    ):
        for stream in (False, True):
            out.append(
                (
                    "/v1/chat/completions",
                    {
                        "model": model,
                        "messages": chat,
                        "stream": stream,
                        "user": CANARY,
                        "tools": [tool],
                    },
                )
            )
    out += [
        (
            "/v1/chat/completions",
            {"model": "openai/gpt-sim", "messages": [{"role": CANARY, "content": "x"}]},
        ),
        ("/v1/chat/completions", {"model": CANARY, "messages": chat}),
        ("/v1/completions", {"model": "openai/gpt-sim", "prompt": say}),
        ("/v1/completions", {"model": "openai/gpt-sim", "prompt": say, "stream": True}),
        ("/v1/embeddings", {"model": "openai/embed-sim", "input": [say]}),
        ("/v1/responses", {"model": "openai/gpt-sim", "input": say, "instructions": CANARY}),
        ("/v1/responses", {"model": "openai/gpt-sim", "input": say, "stream": True}),
        (
            "/v1/messages",
            {
                "model": "anthropic/claude-sim",
                "max_tokens": 50,
                "system": CANARY,
                "messages": [{"role": "user", "content": say}],
            },
        ),
        (
            "/v1/messages",
            {
                "model": "openai/gpt-sim",
                "max_tokens": 50,
                "stream": True,
                "messages": [{"role": "user", "content": say}],
            },
        ),
    ]
    return out


def test_canary_is_never_stored_or_logged(client, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    statuses = []
    for path, body in requests_with_canary():
        response = client.post(path, json=body, headers={"x-request-id": "zdr-check"})
        statuses.append(response.status_code)
    # Success, upstream failure and bad input were all exercised.
    assert 200 in statuses and 502 in statuses and 400 in statuses and 404 in statuses
    # Some answers legitimately echo the canary back to the caller (the simulator repeats
    # prompt words); what matters is that nothing kept it.
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)
    assert CANARY not in dump.getvalue()
    _usage_path_keeps_no_canary()
    if settings.REDIS_URL:
        import redis

        r = redis.Redis.from_url(settings.REDIS_URL)
        keys = list(r.scan_iter(count=1000))
        assert keys, "the key and catalog caches should have written something"
        for key in keys:
            assert CANARY.encode() not in key
            assert CANARY.encode() not in (r.dump(key) or b"")
    logged = "\n".join(
        record.getMessage() + repr(getattr(record, "fields", "")) for record in caplog.records
    )
    out, err = capfd.readouterr()
    assert "zdr-check" in logged + err  # the request log lines were captured
    assert CANARY not in logged
    assert CANARY not in out + err


def _usage_path_keeps_no_canary() -> None:
    """Billing's side: the durable usage events the requests left (checked by the dump above),
    the Celery message that turns them into records, the records and ledger rows it writes,
    and every task message published on the way carry no content."""
    from celery import signals

    from billing.models import LedgerEntry, UsageEvent, UsageRecord
    from billing.tasks import usage_events_process
    from megarouter.celery import app

    events = UsageEvent.objects.count()
    assert events > 0  # the successful and interrupted requests were settled durably
    published: list[bytes] = []

    def capture(sender=None, body=None, headers=None, properties=None, **kwargs):
        published.append(repr((sender, body, headers, properties)).encode())

    signals.before_task_publish.connect(capture)
    try:
        # The beat's message for the task, serialized as the broker would carry it.
        message = app.amqp.as_task_v2("zdr-task", usage_events_process.name, args=(), kwargs={})
        published.append(repr(message).encode())
        assert usage_events_process.apply().get() == events
    finally:
        signals.before_task_publish.disconnect(capture)
    assert UsageRecord.objects.count() >= events
    assert LedgerEntry.objects.filter(kind="usage").exists()
    for item in published:
        assert CANARY.encode() not in item
    dump = io.StringIO()
    call_command("dumpdata", "billing", stdout=dump)
    assert CANARY not in dump.getvalue()


def test_unexpected_errors_log_no_message(client, monkeypatch, caplog):
    """A bug's exception message may quote content: the 500 is the generic error object and the
    log line names the exception type and code locations only."""
    from gateway.api import handlers

    async def broken(req):
        raise ValueError(f"cannot parse {CANARY}")

    monkeypatch.setitem(handlers.ROUTES, "/v1/embeddings", ("POST", broken))
    caplog.set_level(logging.INFO)
    response = client.post("/v1/embeddings", json={"model": "m", "input": "x"})
    assert response.status_code == 500
    assert response.json()["error"] == {
        "message": "The gateway failed to handle this request.",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    [record] = [r for r in caplog.records if r.getMessage() == "unhandled gateway error"]
    assert record.fields["error_type"] == "ValueError"
    assert record.fields["traceback"][-1].startswith("gateway/test_api_zdr.py:")
    assert record.exc_info is None
    assert CANARY not in repr(record.__dict__)

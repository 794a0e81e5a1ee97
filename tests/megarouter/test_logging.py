import logging

import orjson
import pytest

from megarouter.logging import JsonFormatter

CANARY = "CANARY-7f3c9e-secret-prompt-text"


@pytest.mark.django_db
def test_one_json_line_per_request_without_content(client, caplog):
    caplog.set_level(logging.INFO, logger="megarouter.request")
    response = client.post(
        f"/healthz?q={CANARY}",
        data=orjson.dumps({"messages": [{"role": "user", "content": CANARY}]}),
        content_type="application/json",
        HTTP_X_REQUEST_ID="req-123",
    )
    assert response["X-Request-ID"] == "req-123"
    records = [r for r in caplog.records if r.name == "megarouter.request"]
    assert len(records) == 1
    line = JsonFormatter().format(records[0])
    assert CANARY not in line
    entry = orjson.loads(line)
    assert entry["msg"] == "request"
    assert entry["request_id"] == "req-123"
    assert entry["method"] == "POST"
    assert entry["route"] == "healthz"
    assert entry["status"] == 200
    assert isinstance(entry["latency_ms"], float)


def test_bad_request_id_is_replaced(client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="bad id with spaces\n")
    assert response["X-Request-ID"] != "bad id with spaces\n"
    assert len(response["X-Request-ID"]) == 32

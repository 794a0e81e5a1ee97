"""Every failure under /v1/ is the OpenAI error object with the right status, through the real
ASGI app under uvicorn: bad JSON and parameters (400), keys (401), model access (403), unknown
models and paths (404), methods (405), body size (413), model capabilities (400)."""

from __future__ import annotations

import datetime as dt

import httpx
import orjson
import pytest
from django.test import override_settings

from tests.gateway import factories
from tests.gateway.schema_check import validate

DEAD_UPSTREAM = "http://127.0.0.1:9/openai/v1"  # discard port: nothing listens


@pytest.fixture(scope="module")
def world(committed_db):
    tenant = factories.tenant_create()
    keys = {
        "ok": factories.api_key_create(tenant),
        "openai_only": factories.api_key_create(tenant, allowed_models=["openai/*"]),
        "revoked": factories.api_key_create(tenant),
        "expired": factories.api_key_create(tenant),
    }
    factories.api_key_revoke(tenant, keys["revoked"])
    from orgs.models import ApiKey
    from orgs.secrets import GATEWAY_KEY, prefix_of

    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    ApiKey.objects.filter(secrets__prefix=prefix_of(keys["expired"], GATEWAY_KEY)).update(
        expires_at=past
    )
    openai = factories.provider_create("openai", "openai", DEAD_UPSTREAM)
    anthropic = factories.provider_create("anthropic", "anthropic", "http://127.0.0.1:9/anthropic")
    plain = factories.model_create(
        openai, "plain-1", supports_tools=False, supports_vision=False, supports_json_schema=False
    )
    claude = factories.model_create(anthropic, "claude-test")
    embed = factories.model_create(
        openai, "embed-1", mode="embedding", released_on=dt.date(2025, 3, 1)
    )
    credential = factories.credential_create()
    for model in (plain, claude, embed):
        factories.deployment_create(
            model,
            name=f"dead-{model.provider_model_name}",
            base_url=DEAD_UPSTREAM,
            credential=credential,
        )
    from tests.gateway.conftest import reset_caches

    reset_caches()
    return keys


@pytest.fixture(scope="module")
def client(gateway_server, world):
    with httpx.Client(base_url=gateway_server.url, timeout=10) as http:
        yield http


def post(client, path, body, key="ok", keys=None, **kwargs):
    headers = kwargs.pop("headers", {})
    if key is not None:
        headers["authorization"] = f"Bearer {keys[key]}"
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(
        path, content=content, headers={"content-type": "application/json", **headers}, **kwargs
    )


def assert_error(response, status, *, type_=None, code=None, param=None, fragment=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    body = response.json()
    validate("ErrorResponse", body)
    error = body["error"]
    if type_ is not None:
        assert error["type"] == type_
    if code is not None:
        assert error["code"] == code
    assert error["param"] == param
    if fragment is not None:
        assert fragment in error["message"]
    return error


CHAT = {"model": "openai/plain-1", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("key", "code", "fragment"),
    [
        (None, "missing_api_key", "didn't provide an API key"),
        ("bogus", "invalid_api_key", "Incorrect API key"),
        ("revoked", "api_key_revoked", "revoked"),
        ("expired", "api_key_expired", "expired"),
    ],
)
def test_authentication_errors(client, world, key, code, fragment):
    keys = {**world, "bogus": "mrk_notarealkey_000000000000000000000000"}
    response = post(client, "/v1/chat/completions", CHAT, key=key, keys=keys)
    assert_error(response, 401, type_="authentication_error", code=code, fragment=fragment)


def test_x_api_key_header_is_accepted_for_anthropic_clients(client, world):
    response = client.post(
        "/v1/messages",
        content=orjson.dumps({"model": "anthropic/claude-test", "max_tokens": -1, "messages": []}),
        headers={"x-api-key": world["ok"], "content-type": "application/json"},
    )
    # Authenticated (not 401): the body is what is wrong, in Anthropic's envelope.
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == "max_tokens"


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (b"{not json", None, "not valid JSON"),
        (b'{"model": "\xff"}', None, "not valid UTF-8"),
        (b"[]", None, "must be a JSON object"),
        ({**CHAT, "messages": []}, "messages", "at least one message"),
        (
            {**CHAT, "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
            "is not one of",
        ),
        ({**CHAT, "max_tokens": -1}, "max_tokens", "less than the minimum"),
        ({**CHAT, "temperature": "hot"}, "temperature", "expected a number"),
        (
            {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools",
            "does not support tool calling",
        ),
        (
            {
                **CHAT,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "https://x/i.png"}}],
                    }
                ],
            },
            "messages[0].content[0]",
            "does not support image input",
        ),
        (
            {
                **CHAT,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {}},
                },
            },
            "response_format",
            "does not support JSON schema output",
        ),
        ({**CHAT, "model": "openai/embed-1"}, "model", "is not a chat model"),
        ({**CHAT, "logit_bias": {"hello": 5}}, "logit_bias", "must be a token id"),
        ({**CHAT, "logit_bias": {"50256": 101}}, "logit_bias", "between -100 and 100"),
        ({**CHAT, "logit_bias": {"50256": "5"}}, "logit_bias", "must be a number"),
        ({**CHAT, "logit_bias": [1, 2]}, "logit_bias", "expected an object"),
        ({**CHAT, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "at most 16"),
        ({**CHAT, "metadata": {"k" * 65: "v"}}, "metadata", "longer than 64 characters"),
        ({**CHAT, "metadata": {"k": "v" * 513}}, "metadata", "longer than 512 characters"),
        ({**CHAT, "metadata": {"k": 1}}, "metadata", "must be a string"),
    ],
)
def test_bad_requests(client, world, body, param, fragment):
    response = post(client, "/v1/chat/completions", body, keys=world)
    assert_error(response, 400, type_="invalid_request_error", param=param, fragment=fragment)


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_body_not_sent_as_json_is_refused_like_openai(client, world, content_type):
    """``curl -d`` without ``-H 'Content-Type: application/json'`` sends a form: refused with
    OpenAI's own error, before anything is routed or charged."""
    headers = {"authorization": f"Bearer {world['ok']}"}
    if content_type is not None:
        headers["content-type"] = content_type
    response = client.post("/v1/chat/completions", content=orjson.dumps(CHAT), headers=headers)
    error = assert_error(response, 400, type_="invalid_request_error", param=None)
    assert error["code"] == "unsupported_content_type"
    assert "only accepts 'application/json'" in error["message"]


def test_json_with_a_charset_parameter_is_json(client, world):
    headers = {"authorization": f"Bearer {world['ok']}"}
    headers["content-type"] = "Application/JSON; charset=utf-8"
    body = {**CHAT, "max_tokens": -1}  # parsed: the body's own error, not the media type's
    response = client.post("/v1/chat/completions", content=orjson.dumps(body), headers=headers)
    assert_error(response, 400, param="max_tokens")


@pytest.mark.parametrize(
    ("extra", "param", "fragment"),
    [
        ({"frequency_penalty": 1}, "frequency_penalty", "Extra inputs are not permitted"),
        ({"metadata": {"user_id": "u", "tenant": "t"}}, "metadata.tenant", "Extra inputs"),
        ({"mcp_servers": []}, "mcp_servers", "not supported"),
        ({"service_tier": "priority"}, "service_tier", "expected one of"),
    ],
)
def test_messages_refuses_what_anthropic_refuses(client, world, extra, param, fragment):
    body = {
        "model": "anthropic/claude-test",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }
    response = post(client, "/v1/messages", body, keys=world)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == param
    assert fragment in error["error"]["message"]


def test_unknown_and_forbidden_models(client, world):
    response = post(client, "/v1/chat/completions", {**CHAT, "model": "openai/nope"}, keys=world)
    assert_error(response, 404, code="model_not_found", param="model", fragment="does not exist")
    response = post(
        client,
        "/v1/chat/completions",
        {**CHAT, "model": "anthropic/claude-test"},
        key="openai_only",
        keys=world,
    )
    assert_error(response, 403, type_="permission_error", code="model_not_allowed", param="model")
    # A bare provider model name resolves when unambiguous (then fails upstream: dead port).
    response = post(client, "/v1/chat/completions", {**CHAT, "model": "plain-1"}, keys=world)
    error = assert_error(response, 502, type_="upstream_error", code="all_deployments_failed")
    assert "dead-plain-1 (connection), dead-plain-1 (connection)" in error["message"]
    # a transient failure with nothing else left: retried ROUTING_RETRIES (2) times
    assert response.headers["x-megarouter-attempts"] == "3"


def test_models_endpoints_respect_the_key(client, world):
    headers = {"authorization": f"Bearer {world['openai_only']}"}
    listing = client.get("/v1/models", headers=headers)
    assert listing.status_code == 200
    validate("ListModelsResponse", listing.json())
    ids = [m["id"] for m in listing.json()["data"]]
    assert ids == [
        "openai/embed-1",
        "openai/plain-1",
        "auto",
        "auto:balanced",
        "auto:cost",
        "auto:latency",
        "auto:availability",
    ]
    # created: the release date (00:00 UTC) when the catalog has one, else when the model
    # entered the catalog; 0 for the aliases
    from routing.models import Model

    added = Model.objects.get(canonical_id="openai/plain-1").created_at
    released = int(dt.datetime(2025, 3, 1, tzinfo=dt.UTC).timestamp())
    created = [m["created"] for m in listing.json()["data"]]
    assert created == [released, int(added.timestamp()), 0, 0, 0, 0, 0]
    one = client.get("/v1/models/openai/plain-1", headers=headers)
    assert one.json() == {
        "id": "openai/plain-1",
        "object": "model",
        "created": int(added.timestamp()),
        "owned_by": "openai",
    }
    embed = client.get("/v1/models/openai/embed-1", headers=headers).json()
    assert embed["created"] == released == 1740787200
    assert client.get("/v1/models/auto", headers=headers).json()["created"] == 0
    assert_error(
        client.get("/v1/models/anthropic/claude-test", headers=headers), 403, param="model"
    )
    assert_error(client.get("/v1/models/openai/missing", headers=headers), 404, param="model")


def test_unknown_paths_and_methods_are_json(client, world):
    assert_error(client.get("/v1/nothing/here"), 404, code="unknown_url")
    assert_error(client.get("/v1"), 404, code="unknown_url")
    response = client.get("/v1/chat/completions")
    assert_error(response, 405, code="method_not_allowed")
    assert response.headers["allow"] == "POST"
    assert_error(client.delete("/v1/models/openai/plain-1"), 405, code="method_not_allowed")


def test_body_over_the_limit_is_413(client, world):
    from django.conf import settings

    limit = settings.MEGAROUTER_MAX_BODY_BYTES
    big = b'{"model": "' + b"x" * limit + b'"}'
    response = post(client, "/v1/chat/completions", big, keys=world)
    assert_error(response, 413, code="request_too_large", fragment=f"limit of {limit} bytes")

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    response = client.post(
        "/v1/chat/completions", content=chunks(), headers={"authorization": f"Bearer {world['ok']}"}
    )
    assert_error(response, 413, code="request_too_large")


def test_django_view_path_renders_the_same_errors(world, settings):
    """The Django adapter (runserver, WSGI, test client) shares the handlers."""
    from django.test import Client

    django_client = Client()
    response = django_client.get("/v1/unknown")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"
    response = django_client.post(
        "/v1/chat/completions", data=b"{", content_type="application/json"
    )
    assert response.status_code == 401  # authentication comes before parsing
    with override_settings(MEGAROUTER_MAX_BODY_BYTES=2048):
        response = django_client.post(
            "/v1/chat/completions", data=b"x" * 4096, content_type="application/json"
        )
    assert response.status_code == 413
    assert response["X-Request-ID"]

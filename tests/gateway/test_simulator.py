"""The provider simulator over real HTTP: OpenAI shapes validated against the vendored OpenAI
schemas, each provider's auth rejection, knobs, faults, determinism and token accounting."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from gateway.providers.eventstream import EventStreamDecoder
from gateway.simulator.engine import KnobError, Knobs, parse_knobs
from gateway.simulator.server import Options, run_in_thread

SCHEMAS = json.loads(
    (Path(__file__).resolve().parents[2] / "gateway/schemas/openai/schemas.json").read_text()
)
TOKEN = re.compile(r"\w+|[^\w\s]")
CHAT = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Hello there, how are you today?"}],
    "max_tokens": 64,
}
OPENAI_AUTH = {"authorization": "Bearer sim-key"}


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` -> JSON Schema ``type: [..., "null"]``."""
    if isinstance(node, dict):
        node = {k: _nullable(v) for k, v in node.items()}
        if node.pop("nullable", False) is True:
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
            if isinstance(node.get("type"), str):
                node["type"] = [node["type"], "null"]
            elif "enum" not in node:
                node = {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


DOCUMENT = _nullable({"components": SCHEMAS["components"]})


def validate(instance: Any, name: str) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": DOCUMENT["components"]}
    jsonschema.validate(instance, schema, cls=jsonschema.Draft202012Validator)


@pytest.fixture
def client(simulator_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=simulator_url, timeout=5) as http:
        yield http


def sse_data(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


# ---------------------------------------------------------------- OpenAI schemas


def test_chat_completion_validates_against_openai_schema(client: httpx.Client) -> None:
    response = client.post("/openai/v1/chat/completions", json=CHAT, headers=OPENAI_AUTH)
    assert response.status_code == 200
    body = response.json()
    validate(body, "CreateChatCompletionResponse")
    text = body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] == len(TOKEN.findall(text))
    assert body["usage"]["prompt_tokens"] == 8 + 3
    assert (
        body["usage"]["total_tokens"]
        == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )


def test_chat_stream_chunks_validate(client: httpx.Client) -> None:
    payload = CHAT | {"stream": True, "stream_options": {"include_usage": True}}
    response = client.post("/openai/v1/chat/completions", json=payload, headers=OPENAI_AUTH)
    assert response.headers["content-type"] == "text/event-stream"
    data = sse_data(response.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    content = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    text = "".join(content)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == len(TOKEN.findall(text))
    # One token per content chunk.
    assert len([c for c in content if c]) == chunks[-1]["usage"]["completion_tokens"]


def test_tool_call_response_and_stream_validate(client: httpx.Client) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]  # fmt: skip
    payload = CHAT | {"tools": tools, "tool_choice": "required"}
    body = client.post("/openai/v1/chat/completions", json=payload, headers=OPENAI_AUTH).json()
    validate(body, "CreateChatCompletionResponse")
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert set(json.loads(call["function"]["arguments"])) == {"q"}
    stream = client.post(
        "/openai/v1/chat/completions", json=payload | {"stream": True}, headers=OPENAI_AUTH
    )
    for data in sse_data(stream.text)[:-1]:
        validate(json.loads(data), "CreateChatCompletionStreamResponse")


def test_tool_turns_knob_keeps_calling_tools_until_n_results(client: httpx.Client) -> None:
    tools = [
        {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
        for name in ("read", "edit")
    ]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Fix the bug."}]
    called = []
    for _ in range(4):
        payload = {"model": "agent~tool_turns=3", "messages": messages, "tools": tools}
        body = client.post("/openai/v1/chat/completions", json=payload, headers=OPENAI_AUTH)
        message = body.json()["choices"][0]["message"]
        if not message.get("tool_calls"):
            break
        call = message["tool_calls"][0]
        called.append(call["function"]["name"])
        messages += [message, {"role": "tool", "tool_call_id": call["id"], "content": "done"}]
    # three tool calls in turn over the tools (no "tool" in the prompt), then an answer
    assert called == ["read", "edit", "read"] and len(messages) == 7
    assert message["content"] and body.json()["choices"][0]["finish_reason"] == "stop"


def test_embeddings_models_completions_and_errors_validate(client: httpx.Client) -> None:
    emb = client.post("/openai/v1/embeddings", json={"model": "text-embedding-3-small", "input": ["a b", "c"]},
                      headers=OPENAI_AUTH).json()  # fmt: skip
    validate(emb, "CreateEmbeddingResponse")
    assert len(emb["data"][0]["embedding"]) == 1536
    assert emb["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    models = client.get("/openai/v1/models", headers=OPENAI_AUTH).json()
    validate(models, "ListModelsResponse")
    completion = client.post("/openai/v1/completions", json={"model": "gpt-3.5-turbo-instruct", "prompt": "Hi"},
                             headers=OPENAI_AUTH).json()  # fmt: skip
    validate(completion, "CreateCompletionResponse")
    for spec in ("fault=429", "fault=500", "fault=503", "fault=context", "fault=401"):
        error = client.post(
            "/openai/v1/chat/completions", json=CHAT, headers=OPENAI_AUTH | {"x-sim-fault": spec}
        )
        validate(error.json(), "ErrorResponse")
        validate(error.json()["error"], "Error")


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("embeddings", {"input": "a", "dimensions": 10**9}, "'dimensions' must be"),
        ("embeddings", {"input": "a", "dimensions": 1537}, "from 1 to 1536"),
        ("embeddings", {"input": ["a"] * 2049}, "at most 2048"),
        ("chat/completions", {**CHAT, "n": 10**6}, "'n' must be"),
        ("chat/completions", {**CHAT, "model": "gpt-4o-mini~tokens=1000000000"}, "at most"),
    ],
)
def test_inputs_that_would_grow_the_simulator_without_end_are_refused(
    client: httpx.Client, path: str, body: dict[str, Any], fragment: str
) -> None:
    """``dimensions=10**9`` once grew the simulator to 5 GB and took the ``make run`` stack
    down: every size the simulator builds from a request is bounded, refused with a 400."""
    body = {"model": "text-embedding-3-small", **body}
    started = time.monotonic()
    response = client.post(f"/openai/v1/{path}", json=body, headers=OPENAI_AUTH)
    assert time.monotonic() - started < 1
    assert response.status_code == 400, response.text
    validate(response.json(), "ErrorResponse")
    assert fragment in response.json()["error"]["message"]
    assert client.post("/openai/v1/chat/completions", json=CHAT, headers=OPENAI_AUTH).is_success


def test_json_schema_output_is_valid(client: httpx.Client) -> None:
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 12},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "score": {"type": "number", "minimum": 1, "maximum": 2},
            "kind": {"enum": ["a", "b"]},
            "nested": {
                "type": "object",
                "properties": {"ok": {"type": "boolean"}},
                "required": ["ok"],
            },
        },
        "required": ["title", "tags", "score", "kind", "nested"],
        "additionalProperties": False,
    }
    payload = CHAT | {"max_tokens": 500, "response_format": {"type": "json_schema",
                                                              "json_schema": {"name": "x", "schema": schema}}}  # fmt: skip
    body = client.post("/openai/v1/chat/completions", json=payload, headers=OPENAI_AUTH).json()
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), schema)
    payload["response_format"] = {"type": "json_object"}
    body = client.post("/openai/v1/chat/completions", json=payload, headers=OPENAI_AUTH).json()
    assert set(json.loads(body["choices"][0]["message"]["content"])) == {"answer"}


# ---------------------------------------------------------------- auth per provider


ANTHROPIC_BODY = {
    "model": "claude-3-5-haiku",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "hi"}],
}
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
BEDROCK_BODY = {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}


def test_missing_keys_get_each_providers_401_shape(client: httpx.Client) -> None:
    openai = client.post("/openai/v1/chat/completions", json=CHAT)
    assert openai.status_code == 401
    assert openai.json()["error"]["type"] == "invalid_request_error"
    assert openai.json()["error"]["param"] is None

    azure = client.post(
        "/azure/openai/deployments/d1/chat/completions?api-version=2024-10-21", json=CHAT
    )
    assert azure.status_code == 401 and azure.json()["error"]["code"] == "401"

    anthropic = client.post(
        "/anthropic/v1/messages", json=ANTHROPIC_BODY, headers={"anthropic-version": "2023-06-01"}
    )
    assert anthropic.status_code == 401
    assert anthropic.json() == {"type": "error", "error": {"type": "authentication_error",
                                                           "message": "x-api-key header is required"}}  # fmt: skip

    gemini = client.post("/gemini/v1beta/models/gemini-2.0-flash:generateContent", json=GEMINI_BODY)
    assert gemini.status_code == 403 and gemini.json()["error"]["status"] == "PERMISSION_DENIED"

    bedrock = client.post("/bedrock/model/m/converse", json=BEDROCK_BODY)
    assert bedrock.status_code == 403
    assert bedrock.headers["x-amzn-errortype"].startswith("MissingAuthenticationTokenException")


def test_invalid_key_and_required_headers(client: httpx.Client) -> None:
    bad = client.post(
        "/openai/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sim-invalid"}
    )
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    no_version = client.post(
        "/anthropic/v1/messages", json=ANTHROPIC_BODY, headers={"x-api-key": "k"}
    )
    assert no_version.status_code == 400
    assert no_version.json()["error"]["type"] == "invalid_request_error"
    gemini = client.post("/gemini/v1beta/models/g:generateContent", json=GEMINI_BODY,
                         headers={"x-goog-api-key": "sim-invalid"})  # fmt: skip
    assert gemini.status_code == 400
    assert gemini.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    no_api_version = client.post(
        "/azure/openai/deployments/d1/chat/completions", json=CHAT, headers={"api-key": "k"}
    )
    assert no_api_version.status_code == 404


def test_anthropic_requires_max_tokens(client: httpx.Client) -> None:
    body = dict(ANTHROPIC_BODY)
    del body["max_tokens"]
    response = client.post("/anthropic/v1/messages", json=body,
                           headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})  # fmt: skip
    assert response.status_code == 400
    assert "max_tokens" in response.json()["error"]["message"]


def test_bedrock_stream_is_binary_event_stream(client: httpx.Client) -> None:
    auth = {
        "authorization": "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/bedrock/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
        "x-amz-date": "20250101T000000Z",
    }
    response = client.post(
        "/bedrock/model/m~tokens=3/converse-stream", json=BEDROCK_BODY, headers=auth
    )
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
    events = EventStreamDecoder().feed(response.content)
    kinds = [headers[":event-type"] for headers, _ in events]
    assert kinds == ["messageStart", "contentBlockDelta", "contentBlockDelta", "contentBlockDelta",
                     "contentBlockStop", "messageStop", "metadata"]  # fmt: skip
    assert json.loads(events[-1][1])["usage"]["outputTokens"] == 3


# ---------------------------------------------------------------- knobs and faults


def test_knob_parsing() -> None:
    knobs = parse_knobs("fault=429~retry_after=2~times=1", "ttft_ms=30; id=x")
    assert (knobs.fault, knobs.retry_after, knobs.times, knobs.ttft_ms, knobs.id) == (
        "429",
        2.0,
        1,
        30,
        "x",
    )
    assert parse_knobs("", "503,for_s=1.5").fault == "503"
    with pytest.raises(KnobError):
        Knobs().apply("fault=teapot")
    with pytest.raises(KnobError):
        Knobs().apply("bogus=1")


def test_bad_knob_is_a_400(client: httpx.Client) -> None:
    response = client.post(
        "/openai/v1/chat/completions", json=CHAT | {"model": "gpt~nonsense=1"}, headers=OPENAI_AUTH
    )
    assert response.status_code == 400
    assert "simulator knob" in response.json()["error"]["message"]


def test_fault_from_model_name_once_then_recovers(client: httpx.Client) -> None:
    payload = CHAT | {"model": "gpt-4o~fault=500~times=1~id=model-once"}
    statuses = [client.post("/openai/v1/chat/completions", json=payload, headers=OPENAI_AUTH).status_code
                for _ in range(3)]  # fmt: skip
    assert statuses == [500, 200, 200]
    ok = client.post("/openai/v1/chat/completions", json=payload, headers=OPENAI_AUTH).json()
    assert ok["model"] == "gpt-4o"  # the knobs are not echoed


def test_persistent_429_with_retry_after_forms(client: httpx.Client) -> None:
    for _ in range(3):
        r = client.post(
            "/openai/v1/chat/completions", json=CHAT, headers=OPENAI_AUTH | {"x-sim-fault": "429"}
        )
        assert (r.status_code, r.headers["retry-after"]) == (429, "1")
    r = client.post("/openai/v1/chat/completions", json=CHAT,
                    headers=OPENAI_AUTH | {"x-sim-fault": "429~retry_after_ms=250"})  # fmt: skip
    assert r.headers["retry-after-ms"] == "250"
    r = client.post("/openai/v1/chat/completions", json=CHAT,
                    headers=OPENAI_AUTH | {"x-sim-fault": "429~retry_after_date=60"})  # fmt: skip
    assert r.headers["retry-after"].endswith(" GMT")


def test_flapping_recovers_after_the_window(client: httpx.Client) -> None:
    headers = OPENAI_AUTH | {"x-sim-fault": "503~for_s=0.8~id=flap-1"}
    first = client.post("/openai/v1/chat/completions", json=CHAT, headers=headers).status_code
    second = client.post("/openai/v1/chat/completions", json=CHAT, headers=headers).status_code
    time.sleep(0.85)
    later = client.post("/openai/v1/chat/completions", json=CHAT, headers=headers).status_code
    assert (first, second, later) == (503, 503, 200)


def test_percentage_faults_are_seeded(client: httpx.Client) -> None:
    def run(fault_id: str) -> list[int]:
        headers = OPENAI_AUTH | {"x-sim-fault": f"500~pct=30~seed=7~id={fault_id}"}
        return [client.post("/openai/v1/chat/completions", json=CHAT, headers=headers).status_code
                for _ in range(40)]  # fmt: skip

    a, b = run("pct-a"), run("pct-b")
    assert a == b  # same seed, same sequence
    assert 4 <= a.count(500) <= 20
    assert set(a) == {200, 500}


def test_deterministic_content(client: httpx.Client) -> None:
    def text(content: str, model: str = "gpt-4o-mini") -> str:
        body = CHAT | {"model": model, "messages": [{"role": "user", "content": content}]}
        r = client.post("/openai/v1/chat/completions", json=body, headers=OPENAI_AUTH)
        return r.json()["choices"][0]["message"]["content"]

    assert text("one") == text("one")
    assert text("one") != text("two")
    assert text("one") != text("one", model="gpt-4o")


def test_content_filter_by_trigger(client: httpx.Client) -> None:
    body = CHAT | {"messages": [{"role": "user", "content": "please [sim:filter] this"}]}
    r = client.post("/openai/v1/chat/completions", json=body, headers=OPENAI_AUTH).json()
    assert r["choices"][0]["finish_reason"] == "content_filter"
    assert r["choices"][0]["message"]["content"] is None
    assert r["choices"][0]["message"]["refusal"]
    validate(r, "CreateChatCompletionResponse")


def test_latency_mode_paces_tokens() -> None:
    url, stop = run_in_thread(port=0, options=Options(latency_ms=60, token_ms=10))
    try:
        with httpx.Client(base_url=url, timeout=5) as http:
            start = time.monotonic()
            body = CHAT | {"model": "gpt-4o-mini~tokens=10", "stream": True}
            with http.stream(
                "POST", "/openai/v1/chat/completions", json=body, headers=OPENAI_AUTH
            ) as r:
                first_at = None
                for _ in r.iter_raw():
                    first_at = first_at or time.monotonic()
            end = time.monotonic()
        assert first_at is not None
        assert first_at - start >= 0.055  # time to first token
        assert end - start >= 0.06 + 9 * 0.01 - 0.01  # then ~10 ms per token
    finally:
        stop()


def test_pipelined_keep_alive_requests(simulator_url: str) -> None:
    """Two requests on one connection, written back to back, get two responses in order."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(simulator_url)
    body = json.dumps(CHAT).encode()
    request = (
        b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(request + request)
        data = b""
        while data.count(b"HTTP/1.1 200 OK") < 2 or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2


def test_management_command_serves() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "simulate_providers", "--port", "0", "--no-uvloop"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        with httpx.Client(timeout=5) as http:
            r = http.post(f"http://127.0.0.1:{match.group(1)}/openai/v1/chat/completions",
                          json=CHAT, headers=OPENAI_AUTH)  # fmt: skip
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0


def test_the_prefix_cache_reports_a_repeated_prompt_start_as_cached():
    from gateway.simulator.engine import Knobs, PrefixCache, SimRequest, count_tokens

    system = "Cache me. " * 400  # 1,200 tokens (3 a repetition), + 3 for the message
    first = SimRequest("openai", "gpt-sim", Knobs(), [system, "Question one?"])
    cache = PrefixCache()
    assert cache.cached_tokens("openai", first) == 0  # nothing seen before
    follow = SimRequest("openai", "gpt-sim", Knobs(), [system, "Question one?", "A.", "Two?"])
    seen = count_tokens(system) + 3 + count_tokens("Question one?") + 3
    assert cache.cached_tokens("openai", follow) == seen // 128 * 128 == 1152
    other_model = SimRequest("openai", "gpt-other", Knobs(), [system, "Question one?"])
    assert cache.cached_tokens("openai", other_model) == 0  # each upstream model its own
    short = SimRequest("openai", "gpt-sim", Knobs(), ["Hi", "there"])
    cache.cached_tokens("openai", short)
    assert cache.cached_tokens("openai", short) == 0  # under 1,024 tokens nothing is cached
    expired = PrefixCache(ttl_s=0)
    expired.cached_tokens("openai", first)
    assert expired.cached_tokens("openai", first) == 0


def test_anthropic_breakpoints_write_then_read_the_marked_prefix():
    from gateway.simulator.engine import Knobs, PrefixCache, SimRequest, count_tokens

    system = "Cache me. " * 400  # 1,203 tokens with the message overhead
    cache = PrefixCache()

    def request(*texts, breakpoints):
        return SimRequest("anthropic", "claude", Knobs(), list(texts), breakpoints=breakpoints)

    first = request(system, "Q1?", breakpoints=(0,))
    assert cache.marked_tokens("anthropic", first) == (0, count_tokens(system) + 3)
    # the system prompt is read; the new breakpoint after the second turn is written
    second = request(system, "Q1?", "A.", "Q2?", breakpoints=(0, 3))
    read, written = cache.marked_tokens("anthropic", second)
    assert read == count_tokens(system) + 3
    assert written == sum(count_tokens(t) + 3 for t in ("Q1?", "A.", "Q2?"))
    assert cache.marked_tokens("anthropic", second) == (read + written, 0)  # all cached now
    short = request("Hi", breakpoints=(0,))
    assert cache.marked_tokens("anthropic", short) == (0, 0)  # under 1,024: nothing cached

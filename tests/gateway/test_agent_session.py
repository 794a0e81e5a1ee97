"""A Claude Code-shaped agent session through the real gateway to the simulator's Anthropic
surface, driven with the official ``anthropic`` SDK: a system prompt of text blocks and a tools
array, each with a cache breakpoint on its last block, ``metadata.user_id``, streaming,
extended thinking, 20 tool-use turns (each passing back the assistant's signed thinking block
and its tool_use, then the tool_result carrying the moving breakpoint) and a closing answer.

Per turn: the cache read is the whole previous prompt from turn 2 on and the cache write is
what the turn added (Anthropic's rule, with its look-back from a moved breakpoint); the cost on
the stream's SSE comment and on the usage record is exactly the catalog prices times the
reported tokens; every body the adapter sent upstream (recorded at the simulator) matches the
Messages request schema, with the breakpoints where the client put them."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import jsonschema
import orjson
import pytest

from billing.models import UsageRecord
from billing.services import usage_events_post
from gateway.simulator.engine import count_tokens, thinking_signature
from gateway.simulator.server import Options, start
from tests.gateway import factories as f
from tests.gateway.conftest import reset_caches

pytestmark = pytest.mark.slow

MODEL = "anthropic/claude-agent-sim"
TOOL_TURNS = 20
# Claude Sonnet's list prices per token: input, output, cache read (0.1x), 5-minute write (1.25x)
C_IN, C_OUT = Decimal("0.000003"), Decimal("0.000015")
C_READ, C_WRITE = Decimal("0.0000003"), Decimal("0.00000375")
EPHEMERAL = {"type": "ephemeral"}
THINKING = {"type": "enabled", "budget_tokens": 2048}
USER_ID = "user_5f1c0ffee_account_7a2e_session_3b9d4c21-8e0f-4f6a-9d57-2c1e6b0a4f18"
SCHEMA = json.loads(
    (Path(__file__).with_name("schemas") / "anthropic_messages_request.json").read_text()
)

SYSTEM = [
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
    {
        "type": "text",
        "text": "\nYou are an interactive CLI tool that helps users with software engineering "
        "tasks. Use the instructions below and the tools available to you to assist the user.\n"
        + "Read a file before you edit it; run the tests after a change; keep answers short. " * 90
        + "\n<env>\nWorking directory: /home/dev/ledger\nIs directory a git repo: Yes\n</env>",
        "cache_control": EPHEMERAL,
    },
]
TOOLS: list[dict[str, Any]] = [
    {
        "name": "Read",
        "description": "Reads a file from the local filesystem.",
        "input_schema": {
            "type": "object",
            "properties": {
                "file_path": {"type": "string", "description": "The absolute path"},
                "offset": {"type": "integer", "minimum": 1, "maximum": 2000},
                "limit": {"type": "integer", "minimum": 1, "maximum": 2000},
            },
            "required": ["file_path"],
            "additionalProperties": False,
        },
    },
    {
        "name": "Edit",
        "description": "Performs exact string replacements in files.",
        "input_schema": {
            "type": "object",
            "properties": {
                "file_path": {"type": "string"},
                "old_string": {"type": "string"},
                "new_string": {"type": "string"},
                "replace_all": {"type": "boolean", "default": False},
            },
            "required": ["file_path", "old_string", "new_string"],
            "additionalProperties": False,
        },
    },
    {
        "name": "Bash",
        "description": "Executes a bash command in a persistent shell session.",
        "input_schema": {
            "type": "object",
            "properties": {
                "command": {"type": "string"},
                "timeout": {"type": "number", "minimum": 1000, "maximum": 600000},
                "description": {"type": "string", "maxLength": 80},
            },
            "required": ["command"],
            "additionalProperties": False,
        },
    },
    {
        "name": "Grep",
        "description": "A search tool built on ripgrep.",
        "input_schema": {
            "type": "object",
            "properties": {
                "pattern": {"type": "string"},
                "path": {"type": "string"},
                "glob": {"type": "string"},
                "output_mode": {"enum": ["content", "files_with_matches", "count"]},
            },
            "required": ["pattern"],
            "additionalProperties": False,
        },
        "cache_control": EPHEMERAL,
    },
]
FIRST_TURN = [
    {
        "type": "text",
        "text": "<system-reminder>\nAs you answer the user's questions, you can use the "
        "context of the repository.\n</system-reminder>",
    },
    {
        "type": "text",
        "text": "The ledger test fails after the rounding change: find out why and fix it.",
        "cache_control": EPHEMERAL,
    },
]


# ---------------------------------------------------------------- the recording simulator


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, list[tuple[str, dict[str, str], dict[str, Any]]]]]:
    """A simulator of this module's own (a fresh prompt cache) that records every request it
    gets: (path, headers, JSON body)."""
    seen: list[tuple[str, dict[str, str], dict[str, Any]]] = []
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def main() -> None:
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(start(port=0, options=Options()))
        answer = server.simulator.handle

        def handle(method: str, target: str, headers: dict[str, str], body: bytes) -> Any:
            seen.append((target, dict(headers), orjson.loads(body) if body else {}))
            return answer(method, target, headers, body)

        server.simulator.handle = handle  # type: ignore[method-assign]
        holder.update(loop=loop, server=server)
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(server.close())
            loop.close()

    thread = threading.Thread(target=main, name="recording-simulator", daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield holder["server"].url, seen
    finally:
        holder["loop"].call_soon_threadsafe(holder["loop"].stop)
        thread.join(10)


@pytest.fixture(scope="module")
def agent_model(sim_world, upstream) -> str:
    """A Claude model that reasons, priced like Sonnet, whose deployment is the recording
    simulator acting as an agent (``tool_turns``: a tool call until 20 results came back)."""
    from routing.models import Credential, Provider

    url, _ = upstream
    model = f.model_create(
        Provider.objects.get(slug="anthropic"),
        "claude-agent-sim",
        price_in=C_IN,
        price_out=C_OUT,
        cached_in=C_READ,
        cache_write=C_WRITE,
        supports_reasoning=True,
    )
    f.deployment_create(
        model,
        name="sim-claude-agent",
        base_url=f"{url}/anthropic",
        upstream_name=f"claude-agent-sim~tool_turns={TOOL_TURNS}",
        credential=Credential.objects.get(name="sim"),
    )
    reset_caches()
    return MODEL


class Tee(httpx2.BaseTransport):
    """The SDK's transport (the SDK runs on httpx2, httpx's fork), keeping each response's raw bytes (the SSE comments the SDK's
    parser skips)."""

    def __init__(self) -> None:
        self.inner = httpx2.HTTPTransport()
        self.bodies: list[bytearray] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self.inner.handle_request(request)
        raw = bytearray()
        self.bodies.append(raw)
        inner = response.stream

        class Recorded(httpx2.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                for part in inner:  # type: ignore[union-attr]
                    raw.extend(part)
                    yield part

            def close(self) -> None:
                inner.close()  # type: ignore[union-attr]

        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=Recorded(),
            extensions=response.extensions,
            request=request,
        )

    def close(self) -> None:
        self.inner.close()


# ---------------------------------------------------------------- the session


def _marks(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Where a body's cache breakpoints sit: the tools' and the system prompt's by position
    from the end, the messages' by (message, block)."""
    out: list[tuple[Any, ...]] = []
    tools = body.get("tools") or []
    out += [("tools", i - len(tools)) for i, t in enumerate(tools) if "cache_control" in t]
    system = body.get("system")
    if isinstance(system, list):
        out += [("system", i - len(system)) for i, b in enumerate(system) if "cache_control" in b]
    for m, message in enumerate(body["messages"]):
        if isinstance(message["content"], list):
            out += [
                ("messages", m, b)
                for b, block in enumerate(message["content"])
                if "cache_control" in block
            ]
    return out


def _tool_output(name: str, turn: int) -> str:
    return f"{name} #{turn}: " + "ok line of output " * (10 + 3 * turn)


def test_claude_code_session_caches_from_turn_two_and_costs_exactly(
    gateway_server, sim_world, agent_model, upstream
):
    _, seen = upstream
    tee = Tee()
    http_client = httpx2.Client(transport=tee, timeout=15)
    client = anthropic.Anthropic(
        base_url=gateway_server.url, api_key=sim_world.key, max_retries=0, http_client=http_client
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": FIRST_TURN}]
    sent: list[dict[str, Any]] = []  # what the client sent, per turn
    turns: list[dict[str, Any]] = []
    with client:
        for turn in range(TOOL_TURNS + 1):
            request = {
                "model": agent_model,
                "max_tokens": 8192,
                "system": SYSTEM,
                "tools": TOOLS,
                "messages": messages,
                "metadata": {"user_id": USER_ID},
                "thinking": THINKING,
            }
            counted = client.messages.count_tokens(
                **{k: v for k, v in request.items() if k not in ("max_tokens", "metadata")}
            ).input_tokens
            sent.append(json.loads(json.dumps(request)))
            with client.messages.stream(**request) as stream:
                final = stream.get_final_message()
                usage_id = stream.response.headers["x-megarouter-usage-id"]
            comment = re.findall(rb": x-megarouter-cost-usd (\S+)\n", bytes(tee.bodies[-1]))
            turns.append({"final": final, "usage_id": usage_id, "counted": counted, "sse": comment})
            kinds = [block.type for block in final.content]
            if turn == TOOL_TURNS:
                assert kinds == ["thinking", "text"] and final.stop_reason == "end_turn"
                break
            assert kinds == ["thinking", "tool_use"] and final.stop_reason == "tool_use"
            thought, use = final.content
            assert use.name == TOOLS[turn % len(TOOLS)]["name"]
            # Claude Code's next request: the breakpoint moves from the last user turn to the
            # new one; the assistant turn goes back whole, signed thinking first
            del messages[-1]["content"][-1]["cache_control"]
            messages += [
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "thinking",
                            "thinking": thought.thinking,
                            "signature": thought.signature,
                        },
                        {"type": "tool_use", "id": use.id, "name": use.name, "input": use.input},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": use.id,
                            "content": _tool_output(use.name, turn),
                            "cache_control": EPHEMERAL,
                        }
                    ],
                },
            ]

    # ---- usage and cost, turn by turn
    usage_events_post()
    previous = 0
    for number, t in enumerate(turns, start=1):
        final, usage = t["final"], t["final"].usage
        thought = final.content[0]
        assert thought.signature == thinking_signature(thought.thinking)
        read, written = usage.cache_read_input_tokens, usage.cache_creation_input_tokens
        # the last breakpoint closes the prompt: all of it is read from or written to the cache
        assert usage.input_tokens == 0
        assert read + written == t["counted"]
        if number == 1:
            assert (read, written) == (0, t["counted"])
        else:  # the previous turn's whole prompt is read, what this turn added is written
            assert read == previous > 0
            assert written == t["counted"] - previous > 0
        previous = t["counted"]
        answer = final.content[1]
        said = orjson.dumps(answer.input).decode() if answer.type == "tool_use" else answer.text
        assert usage.output_tokens == count_tokens(thought.thinking) + count_tokens(said)
        expected = (
            usage.input_tokens * C_IN
            + read * C_READ
            + written * C_WRITE
            + usage.output_tokens * C_OUT
        )
        assert [Decimal(c.decode()) for c in t["sse"]] == [expected], f"turn {number}"
        record = UsageRecord.objects.get(request_id=t["usage_id"])
        assert record.cost == expected, f"turn {number}"
        assert (record.tokens_in, record.tokens_cached, record.tokens_out) == (
            t["counted"],
            read,
            usage.output_tokens,
        )
        assert record.model == MODEL and record.tags == {"user": USER_ID}

    # ---- what the adapter sent upstream
    bodies = [body for target, _, body in seen if target == "/anthropic/v1/messages"]
    heads = [headers for target, headers, _ in seen if target == "/anthropic/v1/messages"]
    assert len(bodies) == len(sent) == TOOL_TURNS + 1
    for number, (body, headers, client_body) in enumerate(
        zip(bodies, heads, sent, strict=True), start=1
    ):
        jsonschema.validate(body, SCHEMA)
        assert headers["anthropic-version"] == "2023-06-01"
        assert body["model"] == f"claude-agent-sim~tool_turns={TOOL_TURNS}"
        assert body["stream"] is True and body["max_tokens"] == 8192
        assert body["thinking"] == THINKING and body["metadata"] == {"user_id": USER_ID}
        # the conversation, tools and system blocks exactly as the client sent them,
        # breakpoints included
        assert body["messages"] == client_body["messages"], f"turn {number}"
        assert body["tools"] == client_body["tools"]
        assert body["system"] == client_body["system"] == SYSTEM
        marks = _marks(body)
        assert marks == _marks(client_body) == _marks_expected(client_body)
        assert len(marks) <= 4
        for message in body["messages"]:
            kinds = [block["type"] for block in message["content"]]
            if message["role"] == "assistant":
                assert kinds == ["thinking", "tool_use"]  # thinking precedes the tool call


def _marks_expected(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Claude Code's three breakpoints: the last tool, the system prompt's last block, the
    last block of the newest user turn."""
    last = body["messages"][-1]
    return [("tools", -1), ("system", -1), ("messages", len(body["messages"]) - 1, len(last["content"]) - 1)]  # fmt: skip

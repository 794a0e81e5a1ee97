"""The provider simulator: a small raw-asyncio HTTP/1.1 server (keep-alive, chunked streaming)
speaking OpenAI, Azure OpenAI, Anthropic, Gemini and Bedrock. No Django on the hot path.

    python manage.py simulate_providers --port 9100            # fast mode
    python manage.py simulate_providers --latency-ms 20 --token-ms 5

In tests: ``url, stop = run_in_thread(port=0)`` (a thread with its own loop) or
``server = await start(port=0)`` in the running loop. URL layout, auth, knobs and faults:
docs/simulator.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from gateway.simulator import anthropic, bedrock, gemini, openai
from gateway.simulator.engine import (
    DEFAULT_CONTEXT_WINDOW,
    ERROR_FAULTS,
    NO_PREFILL,
    PREFIX_CACHE_PROVIDERS,
    FaultState,
    KnobError,
    Knobs,
    PrefixCache,
    Rejected,
    SimRequest,
    parse_knobs,
    prompt_tokens,
    split_model,
)
from gateway.simulator.replies import Reply, StreamReply, json_reply

# What Anthropic's count_tokens accepts (it refuses any other field).
ANTHROPIC_COUNT_FIELDS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"}
)
INVALID_KEY = "sim-invalid"  # the API key every provider surface rejects as invalid
MAX_BODY = 32 * 1024 * 1024


@dataclass(slots=True)
class Options:
    latency_ms: int = 0  # default time to first token
    token_ms: int = 0  # default pace between tokens
    context_window: int = DEFAULT_CONTEXT_WINDOW


@dataclass(slots=True)
class Plan:
    """What the connection does: write a reply (maybe after a delay), stream, or misbehave."""

    reply: Reply | StreamReply | None
    knobs: Knobs | None = None
    fault: str | None = None  # the active transport / stream fault
    delay: float = 0.0  # non-stream: seconds before the response

    def immediate(self) -> bool:
        return (isinstance(self.reply, Reply) and self.delay <= 0 and self.fault is None) or (
            isinstance(self.reply, StreamReply)
            and self.fault is None
            and self.knobs is not None
            and not self.knobs.ttft_ms
            and not self.knobs.token_ms
        )


def _retry_headers(knobs: Knobs) -> list[tuple[str, str]]:
    if knobs.retry_after_ms is not None:
        return [("retry-after-ms", str(knobs.retry_after_ms))]
    if knobs.retry_after_date is not None:
        when = time.time() + knobs.retry_after_date
        return [("retry-after", email.utils.formatdate(when, usegmt=True))]
    return [("retry-after", f"{knobs.retry_after if knobs.retry_after is not None else 1:g}")]


class Simulator:
    """Request -> Plan. Stateless apart from fault counters."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or Options()
        self.faults = FaultState()
        self.prompt_caches = PrefixCache()

    # ------------------------------------------------------------ errors per provider

    def _error(self, provider: str, fault: str, knobs: Knobs, **extra: Any) -> Reply:
        retry = _retry_headers(knobs)
        if provider in ("openai", "azure"):
            return openai.error_reply(
                fault, azure=provider == "azure", retry_headers=retry, **extra
            )
        if provider == "anthropic":
            return anthropic.error_reply(fault, retry_headers=retry, **extra)
        if provider == "gemini":
            seconds = knobs.retry_after if knobs.retry_after is not None else 1.0
            return gemini.error_reply(fault, retry_headers=retry, retry_seconds=seconds, **extra)
        return bedrock.error_reply(fault, retry_headers=retry, **extra)

    def _auth(
        self, provider: str, headers: dict[str, str], query: dict[str, list[str]]
    ) -> Reply | None:
        knobs = Knobs()
        if provider == "openai":
            auth = headers.get("authorization", "")
            key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if not key:
                return self._error(
                    provider, "401", knobs,
                    detail="You didn't provide an API key. You need to provide your API key in "
                    "an Authorization header using Bearer auth (i.e. Authorization: Bearer "
                    "YOUR_KEY).",
                )  # fmt: skip
        elif provider == "azure":
            key = headers.get("api-key", "")
            if not key and headers.get("authorization", "").lower().startswith("bearer "):
                key = headers["authorization"][7:]
            if not key:
                return self._error(provider, "401", knobs)
        elif provider == "anthropic":
            key = headers.get("x-api-key", "")
            if not key:
                return self._error(provider, "401", knobs, detail="x-api-key header is required")
            if not headers.get("anthropic-version"):
                return self._error(
                    provider, "400", knobs, detail="anthropic-version: header is required"
                )
        elif provider == "gemini":
            key = headers.get("x-goog-api-key") or (query.get("key") or [""])[0]
            if not key:
                return self._error(provider, "403", knobs)
        else:
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer ") and auth[7:].strip():
                key = auth[7:].strip()
            elif bedrock.SIGV4_RE.match(auth) and headers.get("x-amz-date"):
                key = auth.split("Credential=", 1)[1].split("/", 1)[0]
            else:
                return self._error(provider, "missing-auth", knobs)
        if key == INVALID_KEY:
            return self._error(provider, "401", knobs)
        return None

    # ------------------------------------------------------------ routing

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Plan:
        path, _, query_string = target.partition("?")
        path = unquote(path)
        query = parse_qs(query_string)
        if path in ("/", "/healthz"):
            return Plan(json_reply(200, {"status": "ok"}))
        provider, rest = self._provider(path)
        if provider is None:
            return Plan(openai.not_found(path))
        denied = self._auth(provider, headers, query)
        if denied is not None:
            return Plan(denied)
        try:
            return self._dispatch(provider, method, rest, query, headers, body)
        except KnobError as exc:
            return Plan(self._error(provider, "400", Knobs(), detail=f"simulator knob: {exc}"))
        except Rejected as exc:
            return Plan(self._error(provider, "400", Knobs(), detail=str(exc)))
        except (ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
            return Plan(self._error(provider, "400", Knobs(), detail=f"invalid request: {exc}"))

    @staticmethod
    def _provider(path: str) -> tuple[str | None, str]:
        for prefix, provider in (
            ("/openai/v1", "openai"),
            ("/anthropic", "anthropic"),
            ("/gemini", "gemini"),
            ("/azure", "azure"),
            ("/bedrock", "bedrock"),
        ):
            if path.startswith(prefix + "/"):
                return provider, path[len(prefix) :]
        return None, path

    def _dispatch(
        self,
        provider: str,
        method: str,
        rest: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        raw: bytes,
    ) -> Plan:
        """Decode the JSON body and hand it to the provider's route."""
        header_spec = headers.get("x-sim-fault")
        if provider == "openai" and rest == "/models" and method == "GET":
            return Plan(openai.models_reply())
        if method != "POST":
            return Plan(openai.not_found(rest))
        body = orjson.loads(raw) if raw else {}
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        if provider == "openai":
            return self._route_openai(rest, body, header_spec)
        if provider == "azure":
            return self._route_azure(rest, query, body, header_spec)
        if provider == "anthropic":
            return self._route_anthropic(rest, body, header_spec)
        if provider == "gemini":
            return self._route_gemini(rest, body, header_spec)
        return self._route_bedrock(rest, body, header_spec)

    def _route_openai(self, rest: str, body: dict[str, Any], header_spec: str | None) -> Plan:
        """``/openai/v1/{chat/completions,embeddings,completions}``; the model is in the body."""
        model, spec = split_model(str(body.get("model") or ""))
        if not model:
            raise ValueError("you must provide a model parameter")
        knobs = parse_knobs(spec, header_spec)
        if rest == "/chat/completions":
            return self._chat("openai", openai.parse_chat("openai", model, knobs, body))
        if rest == "/embeddings":
            return self._simple(
                "openai", knobs, lambda: openai.embeddings_reply(model, knobs, body)
            )
        if rest == "/completions":
            return self._simple(
                "openai", knobs, lambda: openai.completion_reply(model, knobs, body)
            )
        return Plan(openai.not_found(rest))

    def _route_azure(
        self,
        rest: str,
        query: dict[str, list[str]],
        body: dict[str, Any],
        header_spec: str | None,
    ) -> Plan:
        """``/azure/openai/deployments/{deployment}/{operation}?api-version=...``."""
        parts = rest.split("/")  # /openai/deployments/{deployment}/{operation...}
        if len(parts) < 5 or parts[1] != "openai" or parts[2] != "deployments":
            return Plan(openai.not_found(rest))
        if not query.get("api-version"):
            return Plan(
                json_reply(404, {"error": {"code": "404", "message": "Resource not found"}})
            )
        model, spec = split_model(parts[3])
        knobs = parse_knobs(spec, header_spec)
        operation = "/".join(parts[4:])
        if operation == "chat/completions":
            return self._chat("azure", openai.parse_chat("azure", model, knobs, body))
        if operation == "embeddings":
            return self._simple("azure", knobs, lambda: openai.embeddings_reply(model, knobs, body))
        return Plan(openai.not_found(rest))

    def _route_anthropic(self, rest: str, body: dict[str, Any], header_spec: str | None) -> Plan:
        """``/anthropic/v1/messages`` and ``/anthropic/v1/messages/count_tokens``."""
        if rest == "/v1/messages/count_tokens":
            extra = sorted(set(body) - ANTHROPIC_COUNT_FIELDS)
            if extra:
                detail = f"{extra[0]}: Extra inputs are not permitted"
                return Plan(self._error("anthropic", "400", Knobs(), detail=detail))
            model, spec = split_model(str(body.get("model") or ""))
            knobs = parse_knobs(spec, header_spec)
            request = anthropic.parse(model, knobs, {**body, "max_tokens": 1}, counting=True)
            count = prompt_tokens(request)
            return self._simple(
                "anthropic", knobs, lambda: json_reply(200, {"input_tokens": count})
            )
        if rest != "/v1/messages":
            return Plan(self._error("anthropic", "400", Knobs(), detail=f"unknown path {rest}"))
        model, spec = split_model(str(body.get("model") or ""))
        knobs = parse_knobs(spec, header_spec)
        return self._chat("anthropic", anthropic.parse(model, knobs, body))

    def _route_gemini(self, rest: str, body: dict[str, Any], header_spec: str | None) -> Plan:
        """``/gemini/v1beta/models/{model}:{generateContent,streamGenerateContent,
        batchEmbedContents}``."""
        prefix = "/v1beta/models/"
        if not rest.startswith(prefix) or ":" not in rest:
            return Plan(self._error("gemini", "400", Knobs(), detail=f"unknown path {rest}"))
        name, _, operation = rest[len(prefix) :].rpartition(":")
        model, spec = split_model(name)
        knobs = parse_knobs(spec, header_spec)
        if operation == "generateContent":
            return self._chat("gemini", gemini.parse(model, knobs, body, stream=False))
        if operation == "streamGenerateContent":
            return self._chat("gemini", gemini.parse(model, knobs, body, stream=True))
        if operation == "batchEmbedContents":
            return self._simple("gemini", knobs, lambda: gemini.embed_reply(model, knobs, body))
        return Plan(self._error("gemini", "400", Knobs(), detail=f"unknown method {operation}"))

    def _route_bedrock(self, rest: str, body: dict[str, Any], header_spec: str | None) -> Plan:
        """``/bedrock/model/{modelId}/converse`` and ``/converse-stream``."""
        parts = rest.split("/")
        if (
            len(parts) != 4
            or parts[1] != "model"
            or parts[3] not in ("converse", "converse-stream")
        ):
            return Plan(self._error("bedrock", "400", Knobs(), detail=f"unknown path {rest}"))
        model, spec = split_model(parts[2])
        knobs = parse_knobs(spec, header_spec)
        stream = parts[3] == "converse-stream"
        return self._chat("bedrock", bedrock.parse(model, knobs, body, stream=stream))

    # ------------------------------------------------------------ faults and replies

    def _fault(self, provider: str, knobs: Knobs, key: str) -> str | None:
        if knobs.fault is None:
            return None
        return knobs.fault if self.faults.active(knobs, f"{provider}:{key}:{knobs.raw}") else None

    def _simple(self, provider: str, knobs: Knobs, build: Callable[[], Reply]) -> Plan:
        fault = self._fault(provider, knobs, "simple")
        if fault in ERROR_FAULTS and fault not in ("context", "filter"):
            return Plan(self._error(provider, fault, knobs))
        delay = (knobs.ttft_ms or self.options.latency_ms) / 1000.0
        if fault in ("reset", "hang", "malformed", "cut", "stall"):
            return Plan(build(), knobs, fault, delay)
        return Plan(build(), knobs, None, delay)

    def _chat(self, provider: str, request: SimRequest) -> Plan:
        knobs = request.knobs
        if knobs.ttft_ms is None:
            knobs.ttft_ms = self.options.latency_ms
        if knobs.token_ms is None:
            knobs.token_ms = self.options.token_ms
        fault = self._fault(provider, knobs, request.model)
        window = knobs.ctx or self.options.context_window
        tokens = prompt_tokens(request)
        if fault == "context" or tokens + (request.max_tokens or 0) > window:
            return Plan(
                self._error(provider, "context", knobs, prompt_tokens=tokens, window=window)
            )
        if fault == "filter":
            if provider == "azure":
                return Plan(self._error(provider, "filter", knobs))
            fault = None  # the generator answers with the provider's refusal
            knobs.fault = "filter"
        elif knobs.fault == "filter":
            knobs.fault = None
        if fault in ERROR_FAULTS:
            return Plan(self._error(provider, fault, knobs))
        if fault == "no_prefill" and request.prefill:
            return Plan(self._error(provider, "400", knobs, detail=NO_PREFILL))
        if not knobs.cached and provider in PREFIX_CACHE_PROVIDERS:
            knobs.cached = self.prompt_caches.cached_tokens(provider, request)
        elif not knobs.cached and provider == "anthropic" and request.breakpoints:
            knobs.cached, knobs.cache_write = self.prompt_caches.marked_tokens(provider, request)
        if request.stream:
            if provider in ("openai", "azure"):
                reply: Reply | StreamReply = openai.chat_stream(request)
            elif provider == "anthropic":
                reply = anthropic.message_stream(request)
            elif provider == "gemini":
                reply = gemini.generate_stream(request)
            else:
                reply = bedrock.converse_stream(request)
            return Plan(reply, knobs, fault)
        if provider in ("openai", "azure"):
            reply = openai.chat_reply(request)
        elif provider == "anthropic":
            reply = anthropic.message_reply(request)
        elif provider == "gemini":
            reply = gemini.generate_reply(request)
        else:
            reply = bedrock.converse_reply(request)
        delay = (knobs.ttft_ms or 0) / 1000.0
        if knobs.token_ms:
            delay += knobs.token_ms / 1000.0 * _completion_tokens(reply)
        return Plan(reply, knobs, fault, delay)


def _completion_tokens(reply: Reply) -> int:
    try:
        data = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return 0
    usage = data.get("usage") or data.get("usageMetadata") or {}
    return int(
        usage.get("completion_tokens")
        or usage.get("output_tokens")
        or usage.get("outputTokens")
        or usage.get("candidatesTokenCount")
        or 0
    )


# ---------------------------------------------------------------- HTTP/1.1 over asyncio


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = {529: "Site Overloaded"}.get(status, "Unknown")
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


def encode_reply(reply: Reply, keep_alive: bool = True) -> bytes:
    head = [_status_line(reply.status)]
    head.append(b"content-type: " + reply.content_type.encode() + b"\r\n")
    head.append(b"content-length: " + str(len(reply.body)).encode() + b"\r\n")
    for name, value in reply.headers:
        head.append(f"{name}: {value}\r\n".encode())
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + reply.body


def stream_head(reply: StreamReply) -> bytes:
    head = [_status_line(200)]
    head.append(b"content-type: " + reply.content_type.encode() + b"\r\n")
    head.append(b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n")
    for name, value in reply.headers:
        head.append(f"{name}: {value}\r\n".encode())
    head.append(b"\r\n")
    return b"".join(head)


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


class _Connection(asyncio.Protocol):
    def __init__(self, simulator: Simulator, connections: set[_Connection]) -> None:
        self.simulator = simulator
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.task is None:
            self._process()

    def _bad_request(self, message: str) -> None:
        assert self.transport is not None
        reply = json_reply(400, {"error": {"message": message, "type": "invalid_request_error",
                                           "param": None, "code": None}})  # fmt: skip
        self.transport.write(encode_reply(reply, keep_alive=False))
        self.transport.close()
        self.closed = True

    def _process(self) -> None:
        transport = self.transport
        assert transport is not None
        while not self.closed and self.task is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > 65536:
                    self._bad_request("request head too large")
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, target, _version = lines[0].split(" ", 2)
            except ValueError:
                self._bad_request("malformed request line")
                return
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._bad_request("chunked request bodies are not supported; send content-length")
                return
            try:
                length = int(headers.get("content-length") or 0)
            except ValueError:
                self._bad_request("bad content-length")
                return
            if length > MAX_BODY:
                self._bad_request("body too large")
                return
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            keep_alive = headers.get("connection", "").lower() != "close"
            plan = self.simulator.handle(method, target, headers, body)
            if plan.immediate():
                if isinstance(plan.reply, Reply):
                    transport.write(encode_reply(plan.reply, keep_alive))
                else:
                    assert isinstance(plan.reply, StreamReply)
                    out = [stream_head(plan.reply)]
                    out.extend(chunk(event) for event in plan.reply.events)
                    out.append(LAST_CHUNK)
                    transport.write(b"".join(out))
                if not keep_alive:
                    transport.close()
                    self.closed = True
                continue
            self.task = asyncio.get_running_loop().create_task(self._run(plan, keep_alive))

    async def _run(self, plan: Plan, keep_alive: bool) -> None:
        transport = self.transport
        assert transport is not None
        try:
            await self._perform(transport, plan, keep_alive)
        except asyncio.CancelledError:
            return
        finally:
            self.task = None
        if not self.closed and not keep_alive:
            transport.close()
            self.closed = True
        if not self.closed and self.buffer:
            self._process()

    async def _perform(self, transport: asyncio.Transport, plan: Plan, keep_alive: bool) -> None:
        fault = plan.fault
        knobs = plan.knobs or Knobs()
        if fault == "reset":
            transport.abort()
            self.closed = True
            return
        if fault == "hang":
            await asyncio.Event().wait()  # until the client goes away (or the server stops)
            return
        reply = plan.reply
        if isinstance(reply, Reply):
            if plan.delay > 0:
                await asyncio.sleep(plan.delay)
            if fault == "stall":
                await asyncio.sleep(knobs.stall_ms / 1000.0)
            if fault == "malformed":
                reply = Reply(
                    reply.status, reply.body[: max(1, len(reply.body) // 2)], reply.headers
                )
                transport.write(encode_reply(reply, keep_alive))
                return
            data = encode_reply(reply, keep_alive)
            if fault == "cut":  # headers promise the whole body; half of it comes
                transport.write(data[: len(data) - len(reply.body) // 2])
                transport.abort()
                self.closed = True
                return
            transport.write(data)
            return
        assert isinstance(reply, StreamReply)
        events = list(reply.events)
        index_at = reply.token_start + knobs.after
        if fault == "no_done" and reply.terminator:
            events = events[: -reply.terminator]
        if fault == "malformed":
            events.insert(min(index_at, len(events)), reply.malformed)
        transport.write(stream_head(reply))
        ttft = (knobs.ttft_ms or 0) / 1000.0
        pace = (knobs.token_ms or 0) / 1000.0
        if ttft:
            await asyncio.sleep(ttft)
        for index, event in enumerate(events):
            if self.closed or transport.is_closing():
                return
            if fault == "cut" and index == index_at:
                transport.abort()
                self.closed = True
                return
            if fault == "stall" and index == index_at:
                await asyncio.sleep(knobs.stall_ms / 1000.0)
            if pace and index > reply.token_start:
                await asyncio.sleep(pace)
            transport.write(chunk(event))
        transport.write(LAST_CHUNK)


class SimulatorServer:
    def __init__(self, server: asyncio.Server, simulator: Simulator, connections: set[Any]) -> None:
        self.server = server
        self.simulator = simulator
        self.connections = connections
        sock = server.sockets[0].getsockname()
        self.host, self.port = sock[0], sock[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        self.server.close()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)


async def start(
    host: str = "127.0.0.1", port: int = 0, options: Options | None = None
) -> SimulatorServer:
    simulator = Simulator(options)
    connections: set[_Connection] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(simulator, connections), host, port, backlog=1024, reuse_address=True
    )
    return SimulatorServer(server, simulator, connections)


def run_in_thread(
    host: str = "127.0.0.1", port: int = 0, options: Options | None = None
) -> tuple[str, Callable[[], None]]:
    """Start the simulator on a daemon thread with its own event loop; returns its base URL
    (``http://127.0.0.1:PORT``) and a ``stop()`` that shuts it down and joins the thread."""
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def main() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(start(host, port, options))
        holder["server"] = server
        holder["loop"] = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(server.close())
            loop.close()

    thread = threading.Thread(target=main, name="provider-simulator", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the provider simulator did not start")

    def stop() -> None:
        loop: asyncio.AbstractEventLoop = holder["loop"]
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return holder["server"].url, stop

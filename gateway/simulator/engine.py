"""What the simulator answers, independent of any wire format: knobs (latency and faults), the
token rule, deterministic generation (text, tool calls, JSON), embeddings, and fault state.

Token rule (documented in docs/simulator.md): a token is a run of word characters or one
punctuation character (regex ``\\w+|[^\\w\\s]``). ``prompt_tokens`` = the sum over messages of
(tokens of its text + 3), plus the tokens of the tools' JSON when tools are offered.
``completion_tokens`` = the tokens of the text (or tool-call arguments, or JSON) returned, plus
the ``reasoning`` knob. Streams send one token per content chunk, so the concatenated chunks
equal the non-streamed text and their count equals ``completion_tokens``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import random
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
PIECE_RE = re.compile(r"\s*(?:\w+|[^\w\s])")
TOOL_TRIGGER_RE = re.compile(r"\btools?\b", re.IGNORECASE)
FILTER_TRIGGER = "[sim:filter]"

VOCABULARY = [
    "the",
    "quick",
    "model",
    "routes",
    "every",
    "request",
    "to",
    "a",
    "provider",
    "that",
    "answers",
    "with",
    "clear",
    "and",
    "useful",
    "text",
    "about",
    "budgets",
    "latency",
    "tokens",
    "streams",
    "errors",
    "retries",
    "regions",
    "prices",
    "caches",
    "tools",
    "schemas",
    "graphs",
    "numbers",
    "reasons",
    "plans",
    "steps",
    "results",
    "checks",
    "tests",
    "data",
    "keys",
    "teams",
    "projects",
    "orders",
    "limits",
    "health",
    "breakers",
    "failover",
    "gateway",
    "router",
    "adapter",
    "simulator",
    "chunk",
    "event",
    "value",
    "signal",
    "window",
    "context",
    "answer",
    "question",
    "summary",
    "detail",
    "option",
    "choice",
]

DEFAULT_CONTEXT_WINDOW = 128_000
MESSAGE_OVERHEAD = 3

ERROR_FAULTS = {"429", "500", "502", "503", "529", "401", "403", "400", "context", "filter"}
# ``no_prefill``: a model that refuses a conversation ending with an assistant turn (400), as
# newer Claude models do; other requests are answered.
REQUEST_FAULTS = {"no_prefill"}
NO_PREFILL = (
    "This model does not support assistant message prefill. The conversation must end with a "
    "user message."
)
TRANSPORT_FAULTS = {"reset", "hang"}
STREAM_FAULTS = {"cut", "stall", "malformed", "no_done"}
ANSWER_FAULTS = {"overrun"}  # a wrong answer with a success status
FAULTS = ERROR_FAULTS | TRANSPORT_FAULTS | STREAM_FAULTS | ANSWER_FAULTS | REQUEST_FAULTS


def count_tokens(text: str) -> int:
    return len(TOKEN_RE.findall(text))


def pieces(text: str) -> list[str]:
    """Split text into streamable pieces of one token each (leading whitespace kept)."""
    return PIECE_RE.findall(text)


class KnobError(ValueError):
    pass


class Rejected(ValueError):
    """A request the provider refuses with a 400 carrying exactly this message."""


# Extended thinking (Anthropic): the simulator signs its thinking text with this key, so a
# block passed back with its text or signature changed is refused, as the real API refuses it.
THINKING_KEY = b"megarouter-simulator-thinking"
# The prompt Anthropic documents for testing redacted thinking: the answer's reasoning comes
# as a redacted_thinking block.
REDACTED_TRIGGER = (
    "ANTHROPIC_MAGIC_STRING_TRIGGER_REDACTED_THINKING_46C9A13E193C177646C7"
    "398A98432ECCCE4C1253D5E2D82641AC0E52CC2876CB"
)


def thinking_signature(text: str) -> str:
    """The signature of a thinking block's text: base64 of its HMAC-SHA256."""
    digest = hmac.new(THINKING_KEY, text.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()


def redacted_data(text: str) -> str:
    """A redacted_thinking block's data: the text, then its signature (checkable later)."""
    payload = base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()
    return f"{payload}.{thinking_signature('redacted:' + text)}"


def redacted_valid(data: str) -> bool:
    payload, _, signature = data.partition(".")
    try:
        text = base64.b64decode(payload, validate=True).decode("utf-8", "surrogatepass")
    except ValueError:
        return False
    return hmac.compare_digest(signature, thinking_signature("redacted:" + text))


# Knobs that size what the simulator builds: bounded, so no model name can make it allocate
# without end (a fault must never take the rest of a ``make run`` stack down).
KNOB_MAX = {"tokens": 1_000_000, "dims": 65_536, "reasoning": 1_000_000, "cached": 10_000_000}


@dataclass(slots=True)
class Knobs:
    """Per-request behaviour, from the model-name suffix and the ``x-sim-fault`` header."""

    fault: str | None = None
    times: int | None = None  # only the first N requests of this fault id fail
    for_s: float | None = None  # fail for S seconds after the first request, then recover
    pct: float | None = None  # fail this percentage of requests (seeded)
    seed: int = 0
    id: str | None = None
    retry_after: float | None = None
    retry_after_ms: int | None = None
    retry_after_date: float | None = None
    after: int = 2  # cut / stall / malformed after this many content tokens
    stall_ms: int = 2000
    ttft_ms: int | None = None
    token_ms: int | None = None
    tokens: int | None = None
    ctx: int | None = None
    dims: int | None = None
    cached: int = 0
    reasoning: int = 0
    think: int = 0  # OpenAI surface: answer with reasoning_content first (DeepSeek's field)
    tool_turns: int = 0  # an agent loop: call a tool until the conversation holds N results
    raw: str = ""
    cache_write: int = 0  # set by the prompt cache (Anthropic breakpoints), not a knob

    _INT = ("times", "seed", "retry_after_ms", "after", "stall_ms", "ttft_ms", "token_ms",
            "tokens", "ctx", "dims", "cached", "reasoning", "think", "tool_turns")  # fmt: skip
    _FLOAT = ("for_s", "pct", "retry_after", "retry_after_date")

    def apply(self, spec: str) -> None:
        for item in re.split(r"[~;,\s]+", spec.strip()):
            if not item:
                continue
            name, _, value = item.partition("=")
            name = name.strip().lower()
            value = value.strip()
            if name == "fault" or (not value and name in FAULTS):
                fault = value or name
                if fault not in FAULTS:
                    raise KnobError(f"unknown fault {fault!r}")
                self.fault = fault
            elif name == "id":
                self.id = value
            elif name in self._INT:
                try:
                    number = int(value)
                except ValueError:
                    raise KnobError(f"{name} needs an integer, got {value!r}") from None
                if number > KNOB_MAX.get(name, number):
                    raise KnobError(f"{name} is at most {KNOB_MAX[name]}")
                setattr(self, name, number)
            elif name in self._FLOAT:
                try:
                    setattr(self, name, float(value))
                except ValueError:
                    raise KnobError(f"{name} needs a number, got {value!r}") from None
            else:
                raise KnobError(f"unknown knob {name!r}")
        self.raw = f"{self.raw}~{spec}" if self.raw else spec


def split_model(model: str) -> tuple[str, str]:
    """``gpt-4o~fault=429~times=1`` -> (``gpt-4o``, ``fault=429~times=1``)."""
    base, _, spec = model.partition("~")
    return base, spec


def parse_knobs(model_spec: str, header: str | None) -> Knobs:
    knobs = Knobs()
    if model_spec:
        knobs.apply(model_spec)
    if header:
        knobs.apply(header)
    return knobs


# ---------------------------------------------------------------- the normalized request


@dataclass(slots=True)
class SimTool:
    name: str
    parameters: dict[str, Any] | None


@dataclass(slots=True)
class SimRequest:
    provider: str
    model: str
    knobs: Knobs
    texts: list[str]
    last_user: str = ""
    last_is_tool_result: bool = False
    tool_results: int = 0  # tool results in the conversation (the ``tool_turns`` knob)
    prefill: bool = False  # the conversation ends with an assistant turn (a prefill)
    max_tokens: int | None = None
    tools: list[SimTool] = field(default_factory=list)
    tools_json: str = ""
    tool_choice: str | dict[str, str] | None = None
    json_mode: str | None = None  # "object" | "schema"
    schema: dict[str, Any] | None = None
    stream: bool = False
    include_usage: bool = False
    n: int = 1
    # Anthropic cache_control breakpoints: indexes into texts of the message each closes
    # (-1: after the tools)
    breakpoints: tuple[int, ...] = ()
    blocks: tuple[int, ...] = ()  # content blocks per entry of texts (default one each)
    thinking: bool = False  # extended thinking enabled: the answer starts with reasoning


@dataclass(slots=True)
class SimToolCall:
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Generation:
    id_hash: str
    text: str | None
    tool_calls: list[SimToolCall]
    finish: str  # stop | length | tool_calls | content_filter
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    thinking: str | None = None  # the reasoning (extended thinking), counted in completion
    redacted: bool = False  # the reasoning goes out as a redacted_thinking block

    @property
    def pieces(self) -> list[str]:
        return pieces(self.text or "")


def prompt_tokens(request: SimRequest) -> int:
    total = sum(count_tokens(text) + MESSAGE_OVERHEAD for text in request.texts)
    if request.tools_json:
        total += count_tokens(request.tools_json)
    return total


def _digest(request: SimRequest, salt: str = "") -> bytes:
    h = hashlib.sha256()
    h.update(request.model.encode())
    h.update(b"\x00")
    for text in request.texts:
        h.update(text.encode("utf-8", "replace"))
        h.update(b"\x00")
    h.update(salt.encode())
    return h.digest()


def _words(seed: bytes, count: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(VOCABULARY) for _ in range(count)]


def instance_for(schema: Any, rng: random.Random, depth: int = 0) -> Any:
    """A deterministic value valid against a simple JSON Schema."""
    if not isinstance(schema, dict) or depth > 8:
        return "value"
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return instance_for(schema[key][0], rng, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: instance_for(sub, rng, depth + 1) for name, sub in props.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        return [instance_for(schema.get("items") or {}, rng, depth + 1) for _ in range(count)]
    if kind == "integer":
        low = int(schema.get("minimum", 0))
        high = int(schema.get("maximum", low + 100))
        return rng.randint(low, max(low, high))
    if kind == "number":
        floor = float(schema.get("minimum", 0.0))
        ceiling = float(schema.get("maximum", floor + 100.0))
        return round(rng.uniform(floor, max(floor, ceiling)), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    text = rng.choice(VOCABULARY)
    if "minLength" in schema:
        text = text.ljust(int(schema["minLength"]), "x")
    if "maxLength" in schema:
        text = text[: int(schema["maxLength"])]
    return text


def _wants_tool(request: SimRequest) -> SimTool | None:
    if not request.tools or request.tool_choice == "none":
        return None
    choice = request.tool_choice
    loop = request.knobs.tool_turns
    if loop:  # an agent at work: one tool after another (in turn), until N results came back
        if request.tool_results >= loop:
            return None
        if not isinstance(choice, dict):
            return request.tools[request.tool_results % len(request.tools)]
    elif request.last_is_tool_result:
        return None
    if isinstance(choice, dict):
        return next((t for t in request.tools if t.name == choice.get("name")), request.tools[0])
    if choice == "required" or TOOL_TRIGGER_RE.search(request.last_user):
        return request.tools[0]
    return None


def generate(request: SimRequest, choice_index: int = 0) -> Generation:
    knobs = request.knobs
    seed = _digest(request, str(choice_index) if choice_index else "")
    id_hash = seed.hex()[:24]
    prompt = prompt_tokens(request)
    cached = min(knobs.cached, prompt)
    limit = None if knobs.fault == "overrun" else request.max_tokens  # ignores the limit
    if knobs.fault == "filter" or FILTER_TRIGGER in request.last_user:
        return Generation(id_hash, None, [], "content_filter", prompt, 0, cached)
    thinking = None
    if request.thinking:
        thinking = "Let me think: " + " ".join(_words(seed[::-1], 6 + seed[1] % 7)) + "."
        thought = count_tokens(thinking)  # billed as output: within completion_tokens
        limit = None if limit is None else max(limit - thought, 0)
    else:
        thought = 0

    tool = _wants_tool(request)
    if tool is not None:
        rng = random.Random(seed)
        arguments = orjson.dumps(instance_for(tool.parameters or {}, rng)).decode()
        call = SimToolCall(id="call_" + id_hash, name=tool.name, arguments=arguments)
        completion = count_tokens(arguments) + knobs.reasoning + thought
        return Generation(
            id_hash, None, [call], "tool_calls", prompt, completion, cached,
            knobs.reasoning + thought, thinking, REDACTED_TRIGGER in request.last_user,
        )  # fmt: skip

    if request.json_mode == "schema" and request.schema is not None:
        text = orjson.dumps(instance_for(request.schema, random.Random(seed))).decode()
    elif request.json_mode is not None:
        text = orjson.dumps({"answer": " ".join(_words(seed, 6))}).decode()
    else:
        count = knobs.tokens - 1 if knobs.tokens is not None else 8 + seed[0] % 17
        text = " ".join(_words(seed, max(count, 0))) + "."
        if knobs.tokens == 0:
            text = ""
    parts = pieces(text)
    finish = "stop"
    if limit is not None and len(parts) > limit:
        parts = parts[:limit]
        text = "".join(parts)
        finish = "length"
    return Generation(
        id_hash,
        text,
        [],
        finish,
        prompt,
        len(parts) + knobs.reasoning + thought,
        cached,
        knobs.reasoning + thought,
        thinking,
        REDACTED_TRIGGER in request.last_user,
    )


def embedding_vector(text: str, dims: int) -> list[float]:
    """A deterministic unit vector for ``text`` (same text, same vector)."""
    rng = random.Random(hashlib.sha256(text.encode("utf-8", "replace")).digest())
    values = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def pack_base64(vector: list[float]) -> str:
    import base64

    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


# ---------------------------------------------------------------- prompt caches

# Automatic prefix caching, as OpenAI (and Azure OpenAI, and Gemini's implicit caching) do it:
# a prompt whose first messages repeat a prompt seen in the last PREFIX_CACHE_TTL_S reports
# those messages' tokens as cached, from PREFIX_CACHE_MIN_TOKENS up, in steps of
# PREFIX_CACHE_STEP. Anthropic and Bedrock cache only what ``cache_control`` / ``cachePoint``
# marks: Anthropic's breakpoints are modelled (PrefixCache.marked_tokens), Bedrock's are not.
PREFIX_CACHE_PROVIDERS = frozenset({"openai", "azure", "gemini"})
PREFIX_CACHE_MIN_TOKENS = 1024
PREFIX_CACHE_STEP = 128
PREFIX_CACHE_TTL_S = 300.0
PREFIX_CACHE_ENTRIES = 200_000
# Anthropic checks for a cache hit at the block boundaries up to about 20 blocks before a
# breakpoint (docs.claude.com, prompt caching: "automatic prefix checking").
CACHE_LOOKBACK_BLOCKS = 20


class PrefixCache:
    """Message-boundary prefixes seen per provider and model, each alive for the TTL after its
    last use. Thread-safe, bounded."""

    def __init__(self, ttl_s: float = PREFIX_CACHE_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._seen: dict[bytes, float] = {}

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()

    def cached_tokens(self, provider: str, request: SimRequest) -> int:
        """The tokens of the longest cached prefix of this prompt (0 below the minimum), and
        every prefix of this prompt cached from now on."""
        h = hashlib.sha256(f"{provider}\x00{request.model}\x00{request.tools_json}".encode())
        prefixes: list[tuple[bytes, int]] = []
        tokens = count_tokens(request.tools_json) if request.tools_json else 0
        for text in request.texts:
            h.update(text.encode("utf-8", "replace"))
            h.update(b"\x00")
            tokens += count_tokens(text) + MESSAGE_OVERHEAD
            prefixes.append((h.digest(), tokens))
        now = time.monotonic()
        hit = 0
        with self._lock:
            for digest, length in prefixes:
                if self._seen.get(digest, 0.0) > now:
                    hit = length
            for digest, _ in prefixes:
                self._seen[digest] = now + self.ttl_s
            if len(self._seen) > PREFIX_CACHE_ENTRIES:
                for digest in [d for d, until in self._seen.items() if until <= now]:
                    del self._seen[digest]
                while len(self._seen) > PREFIX_CACHE_ENTRIES:
                    del self._seen[next(iter(self._seen))]
        if hit < PREFIX_CACHE_MIN_TOKENS:
            return 0
        return hit // PREFIX_CACHE_STEP * PREFIX_CACHE_STEP

    def marked_tokens(self, provider: str, request: SimRequest) -> tuple[int, int]:
        """Anthropic's rule: (cache read, cache write) tokens. The longest breakpoint prefix
        seen within the TTL is read (at a breakpoint, or at a message boundary within
        CACHE_LOOKBACK_BLOCKS blocks before one); the prefix up to the last breakpoint is
        written when it was not (below the minimum cacheable length nothing is cached); every
        breakpoint prefix is kept for the TTL from now."""
        h = hashlib.sha256(f"{provider}\x00{request.model}\x00{request.tools_json}".encode())
        tokens = count_tokens(request.tools_json) if request.tools_json else 0
        points = {-1: (h.digest(), tokens)}
        for index, text in enumerate(request.texts):
            h.update(text.encode("utf-8", "replace"))
            h.update(b"\x00")
            tokens += count_tokens(text) + MESSAGE_OVERHEAD
            points[index] = (h.digest(), tokens)
        marks = [points[b] for b in sorted(set(request.breakpoints)) if b in points]
        if not marks or marks[-1][1] < PREFIX_CACHE_MIN_TOKENS:
            return 0, 0
        # where a read may hit: each breakpoint, and the message boundaries up to
        # CACHE_LOOKBACK_BLOCKS content blocks before it (a breakpoint moved to the newest
        # turn still reads the prefix the previous turn's breakpoint wrote)
        blocks = request.blocks or (1,) * len(request.texts)
        probes: list[tuple[bytes, int]] = []
        for b in sorted(set(request.breakpoints)):
            back, j = 0, b
            while j in points and back <= CACHE_LOOKBACK_BLOCKS:
                probes.append(points[j])
                if j < 0:
                    break
                back += blocks[j] if j < len(blocks) else 1
                j -= 1
        now = time.monotonic()
        with self._lock:
            read = max((n for d, n in probes if self._seen.get(d, 0.0) > now), default=0)
            for digest, _ in marks:
                self._seen[digest] = now + self.ttl_s
        return read, marks[-1][1] - read


# ---------------------------------------------------------------- fault state


class FaultState:
    """Counters behind ``times``, ``for_s`` and ``pct``, keyed by fault id. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._first_seen: dict[str, float] = {}
        self._rngs: dict[str, random.Random] = {}

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._first_seen.clear()
            self._rngs.clear()

    def active(self, knobs: Knobs, key: str) -> bool:
        """Whether this request gets the fault."""
        if knobs.fault is None:
            return False
        key = knobs.id or key
        now = time.monotonic()
        with self._lock:
            count = self._counts.get(key, 0) + 1
            self._counts[key] = count
            first = self._first_seen.setdefault(key, now)
            if knobs.times is not None and count > knobs.times:
                return False
            if knobs.for_s is not None and now - first >= knobs.for_s:
                return False
            if knobs.pct is not None:
                rng = self._rngs.get(key)
                if rng is None:
                    rng = self._rngs[key] = random.Random(knobs.seed)
                return rng.random() * 100.0 < knobs.pct
        return True

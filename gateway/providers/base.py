"""The adapter base class, the registry, and what every wire protocol shares: sending a request
through the shared client under explicit timeouts, mapping HTTP failures to :class:`ErrorKind`,
parsing Retry-After, decoding SSE.

An adapter implements four hooks (``build``, ``parse``, ``decoder``, ``parse_error``) and
inherits ``complete`` / ``stream`` / ``embed``. Only :class:`ProviderError` leaves an adapter.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import httpx
import orjson

from gateway.http import Timeouts, get_client
from gateway.providers.types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Endpoint,
    ErrorKind,
    ProviderError,
)

MAX_MESSAGE = 300  # characters of a provider's error message kept in ProviderError

# How providers say "the prompt does not fit": OpenAI / Azure / DeepSeek / Groq ("maximum
# context length", code context_length_exceeded), Anthropic ("prompt is too long", "exceed
# context limit"), Gemini ("input token count ... exceeds the maximum number of tokens"),
# Bedrock ("Input is too long", "too many input tokens"), Mistral ("too large for model with
# N maximum context length"), others ("context window", "reduce the length").
_CONTEXT_RE = re.compile(
    r"context[ _]length|maximum context|context[ _]window|context limit|prompt is too long"
    r"|input is too long|too many (input )?tokens|exceeds the maximum number of tokens"
    r"|reduce the length|string too long|maximum (input )?token",
    re.IGNORECASE,
)
# A 400 about the model, not the request: Anthropic's newer models refuse an assistant prefill
# ("This model does not support assistant message prefill. The conversation must end with a
# user message."); another model takes the same request.
_UNSUPPORTED_RE = re.compile(r"does not support assistant message prefill", re.IGNORECASE)
_FILTER_CODES = {"content_filter", "content_policy_violation", "responsibleaipolicyviolation"}


def parse_retry_after(
    headers: httpx.Headers | dict[str, str], now: float | None = None
) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` (milliseconds), ``retry-after`` (seconds or an
    HTTP date) or ``x-ratelimit-reset-requests``-style absent: None."""
    get = headers.get
    value = get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def kind_for_status(status: int, *, message: str = "", code: str | None = None) -> ErrorKind:
    """The error kind of an HTTP error status, refined by the provider's message and code."""
    lowered_code = (code or "").lower()
    if lowered_code in _FILTER_CODES:
        return ErrorKind.CONTENT_FILTER
    if "overloaded" in lowered_code or status == 529:
        return ErrorKind.OVERLOADED
    if status in (401, 403):
        return ErrorKind.AUTHENTICATION
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status == 503:
        return ErrorKind.OVERLOADED
    if status in (408, 504):
        return ErrorKind.TIMEOUT
    if status >= 500:
        return ErrorKind.SERVER_ERROR
    if lowered_code in ("context_length_exceeded", "string_above_max_length") or (
        _CONTEXT_RE.search(message)
    ):
        return ErrorKind.CONTEXT_LENGTH
    if _UNSUPPORTED_RE.search(message):
        return ErrorKind.UNSUPPORTED
    return ErrorKind.BAD_REQUEST


def error_from_status(
    status: int,
    headers: httpx.Headers | dict[str, str],
    message: str,
    code: str | None = None,
    *,
    kind: ErrorKind | None = None,
) -> ProviderError:
    """A ProviderError for an HTTP error; ``status`` 0 means an error event inside a stream."""
    kind = kind or kind_for_status(status or 500, message=message, code=code)
    retry_after = (
        parse_retry_after(headers)
        if kind
        in (
            ErrorKind.RATE_LIMITED,
            ErrorKind.OVERLOADED,
            ErrorKind.SERVER_ERROR,
        )
        else None
    )
    # Bounded: a provider message may quote part of the request (zero data retention).
    return ProviderError(
        kind,
        (message or f"HTTP {status}")[:MAX_MESSAGE],
        status=status or None,
        retry_after=retry_after,
        provider_code=code,
    )


def loads(data: bytes | str, what: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ProviderError(ErrorKind.PROTOCOL, f"malformed JSON in {what}") from None


def transport_error(exc: Exception, *, streaming: bool = False) -> ProviderError:
    """Map an httpx exception (or a timeout) to a ProviderError."""
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.startswith("aiohttp"):
        # httpx-aiohttp maps every aiohttp connection error (a server reset included) to
        # httpx.ConnectTimeout; classify by the original exception instead.
        if isinstance(cause, TimeoutError):
            what = "stream stalled" if streaming else "timed out"
            return ProviderError(ErrorKind.TIMEOUT, f"upstream {what}")
        what = "stream broken" if streaming else "connection failed"
        return ProviderError(ErrorKind.CONNECTION, f"{what}: {type(cause).__name__}: {cause}")
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        what = "stream stalled" if streaming else "timed out"
        return ProviderError(ErrorKind.TIMEOUT, f"upstream {what}")
    if isinstance(exc, httpx.ConnectError):
        return ProviderError(ErrorKind.CONNECTION, f"connect failed: {exc}")
    if isinstance(exc, httpx.RemoteProtocolError):
        if streaming:
            return ProviderError(ErrorKind.CONNECTION, f"stream broken: {exc}")
        return ProviderError(ErrorKind.CONNECTION, f"connection closed: {exc}")
    if isinstance(exc, httpx.DecodingError):
        return ProviderError(ErrorKind.PROTOCOL, f"undecodable response: {exc}")
    if isinstance(exc, httpx.TransportError):
        return ProviderError(ErrorKind.CONNECTION, f"transport error: {exc}")
    return ProviderError(ErrorKind.PROTOCOL, f"{type(exc).__name__}: {exc}")


class SSEDecoder:
    """Incremental Server-Sent Events parser: feed bytes, get ``(event, data)`` pairs.

    Handles LF and CRLF line ends, multi-line ``data:``, comments (``: keep-alive``) and events
    split across network reads."""

    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._event: str | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        buf = self._buf + chunk
        out: list[tuple[str | None, bytes]] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data or self._event is not None:
                    out.append((self._event, b"\n".join(self._data)))
                self._event = None
                self._data = []
                continue
            if line[0] == 58:  # ":" comment
                continue
            field, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if field == b"data":
                self._data.append(value)
            elif field == b"event":
                self._event = value.decode("utf-8", "replace")
        self._buf = buf[start:]
        return out

    def pending(self) -> bool:
        return bool(self._buf.strip() or self._data)


class StreamDecoder:
    """Protocol-specific: turns raw bytes into ChatChunks. ``done`` once the terminator came.

    Subclasses implement ``decode(data, out)``, appending chunks to ``out``. When an event is
    bad after good ones in the same read, ``feed`` returns the good chunks and keeps the error
    in ``pending_error`` for the caller to raise after relaying them."""

    done: bool = False
    pending_error: ProviderError | None = None

    def decode(self, data: bytes, out: list[ChatChunk]) -> None:
        raise NotImplementedError

    def feed(self, data: bytes) -> list[ChatChunk]:
        out: list[ChatChunk] = []
        try:
            self.decode(data, out)
        except ProviderError as exc:
            if not out:
                raise
            self.pending_error = exc
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            error = ProviderError(ErrorKind.PROTOCOL, f"unexpected stream event: {exc!r}")
            if not out:
                raise error from None
            self.pending_error = error
        return out

    def finish(self) -> list[ChatChunk]:
        """At EOF: the last chunks, or ProviderError(PROTOCOL) if the terminator is missing."""
        raise NotImplementedError


class Adapter:
    """One wire protocol. Subclasses set ``kind`` and implement the hooks below."""

    kind: ClassVar[str] = ""
    supports_embeddings: ClassVar[bool] = False
    supports_count_tokens: ClassVar[bool] = False  # the provider counts a prompt's tokens

    # ------------------------------------------------------------ hooks

    def build(
        self, endpoint: Endpoint, request: ChatRequest, *, stream: bool
    ) -> tuple[str, dict[str, str], bytes]:
        """URL, headers and body of a chat call."""
        raise NotImplementedError

    def parse(self, endpoint: Endpoint, request: ChatRequest, data: Any) -> ChatResponse:
        raise NotImplementedError

    def decoder(self, endpoint: Endpoint, request: ChatRequest) -> StreamDecoder:
        raise NotImplementedError

    def parse_error(self, status: int, headers: httpx.Headers, body: bytes) -> ProviderError:
        raise NotImplementedError

    def build_embedding(
        self, endpoint: Endpoint, request: EmbeddingRequest
    ) -> tuple[str, dict[str, str], bytes]:
        raise ProviderError(ErrorKind.BAD_REQUEST, f"{self.kind} adapter has no embeddings")

    def parse_embedding(
        self, endpoint: Endpoint, request: EmbeddingRequest, data: Any
    ) -> EmbeddingResponse:
        raise ProviderError(ErrorKind.BAD_REQUEST, f"{self.kind} adapter has no embeddings")

    def build_count_tokens(
        self, endpoint: Endpoint, request: ChatRequest
    ) -> tuple[str, dict[str, str], bytes]:
        raise ProviderError(ErrorKind.BAD_REQUEST, f"{self.kind} adapter counts no tokens")

    def sign(
        self, endpoint: Endpoint, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> dict[str, str]:
        """Last step before sending (Bedrock signs here); the default adds extra headers."""
        if endpoint.headers:
            headers.update(endpoint.headers)
        return headers

    # ------------------------------------------------------------ transport

    async def _open(
        self,
        endpoint: Endpoint,
        url: str,
        headers: dict[str, str],
        body: bytes,
        timeouts: Timeouts,
        deadline: float,
        *,
        stream: bool = True,
    ) -> httpx.Response:
        """Send the request and return the (streaming) response once its headers arrived and its
        status is a success; otherwise raise the mapped ProviderError."""
        client = get_client()
        headers = self.sign(endpoint, "POST", url, headers, body)
        request = client.build_request(
            "POST",
            url,
            headers=headers,
            content=body,
            timeout=timeouts.httpx_timeout(stream=stream),
        )
        try:
            async with asyncio.timeout_at(deadline):
                response = await client.send(request, stream=True)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise transport_error(exc) from None
        if response.status_code >= 400:
            try:
                async with asyncio.timeout_at(deadline):
                    raw = await response.aread()
            except (httpx.HTTPError, TimeoutError):
                raw = b""
            finally:
                await response.aclose()
            raise self.parse_error(response.status_code, response.headers, raw)
        return response

    async def _call_json(
        self,
        endpoint: Endpoint,
        url: str,
        headers: dict[str, str],
        body: bytes,
        timeouts: Timeouts | None,
    ) -> Any:
        timeouts = timeouts or Timeouts.default()
        loop = asyncio.get_running_loop()
        start = loop.time()
        # The headers of a non-streaming answer come when the whole answer is ready.
        response = await self._open(
            endpoint, url, headers, body, timeouts, start + timeouts.total, stream=False
        )
        try:
            async with asyncio.timeout_at(start + timeouts.total):
                raw = await response.aread()
        except (httpx.HTTPError, TimeoutError) as exc:
            raise transport_error(exc) from None
        finally:
            await response.aclose()
        return loads(raw, f"{self.kind} response")

    # ------------------------------------------------------------ the interface

    async def complete(
        self, endpoint: Endpoint, request: ChatRequest, *, timeouts: Timeouts | None = None
    ) -> ChatResponse:
        url, headers, body = self.build(endpoint, request, stream=False)
        data = await self._call_json(endpoint, url, headers, body, timeouts)
        try:
            return self.parse(endpoint, request, data)
        except ProviderError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ProviderError(
                ErrorKind.PROTOCOL, f"unexpected {self.kind} response shape: {exc!r}"
            ) from None

    async def stream(
        self, endpoint: Endpoint, request: ChatRequest, *, timeouts: Timeouts | None = None
    ) -> AsyncIterator[ChatChunk]:
        """Chunks as they arrive. HTTP errors raise before the first chunk; a break, stall,
        malformed event or missing terminator raises mid-stream. Closing the generator early
        closes the upstream response."""
        timeouts = timeouts or Timeouts.default()
        url, headers, body = self.build(endpoint, request, stream=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeouts.first_byte
        response = await self._open(endpoint, url, headers, body, timeouts, deadline)
        decoder = self.decoder(endpoint, request)
        try:
            reader = response.aiter_bytes()
            first = True
            while not decoder.done:
                try:
                    if first:
                        async with asyncio.timeout_at(deadline):
                            data = await anext(reader)
                        first = False
                    else:
                        async with asyncio.timeout(timeouts.stall):
                            data = await anext(reader)
                except StopAsyncIteration:
                    break
                except (httpx.HTTPError, TimeoutError) as exc:
                    error = transport_error(exc, streaming=True)
                    if first and error.kind is ErrorKind.TIMEOUT:
                        error = ProviderError(ErrorKind.TIMEOUT, "no first chunk in time")
                    raise error from None
                try:
                    chunks = decoder.feed(data)
                except ProviderError:
                    raise
                except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                    raise ProviderError(
                        ErrorKind.PROTOCOL, f"unexpected {self.kind} stream event: {exc!r}"
                    ) from None
                last = len(chunks) - 1
                for i, chunk in enumerate(chunks):
                    chunk.more = i < last
                    yield chunk
                if decoder.pending_error is not None:
                    raise decoder.pending_error
            for chunk in decoder.finish():
                yield chunk
        finally:
            await response.aclose()

    async def count_tokens(
        self, endpoint: Endpoint, request: ChatRequest, *, timeouts: Timeouts | None = None
    ) -> int:
        """The provider's own count of the request's input tokens."""
        url, headers, body = self.build_count_tokens(endpoint, request)
        data = await self._call_json(endpoint, url, headers, body, timeouts)
        try:
            count = data["input_tokens"]
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ValueError(count)
            return count
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError(
                ErrorKind.PROTOCOL, f"unexpected {self.kind} token count: {exc!r}"
            ) from None

    async def embed(
        self, endpoint: Endpoint, request: EmbeddingRequest, *, timeouts: Timeouts | None = None
    ) -> EmbeddingResponse:
        url, headers, body = self.build_embedding(endpoint, request)
        data = await self._call_json(endpoint, url, headers, body, timeouts)
        try:
            return self.parse_embedding(endpoint, request, data)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ProviderError(
                ErrorKind.PROTOCOL, f"unexpected {self.kind} embedding shape: {exc!r}"
            ) from None


def join_url(base: str, path: str) -> str:
    return base.rstrip("/") + path


Dumper = Callable[[Any], bytes]
dumps: Dumper = orjson.dumps

"""A TCP proxy on 127.0.0.1 that the chaos suite can pause, to make a server (PostgreSQL)
unreachable without touching it. Runs its own asyncio loop in a daemon thread.

- ``pause(mode="blackhole")``: bytes stop flowing both ways and new connections are accepted
  but not forwarded, like a network partition (TCP connections survive, calls hang); on
  ``resume()`` everything held flows on.
- ``pause(mode="refuse")``: every open connection is closed and new ones are refused, like a
  server that went down; ``resume()`` listens again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import Any


class TcpProxy:
    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.host = host
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._flowing: asyncio.Event | None = None

    # ---- control (from any thread)

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def pause(self, mode: str = "blackhole") -> None:
        if mode not in ("blackhole", "refuse"):
            raise ValueError(f"unknown mode {mode!r}")
        self._call(self._pause(mode))

    def resume(self) -> None:
        self._call(self._resume())

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # ---- in the proxy's loop

    async def _listen(self) -> None:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._handle, sock=sock)

    async def _pause(self, mode: str) -> None:
        assert self._flowing is not None
        self._flowing.clear()
        if mode == "refuse":
            await self._close_all(close_server=True)
            self._flowing.set()

    async def _resume(self) -> None:
        assert self._flowing is not None
        if self._server is None:
            await self._listen()
        self._flowing.set()

    async def _shutdown(self) -> None:
        await self._close_all(close_server=True)
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _close_all(self, *, close_server: bool) -> None:
        if close_server and self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        self.connections += 1
        self._open.add(writer)
        try:
            await self._flowing.wait()
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            self._open.discard(writer)
            return
        self._open.add(up_writer)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        except asyncio.CancelledError:
            pass  # the loop shutting down with the connection open: nothing left to report
        finally:
            for w in (writer, up_writer):
                self._open.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()

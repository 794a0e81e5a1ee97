"""The chaos suite's TCP proxy (bench/tcp_proxy.py) against a local echo server, and the
profile's collapsed-stack reader (bench/profile.py)."""

from __future__ import annotations

import socket
import threading

import pytest

from bench.profile import OTHER, categorize, parse_collapsed
from bench.tcp_proxy import TcpProxy


@pytest.fixture
def echo_port():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    server.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(1024):
            conn.sendall(data)


def _client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    sock.settimeout(2)
    return sock


def test_blackhole_holds_bytes_until_resumed(echo_port: int) -> None:
    proxy = TcpProxy(("127.0.0.1", echo_port)).start()
    try:
        with _client(proxy.port) as sock:
            sock.sendall(b"one")
            assert sock.recv(10) == b"one"
            proxy.pause(mode="blackhole")
            sock.sendall(b"two")
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(10)
            proxy.resume()
            sock.settimeout(2)
            assert sock.recv(10) == b"two"
    finally:
        proxy.stop()


def test_refuse_drops_connections_and_listens_again(echo_port: int) -> None:
    proxy = TcpProxy(("127.0.0.1", echo_port)).start()
    try:
        sock = _client(proxy.port)
        sock.sendall(b"a")
        assert sock.recv(10) == b"a"
        proxy.pause(mode="refuse")
        assert sock.recv(10) == b""  # closed under the client
        sock.close()
        with pytest.raises(ConnectionRefusedError):
            _client(proxy.port)
        proxy.resume()
        with _client(proxy.port) as again:
            again.sendall(b"b")
            assert again.recv(10) == b"b"
    finally:
        proxy.stop()


def test_pause_refuses_unknown_mode(echo_port: int) -> None:
    proxy = TcpProxy(("127.0.0.1", echo_port)).start()
    try:
        with pytest.raises(ValueError):
            proxy.pause(mode="flood")
    finally:
        proxy.stop()


def test_parse_collapsed_counts_own_and_total_samples() -> None:
    text = (
        "main (app.py:1);handle (app.py:9);write (io.py:3) 6\n"
        "main (app.py:1);handle (app.py:9) 3\n"
        "main (app.py:1);loop (app.py:2);loop (app.py:2) 1\n"
        "garbage line\n"
    )
    own, total, samples = parse_collapsed(text)
    assert samples == 10
    assert own == {"write (io.py:3)": 6, "handle (app.py:9)": 3, "loop (app.py:2)": 1}
    assert total["main (app.py:1)"] == 10
    assert total["handle (app.py:9)"] == 9
    assert total["loop (app.py:2)"] == 1  # a recursive frame counts once per sample


def test_categorize_names_the_innermost_cost_a_rule_names() -> None:
    loop = "Runner.run (asyncio/runners.py:118)"
    reserve = "admission_reserve (billing/admission/service.py:88)"
    redis = "AbstractConnection.send_packed_command (redis/connection.py:1349)"
    text = (
        # a Redis call made by the reserve step counts as the reserve, not as Redis
        f"{loop};GatewayASGI.handle (gateway/api/asgi.py:132);{reserve};{redis} 5\n"
        # httpx under the adapter is the transport (a named cost), not the adapter
        f"{loop};Adapter.complete (gateway/providers/base.py:369);"
        "AsyncClient.send (httpx/_client.py:1600) 3\n"
        # no specific frame: the server fallback; nothing at all: the event loop
        f"{loop};RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py:524) 2\n"
        f"{loop} 1\n"
        "Thread.run (threading.py:982);UsageWriter._run (billing/admission/writer.py:336) 4\n"
    )
    shares, samples = categorize(text)
    assert samples == 15
    assert shares == {
        "admission: reserve": 5,
        "HTTP client transport (httpx, httpx-aiohttp, aiohttp)": 3,
        "HTTP server (uvicorn, httptools, the ASGI front door)": 2,
        OTHER: 1,
        "usage write-behind (writer thread)": 4,
    }

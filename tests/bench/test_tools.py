"""The chaos suite's TCP proxy (bench/tcp_proxy.py) against a local echo server, and the
profile's collapsed-stack reader (bench/profile.py)."""

from __future__ import annotations

import socket
import threading

import pytest

from bench.profile import parse_collapsed
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

"""The benchmark harness's own parsing and statistics (bench/harness.py): no server needed."""

from __future__ import annotations

import asyncio

import pytest

from bench import harness as h

WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:8000/v1/chat/completions
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    96.13ms   80.10ms   1.20s    85.00%
    Req/Sec   620.00     50.00   700.00     70.00%
  Latency Distribution
     50%   96.13ms
     75%  150.00ms
     90%  812.00us
     99%    1.20s
  1843 requests in 3.00s, 1.10MB read
  Socket errors: connect 0, read 2, write 1, timeout 4
  Non-2xx or 3xx responses: 7
Requests/sec:    614.33
Transfer/sec:    376.22KB
"""


def test_percentile_interpolates_between_ranks() -> None:
    assert h.percentile([1, 2, 3, 4], 50) == 2.5
    assert h.percentile([10, 20], 99) == pytest.approx(19.9)
    assert h.percentile([5], 99) == 5
    assert h.percentile([3, 1, 2], 0) == 1
    assert h.percentile([3, 1, 2], 100) == 3


def test_percentile_refuses_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        h.percentile([], 50)
    with pytest.raises(ValueError):
        h.percentile([1.0], 101)


def test_summarize_and_added() -> None:
    values = [float(v) for v in range(1, 101)]
    summary = h.summarize(values)
    assert summary["n"] == 100
    assert summary["mean"] == 50.5
    assert summary["p50"] == 50.5
    assert summary["p90"] == pytest.approx(90.1)
    assert summary["p99"] == pytest.approx(99.01)
    assert summary["max"] == 100.0
    assert h.summarize([]) == {"n": 0}
    assert h.added({"p50": 3.0, "p90": 4.0, "p99": 9.5}, {"p50": 1.0, "p90": 1.5, "p99": 2.0}) == {
        "p50": 2.0,
        "p90": 2.5,
        "p99": 7.5,
    }


def test_duration_units() -> None:
    assert h.duration_ms("812.00us") == pytest.approx(0.812)
    assert h.duration_ms("1.50ms") == 1.5
    assert h.duration_ms("2.01s") == pytest.approx(2010.0)
    assert h.duration_ms("1.00m") == 60000.0
    with pytest.raises(ValueError):
        h.duration_ms("12 parsecs")


def test_parse_wrk_reads_every_figure() -> None:
    result = h.parse_wrk(WRK_OUTPUT)
    assert result == {
        "rps": 614.33,
        "requests": 1843,
        "p50": 96.13,
        "p75": 150.0,
        "p90": pytest.approx(0.812),
        "p99": 1200.0,
        "non2xx": 7,
        "socket_errors": 7,
        "timeouts": 4,
    }


def test_parse_wrk_clean_run_has_zero_errors() -> None:
    clean = WRK_OUTPUT.replace("  Socket errors: connect 0, read 2, write 1, timeout 4\n", "")
    clean = clean.replace("  Non-2xx or 3xx responses: 7\n", "")
    result = h.parse_wrk(clean)
    assert (result["non2xx"], result["socket_errors"], result["timeouts"]) == (0, 0, 0)


def test_parse_wrk_refuses_other_text() -> None:
    with pytest.raises(ValueError):
        h.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


def test_sustained_picks_the_best_step_within_limits() -> None:
    steps = [
        {
            "connections": 16,
            "requests": 900,
            "rps": 300.0,
            "p99": 60.0,
            "non2xx": 0,
            "socket_errors": 0,
        },
        {
            "connections": 64,
            "requests": 1800,
            "rps": 600.0,
            "p99": 400.0,
            "non2xx": 0,
            "socket_errors": 0,
        },
        {
            "connections": 128,
            "requests": 2000,
            "rps": 650.0,
            "p99": 900.0,
            "non2xx": 3,
            "socket_errors": 0,
        },
        {
            "connections": 256,
            "requests": 2100,
            "rps": 700.0,
            "p99": 1180.0,
            "non2xx": 0,
            "socket_errors": 0,
        },
        {
            "connections": 512,
            "requests": 0,
            "rps": 0.0,
            "p99": 0.0,
            "non2xx": 0,
            "socket_errors": 0,
        },
    ]
    assert h.sustained(steps)["connections"] == 64
    assert h.sustained(steps, p99_limit_ms=50.0) == {}
    assert h.sustained([]) == {}


def test_stalls_counts_gaps_beyond_pace_plus_threshold() -> None:
    arrivals = [0.0, 0.020, 0.040, 0.200, 0.220, 0.400]  # gaps: 20, 20, 160, 20, 180 ms
    assert h.stalls(arrivals, pace_ms=20, threshold_ms=100) == pytest.approx([160.0, 180.0])
    assert h.stalls(arrivals, pace_ms=20, threshold_ms=150) == pytest.approx([180.0])
    assert h.stalls([0.0], pace_ms=20) == []


def test_status_rss() -> None:
    status = "Name:\tpython\nVmPeak:\t  300000 kB\nVmRSS:\t  102400 kB\nThreads:\t3\n"
    assert h.parse_status_rss_kib(status) == 102400
    assert h.parse_status_rss_kib("Name:\tzombie\nState:\tZ (zombie)\n") == 0


def test_content_of_openai_events() -> None:
    assert h.content_of(b'data: {"choices":[{"delta":{"content":"Hi"}}]}') == "Hi"
    assert h.content_of(b'data: {"choices":[{"delta":{"role":"assistant"}}]}') == ""
    assert h.content_of(b'data: {"choices":[],"usage":{"total_tokens":3}}') == ""
    assert h.content_of(b"data: [DONE]") == ""
    assert h.content_of(b"data: {broken") == ""
    assert h.content_of(b"event: ping") == ""


def test_chat_body_is_a_small_openai_request() -> None:
    assert h.chat_body("m", stream=True, max_tokens=64) == (
        b'{"model":"m","max_tokens":64,"messages":[{"role":"user","content":'
        b'"Say hello in five words"}],"stream":true}'
    )


def test_machine_info_names_the_machine() -> None:
    info = h.machine_info()
    assert info["nproc"] >= 1
    assert len(info["loadavg"]) == 3
    assert info["memory_gib"] > 0


async def test_connection_reads_chunked_sse_and_content_length() -> None:
    """The raw client against a tiny local server: keep-alive, chunked SSE split anywhere."""
    events = [b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'] * 3 + [b"data: [DONE]\n\n"]
    stream = b"".join(events)
    pieces = [stream[:10], stream[10:70], stream[70:]]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            if b"stream" in head:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for piece in pieces:
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = h.Connection(port)
    try:
        plain = await conn.post("/x", b"{}")
        streamed = await conn.post("/x", b"{}", stream=True, headers={"X-Mode": "stream"})
    finally:
        await conn.close()
        server.close()
    assert (plain.status, plain.body, plain.headers["x-a"]) == (201, b"ok", "b")
    assert streamed.status == 200
    assert streamed.body == stream
    assert len(streamed.content_times) == 3
    assert streamed.first_content_ms is not None

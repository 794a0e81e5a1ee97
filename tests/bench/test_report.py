"""bench/report.py: headline figures, verdicts and the docs block, from a stored result."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report

RESULT = {
    "run_id": "r1",
    "mode": "quick",
    "workers": 2,
    "machine": {"nproc": 2, "cpu": "CPU", "memory_gib": 23.5, "loadavg": [1.0, 1.0, 1.0]},
    "load_after": [2.0, 1.5, 1.0],
    "latency": {
        "direct": {"p50": 0.25, "p90": 0.4, "p99": 1.0},
        "megarouter": {"p50": 2.0, "p90": 3.0, "p99": 7.5},
        "litellm": {"p50": 16.25, "p90": 20.0, "p99": 41.0},
    },
    "ttft": {
        "direct": {"p50": 0.5, "p90": 0.6, "p99": 1.0},
        "megarouter": {"p50": 2.5, "p90": 3.0, "p99": 5.0},
        "litellm": {"p50": 15.5, "p90": 20.0, "p99": 100.0},
    },
    "throughput": {
        "direct": {"steps": [], "sustained": {"rps": 7000.0, "connections": 256}},
        "megarouter": {"steps": [], "sustained": {"rps": 800.0, "connections": 64}},
        "litellm": {"steps": [], "sustained": {"rps": 200.0, "connections": 4}},
    },
    "streams": {
        "direct": [{"streams": 100, "complete": 100, "stalls": 0, "errors": {}, "max_gap_ms": 30}],
        "megarouter": [
            {"streams": 100, "complete": 100, "stalls": 0, "errors": {}, "max_gap_ms": 40},
            {"streams": 500, "complete": 500, "stalls": 3, "errors": {}, "max_gap_ms": 300},
        ],
        "litellm": [{"streams": 100, "complete": 99, "stalls": 0, "errors": {}, "max_gap_ms": 50}],
    },
    "rss_idle_mib": {"megarouter": [100.0, 101.0], "litellm": [330.0, 331.0]},
    "rss_load_peak_mib": {"megarouter": 112.0, "litellm": 418.0},
    "routing_decision": {"skipped": "needs the routing engine"},
    "notes": ["budgets: not wired"],
}


def test_figures_are_differences_and_ratios() -> None:
    fig = report.figures(RESULT)
    assert fig["megarouter"]["added_p50_ms"] == 1.75
    assert fig["megarouter"]["added_p99_ms"] == 6.5
    assert fig["megarouter"]["added_ttft_p99_ms"] == 4.0
    assert fig["litellm"]["added_p50_ms"] == 16.0
    assert fig["megarouter"]["sustained_rps"] == 800.0
    assert fig["rps_ratio_vs_litellm"] == 4.0
    assert fig["megarouter"]["clean_streams"] == 100
    assert fig["litellm"]["clean_streams"] == 0  # one stream did not complete


def test_verdicts() -> None:
    assert report.verdict(1.75, 2.0) == "met"
    assert report.verdict(6.5, 5.0) == "MISSED"
    assert report.verdict(4.0, 3.0, higher_is_better=True) == "met"
    assert report.verdict(None, 3.0) == "not measured"


def test_table_names_targets_and_verdicts() -> None:
    table = report.render_table(RESULT)
    assert "| added latency p50 (ms) | | 1.75 | 16.00 | <= 2 | met |" in table
    assert "| added latency p99 (ms) | | 6.50 | 40.00 | <= 5 | MISSED |" in table
    assert "| added TTFT p99 (ms) | | 4.00 | 99.00 | <= 5 | met |" in table
    assert "| 800 (c=64) | 200 (c=4) | >= 8x LiteLLM and >= 1,200 | 4.0x litellm: MISSED; " in table
    assert "1,200: MISSED |" in table
    assert "| 100 | 100 | 0 | >= 500 | MISSED |" in table
    assert "100, 101 idle; 112 peak" in table
    assert "Note: budgets: not wired" in table
    assert "load average [1.0, 1.0, 1.0] at start, [2.0, 1.5, 1.0] at the end" in table


@pytest.mark.parametrize("existing", [None, "# Performance\n\nIntro.\n"])
def test_update_docs_appends_then_replaces_the_block(tmp_path: Path, existing: str | None) -> None:
    path = tmp_path / "performance.md"
    if existing is not None:
        path.write_text(existing)
    report.update_docs(path, "first table\n")
    report.update_docs(path, "second table\n")
    text = path.read_text()
    assert text.count(report.START) == 1
    assert text.count(report.END) == 1
    assert "first table" not in text
    assert f"{report.START}\nsecond table\n{report.END}" in text
    if existing:
        assert text.startswith(existing.rstrip("\n"))


def test_both_litellm_versions_get_a_column_and_a_ratio() -> None:
    result = {**RESULT, "litellm_versions": {"litellm": "1.108.7", "litellm-latest": "1.110.2"}}
    for figure, row in (
        ("latency", {"p50": 20.25, "p90": 25.0, "p99": 51.0}),
        ("ttft", {"p50": 18.5, "p90": 20.0, "p99": 60.0}),
        ("throughput", {"steps": [], "sustained": {"rps": 100.0, "connections": 8}}),
        (
            "streams",
            [{"streams": 500, "complete": 500, "stalls": 0, "errors": {}, "max_gap_ms": 9}],
        ),
    ):
        result[figure] = {**RESULT[figure], "litellm-latest": row}
    fig = report.figures(result)
    assert fig["rps_ratio_vs_litellm"] == 4.0
    assert fig["rps_ratio_vs_litellm_latest"] == 8.0
    table = report.render_table(result)
    assert "| MegaRouter | LiteLLM 1.108.7 | LiteLLM 1.110.2 | target |" in table
    assert "| added latency p50 (ms) | | 1.75 | 16.00 | 20.00 | <= 2 | met |" in table
    assert "4.0x 1.108.7: MISSED; 8.0x 1.110.2: met; 1,200: MISSED |" in table
    assert "| >= 500 | MISSED |" in table

"""Turns a bench/run.py result (the JSON it writes) into the Markdown table it prints and puts
into docs/performance.md. Pure functions: tested in tests/bench/test_report.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"

TARGETS = {
    "added_p50_ms": 2.0,
    "added_p99_ms": 5.0,
    "rps_ratio_vs_litellm": 3.0,
    "added_ttft_p99_ms": 5.0,
    "streams": 500,
}


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _added(results: dict[str, Any], figure: str, target: str, pct: str) -> float | None:
    gw, direct = _get(results, figure, target, pct), _get(results, figure, "direct", pct)
    return None if gw is None or direct is None else gw - direct


def clean_streams(rows: list[dict[str, Any]]) -> int:
    """The largest stream count that completed every stream with no stall and no error."""
    ok = [
        r["streams"]
        for r in rows
        if r["stalls"] == 0 and not r["errors"] and r["complete"] == r["streams"]
    ]
    return max(ok, default=0)


def verdict(value: float | None, target: float, *, higher_is_better: bool = False) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "MISSED"


def figures(results: dict[str, Any]) -> dict[str, Any]:
    """The headline figures, per target, with the project's targets."""
    out: dict[str, Any] = {}
    for name in ("megarouter", "litellm"):
        if name not in (results.get("latency") or {}):
            continue
        sustained = _get(results, "throughput", name, "sustained") or {}
        rows = _get(results, "streams", name) or []
        out[name] = {
            "added_p50_ms": _added(results, "latency", name, "p50"),
            "added_p99_ms": _added(results, "latency", name, "p99"),
            "added_ttft_p50_ms": _added(results, "ttft", name, "p50"),
            "added_ttft_p99_ms": _added(results, "ttft", name, "p99"),
            "sustained_rps": sustained.get("rps"),
            "sustained_connections": sustained.get("connections"),
            "clean_streams": clean_streams(rows) if rows else None,
            "rss_idle_mib": _get(results, "rss_idle_mib", name),
            "rss_peak_mib": _get(results, "rss_load_peak_mib", name),
        }
    gw, ll = out.get("megarouter", {}), out.get("litellm", {})
    if gw.get("sustained_rps") and ll.get("sustained_rps"):
        out["rps_ratio_vs_litellm"] = gw["sustained_rps"] / ll["sustained_rps"]
    return out


def render_table(results: dict[str, Any]) -> str:
    fig = figures(results)
    machine = results.get("machine", {})
    gw, ll = fig.get("megarouter", {}), fig.get("litellm", {})
    lines = [
        f"Run {results.get('run_id')} ({results.get('mode')} mode), "
        f"{results.get('workers')} server workers each. Machine: {machine.get('nproc')} cores "
        f"({machine.get('cpu')}), {machine.get('memory_gib')} GiB, load average "
        f"{machine.get('loadavg')} at start, {results.get('load_after')} at the end."
        + (f" LiteLLM {results['litellm_version']}." if results.get("litellm_version") else ""),
        "",
        "| figure | direct (simulator) | MegaRouter | LiteLLM | target | MegaRouter verdict |",
        "|---|---|---|---|---|---|",
    ]

    def pct(figure: str, name: str, key: str) -> str:
        return _ms(_get(results, figure, name, key))

    for figure, label in (("latency", "c=1 latency"), ("ttft", "c=1 time to first token")):
        for key in ("p50", "p99"):
            lines.append(
                f"| {label} {key} (ms) | {pct(figure, 'direct', key)} | "
                f"{pct(figure, 'megarouter', key)} | {pct(figure, 'litellm', key)} | | |"
            )
    lines += [
        f"| added latency p50 (ms) | | {_ms(gw.get('added_p50_ms'))} | "
        f"{_ms(ll.get('added_p50_ms'))} | <= 2 | "
        f"{verdict(gw.get('added_p50_ms'), TARGETS['added_p50_ms'])} |",
        f"| added latency p99 (ms) | | {_ms(gw.get('added_p99_ms'))} | "
        f"{_ms(ll.get('added_p99_ms'))} | <= 5 | "
        f"{verdict(gw.get('added_p99_ms'), TARGETS['added_p99_ms'])} |",
        f"| added TTFT p99 (ms) | | {_ms(gw.get('added_ttft_p99_ms'))} | "
        f"{_ms(ll.get('added_ttft_p99_ms'))} | <= 5 | "
        f"{verdict(gw.get('added_ttft_p99_ms'), TARGETS['added_ttft_p99_ms'])} |",
    ]
    direct_sustained = _get(results, "throughput", "direct", "sustained") or {}

    def rps(row: dict[str, Any], name: str) -> str:
        sustained = row if name == "direct" else fig.get(name, {})
        value = sustained.get("rps") if name == "direct" else sustained.get("sustained_rps")
        conns = (
            sustained.get("connections")
            if name == "direct"
            else sustained.get("sustained_connections")
        )
        return "none" if not value else f"{value:,.0f} (c={conns})"

    ratio = fig.get("rps_ratio_vs_litellm")
    ratio_verdict = "not measured"
    if ratio:
        met = verdict(ratio, TARGETS["rps_ratio_vs_litellm"], higher_is_better=True)
        ratio_verdict = f"{ratio:.1f}x: {met}"
    lines.append(
        f"| sustained req/s, 20 ms upstream, p99 < 1 s | {rps(direct_sustained, 'direct')} | "
        f"{rps({}, 'megarouter')} | {rps({}, 'litellm')} | >= 3x LiteLLM | {ratio_verdict} |"
    )
    direct_rows = _get(results, "streams", "direct") or []
    lines.append(
        "| concurrent 64x20 ms streams with no stall > 100 ms | "
        f"{clean_streams(direct_rows) if direct_rows else 'n/a'} | "
        f"{gw.get('clean_streams', 'n/a')} | {ll.get('clean_streams', 'n/a')} | >= 500 | "
        f"{verdict(gw.get('clean_streams'), TARGETS['streams'], higher_is_better=True)} |"
    )

    def rss(name: str) -> str:
        idle = _get(results, "rss_idle_mib", name) or []
        peak = _get(results, "rss_load_peak_mib", name)
        if not idle:
            return "n/a"
        return f"{', '.join(f'{v:.0f}' for v in idle)} idle; {peak or 0:.0f} peak"

    lines.append(
        f"| resident memory per worker (MiB) | | {rss('megarouter')} | {rss('litellm')} | | |"
    )
    routing = results.get("routing_decision") or {}
    lines.append(
        "| routing decision | | "
        + (routing.get("skipped") or routing.get("error") or "below (bench/routing_decision.py)")
        + " | | < 1 ms | |"
    )
    if routing.get("output"):
        lines += ["", "Routing decision, in process (microseconds):", "", "```"]
        lines += routing["output"].splitlines()
        lines.append("```")
    lines.append("")
    lines.append("Streams per step (stalls = gaps > 120 ms between content events):")
    lines.append("")
    lines.append("| streams | target | complete | stalls | max gap (ms) | errors |")
    lines.append("|---|---|---|---|---|---|")
    for name, rows in (results.get("streams") or {}).items():
        for row in rows:
            lines.append(
                f"| {row['streams']} | {name} | {row['complete']} | {row['stalls']} | "
                f"{row['max_gap_ms']} | {row['errors'] or 0} |"
            )
    lines.append("")
    lines.append("Throughput ladder (wrk, 20 ms upstream):")
    lines.append("")
    lines.append("| connections | target | req/s | p50 (ms) | p99 (ms) | non-2xx | socket errors |")
    lines.append("|---|---|---|---|---|---|---|")
    for name, data in (results.get("throughput") or {}).items():
        for row in data["steps"]:
            lines.append(
                f"| {row['connections']} | {name} | {row['rps']:,.0f} | "
                f"{_ms(row.get('p50'))} | {_ms(row.get('p99'))} | {row['non2xx']} | "
                f"{row['socket_errors']} |"
            )
    for note in results.get("notes") or []:
        lines.append("")
        lines.append(f"Note: {note}")
    return "\n".join(lines) + "\n"


def update_docs(path: Path, table: str) -> None:
    """Replace what stands between the markers (append the markers when missing)."""
    text = path.read_text() if path.exists() else "# Performance\n"
    block = f"{START}\n{table}{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)

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
    "rps_ratio_vs_litellm": 8.0,  # against every LiteLLM version measured
    "rps": 1200.0,
    "added_ttft_p50_ms": 2.0,
    "added_ttft_p99_ms": 5.0,
    "streams": 500,
}
# The LiteLLM targets a run may have: the pinned release and the newest the registry served.
LITELLMS = ("litellm", "litellm-latest")


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
    for name in ("megarouter", *LITELLMS):
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
    gw = out.get("megarouter", {})
    for name in LITELLMS:
        ll = out.get(name, {})
        if gw.get("sustained_rps") and ll.get("sustained_rps"):
            out[f"rps_ratio_vs_{name.replace('-', '_')}"] = (
                gw["sustained_rps"] / ll["sustained_rps"]
            )
    return out


def _versions(results: dict[str, Any]) -> dict[str, str]:
    versions = dict(results.get("litellm_versions") or {})
    if results.get("litellm_version") and "litellm" not in versions:  # results before 2026-12
        versions["litellm"] = results["litellm_version"]
    return versions


def render_table(results: dict[str, Any]) -> str:
    fig = figures(results)
    machine = results.get("machine", {})
    gw = fig.get("megarouter", {})
    versions = _versions(results)
    lls = [name for name in LITELLMS if name in fig]
    ll_heads = "".join(f" LiteLLM {versions.get(name, '?')} |" for name in lls)
    lines = [
        f"Run {results.get('run_id')} ({results.get('mode')} mode), "
        f"{results.get('workers')} server workers each. Machine: {machine.get('nproc')} cores "
        f"({machine.get('cpu')}), {machine.get('memory_gib')} GiB, load average "
        f"{machine.get('loadavg')} at start, {results.get('load_after')} at the end.",
        "",
        f"| figure | direct (simulator) | MegaRouter |{ll_heads} target | MegaRouter verdict |",
        "|---|---|---|" + "---|" * len(lls) + "---|---|",
    ]

    def pct(figure: str, name: str, key: str) -> str:
        return _ms(_get(results, figure, name, key))

    def each(text: Any) -> str:
        return "".join(f" {text(name)} |" for name in lls)

    for figure, label in (("latency", "c=1 latency"), ("ttft", "c=1 time to first token")):
        for key in ("p50", "p99"):
            lines.append(
                f"| {label} {key} (ms) | {pct(figure, 'direct', key)} | "
                f"{pct(figure, 'megarouter', key)} |"
                + each(lambda n, f=figure, k=key: pct(f, n, k))
                + " | |"
            )
    for figure, label, bound in (
        ("added_p50_ms", "added latency p50 (ms)", "<= 2"),
        ("added_p99_ms", "added latency p99 (ms)", "<= 5"),
        ("added_ttft_p50_ms", "added TTFT p50 (ms)", "<= 2"),
        ("added_ttft_p99_ms", "added TTFT p99 (ms)", "<= 5"),
    ):
        lines.append(
            f"| {label} | | {_ms(gw.get(figure))} |"
            + each(lambda n, f=figure: _ms(fig[n].get(f)))
            + f" {bound} | {verdict(gw.get(figure), TARGETS[figure])} |"
        )
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

    ratios = []
    for name in lls:
        ratio = fig.get(f"rps_ratio_vs_{name.replace('-', '_')}")
        if ratio:
            met = verdict(ratio, TARGETS["rps_ratio_vs_litellm"], higher_is_better=True)
            ratios.append(f"{ratio:.1f}x {versions.get(name, name)}: {met}")
    absolute = verdict(gw.get("sustained_rps"), TARGETS["rps"], higher_is_better=True)
    lines.append(
        f"| sustained req/s, 20 ms upstream, p99 < 1 s | {rps(direct_sustained, 'direct')} | "
        f"{rps({}, 'megarouter')} |"
        + each(lambda n: rps({}, n))
        + f" >= 8x LiteLLM and >= 1,200 | {'; '.join(ratios) or 'not measured'}; "
        f"1,200: {absolute} |"
    )
    direct_rows = _get(results, "streams", "direct") or []
    lines.append(
        "| concurrent 64x20 ms streams with no stall > 100 ms | "
        f"{clean_streams(direct_rows) if direct_rows else 'n/a'} | "
        f"{gw.get('clean_streams', 'n/a')} |"
        + each(lambda n: fig[n].get("clean_streams", "n/a"))
        + f" >= 500 | "
        f"{verdict(gw.get('clean_streams'), TARGETS['streams'], higher_is_better=True)} |"
    )

    def rss(name: str) -> str:
        idle = _get(results, "rss_idle_mib", name) or []
        peak = _get(results, "rss_load_peak_mib", name)
        if not idle:
            return "n/a"
        return f"{', '.join(f'{v:.0f}' for v in idle)} idle; {peak or 0:.0f} peak"

    lines.append(
        f"| resident memory per worker (MiB) | | {rss('megarouter')} |" + each(rss) + " | |"
    )
    routing = results.get("routing_decision") or {}
    lines.append(
        "| routing decision | | "
        + (routing.get("skipped") or routing.get("error") or "below (bench/routing_decision.py)")
        + " |"
        + " |" * len(lls)
        + " < 1 ms | |"
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

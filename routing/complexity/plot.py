"""Draw routing_eval curves (matplotlib, Agg backend; offline use only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STYLES = {
    "router": ("tab:blue", "-", "o"),
    "random": ("tab:gray", "--", None),
    "prompt_length": ("tab:orange", ":", "^"),
    "oracle": ("tab:green", "-.", None),
    "best_single": ("tab:red", "", "*"),
}


def plot_report(report: dict[str, Any], path: str | Path, *, title: str = "") -> list[str]:
    """One panel per group: quality against share of calls to the strong model for two-model
    groups, against mean cost per request (log scale) otherwise. Returns the groups drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [
        name
        for name, group in report["groups"].items()
        if name != "overall" and (group["two_model"] or name.startswith("source:"))
    ]
    if not names:
        names = ["overall"]
    columns = min(3, len(names))
    rows = (len(names) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.0 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names, strict=False):
        group = report["groups"][name]
        two = group["two_model"]
        for policy, entry in group["policies"].items():
            color, line, marker = STYLES.get(policy, ("black", "-", None))
            xs = entry["strong_share"] if two else entry["cost"]
            label = policy
            if two and entry.get("apgr") is not None:
                label += f" (APGR {entry['apgr']:.3f})"
            elif not two and entry.get("cost_saving_at_95") is not None:
                label += f" (saving@95 {entry['cost_saving_at_95']:.0%})"
            if policy == "best_single":
                ax.plot(xs[:1], entry["quality"][:1], marker="*", color=color, ms=12, ls="")
                ax.plot([], [], marker="*", color=color, ls="", label=label)
            else:
                ax.plot(
                    xs, entry["quality"], color=color, ls=line, marker=marker, ms=3, label=label
                )
        ref = group["reference"]
        if ref:
            ax.axhline(0.95 * ref["quality"], color="tab:red", lw=0.8, alpha=0.5)
        if two:
            ax.set_xlabel(f"share of calls to {two['strong']}")
        else:
            ax.set_xscale("log")
            ax.set_xlabel("mean cost per request (USD, log)")
        ax.set_ylabel("quality (mean score)")
        ax.set_title(f"{name} ({group['records']} records)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return names

"""K-fold cross-validation inside the training part (``manage.py routing_cv``).

Model and feature choices are made here, never on the held-out 20% that ``routing_eval
--holdout`` reports. The training part (the 80% of ``split_holdout``) is cut into ``k`` folds
the same way the held-out split is made, with a different hash: within every task, records
ordered by sha256("cv:" + id), record ``i`` in fold ``i % k`` (records sharing an id stay
together). Each fold is evaluated by a model trained on the other folds, with prices and quality
priors from those folds only, and the headline figures are averaged over the folds.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from routing.complexity.data import ModelStats, Record, model_stats
from routing.complexity.evaluation import Router, evaluate
from routing.complexity.model import ComplexityModel
from routing.complexity.train import TrainConfig, featurize, train_model

# (report group, metric) pairs summarised per fold; the targets of issue #6.
HEADLINE: tuple[tuple[str, str, str], ...] = (
    ("mmlu_apgr", "mmlu", "apgr"),
    ("gsm8k_apgr", "gsm8k", "apgr"),
    ("mt_bench_apgr", "mt_bench", "apgr"),
    ("routerbench_saving", "source:routerbench", "cost_saving_at_95"),
    ("routellm_apgr", "source:routellm", "apgr"),
    ("overall_saving", "overall", "cost_saving_at_95"),
)


def _cv_hash(record_id: str) -> str:
    return hashlib.sha256(("cv:" + record_id).encode("utf-8")).hexdigest()


def kfold(records: Sequence[Record], k: int) -> list[list[Record]]:
    """``k`` disjoint folds, stratified by task, deterministic, ids kept together."""
    if k < 2:
        raise ValueError("k must be at least 2")
    by_task: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_task[record.task].append(record)
    fold_of: dict[str, int] = {}
    for task in sorted(by_task):
        ids = sorted({r.id for r in by_task[task]}, key=_cv_hash)
        for i, record_id in enumerate(ids):
            fold_of.setdefault(record_id, i % k)
    folds: list[list[Record]] = [[] for _ in range(k)]
    for record in sorted(records, key=lambda r: (r.id, r.task)):
        folds[fold_of[record.id]].append(record)
    return folds


def headline(report: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, group, metric in HEADLINE:
        entry = report["groups"].get(group, {}).get("policies", {}).get("router", {})
        value = entry.get(metric)
        out[key] = None if value is None else round(float(value), 4)
    return out


def cross_validate(
    records: Sequence[Record],
    *,
    k: int = 4,
    router_for: Callable[[dict[str, ModelStats], ComplexityModel], Router],
    config: TrainConfig | None = None,
    points: int = 21,
) -> dict[str, Any]:
    """Train on k-1 folds, evaluate the k-th, for every fold; per-fold and mean figures.
    ``router_for(stats, model)`` is the router evaluated (``routing.offline.live_router``)."""
    config = config or TrainConfig()
    folds = kfold(records, k)
    cache = dict(zip((id(r) for r in records), featurize(records), strict=True))
    per_fold = []
    for i, held in enumerate(folds):
        train = [r for j, fold in enumerate(folds) if j != i for r in fold]
        meta, weights, cluster_map = train_model(
            train, config=config, data_label=f"cv fold {i}", features=[cache[id(r)] for r in train]
        )
        model = ComplexityModel(meta, weights, cluster_map)
        stats = model_stats(train)
        report = evaluate(
            held,
            stats=stats,
            train_lengths=[r.input_tokens for r in train],
            router=router_for(stats, model),
            points=points,
        )
        per_fold.append(headline(report))
    mean: dict[str, float | None] = {}
    for key, _, _ in HEADLINE:
        values = [f[key] for f in per_fold if f[key] is not None]
        mean[key] = round(sum(values) / len(values), 4) if values else None
    return {"k": k, "records": len(records), "mean": mean, "folds": per_fold}

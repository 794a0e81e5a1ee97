"""Offline routing evaluation (``manage.py routing_eval``).

For every record the candidates are the models in its ``outcomes`` that the training file
knows; their prices (cost per prompt token) and quality priors (mean score) come from the
training file, never from the record under test. Models the training file does not know are
dropped from that record's candidates (they cannot be priced); a record left with no known
model is skipped and counted under ``skipped``.

Policies, each swept over ``points`` settings from cheapest (k = 0) to best quality (k = last):

* ``router``: the ``Router`` given (``routing.offline.live_router``: ``routing.engine.route``,
  the gateway's routing call, with the policy field ``cost_quality`` = k / (points - 1)).
* ``random``: sends a fraction k / (points - 1) of requests to the best-prior candidate and the
  rest to the cheapest; reported as its exact expectation (no sampling noise).
* ``best_single``: always the candidate with the highest quality prior (one point).
* ``prompt_length``: the longest prompts go to the best-prior candidate, the rest to the
  cheapest; the length threshold at point k is the (1 - k / (points - 1)) quantile of the
  training prompts' lengths.
* ``oracle``: knows the outcomes. Records are ranked by how much quality per relative cost
  an upgrade over the cheapest candidate buys them; at point k the first floor(f_k * n) get
  their ideal model (the cheapest among the best-scoring), the rest the cheapest candidate.

Figures per group (each task family, each source, and ``overall``): mean quality (score) and
mean cost (US dollars per request) at every point; ``cost_saving_at_95``: 1 - (the cheapest
cost among the achieved points that reach 95% of the best single model's quality on these
records, no interpolation) / (that model's cost); and for groups where
every record has the same two candidates, ``apgr`` as in RouteLLM (Ong et al. 2024): the area
under the performance-gap-recovered curve against the share of calls to the stronger (pricier)
model, by the trapezoid rule over the points plus the two single-model endpoints (0% and 100%).
With ``bootstrap`` resamples of each group's records, a 95% percentile interval for each of
those figures and for the reference's quality and cost.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from routing.complexity.data import ModelStats, Outcome, Record

POLICIES = ("router", "random", "best_single", "prompt_length", "oracle")
QUALITY_TARGET = 0.95

# a record, its candidate models, the sweep's settings -> the model picked at each setting
# (``routing.offline.live_router``: the gateway's routing engine)
Router = Callable[[Record, Sequence[str], Sequence[float]], list[str]]


@dataclass(frozen=True, slots=True)
class Choice:
    """One policy's outcome on one record at one point (expected values for mixed choices)."""

    score: float
    cost: float
    strong_share: float  # share of this record's call that went to the pricier candidate
    model: str | None = None


def _quantile(values: np.ndarray, level: float) -> float:
    return float(np.quantile(values, min(max(level, 0.0), 1.0)))


def _breakeven(scores: Sequence[float], costs: Sequence[float]) -> float:
    top = max(costs) or 1.0
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -scores[i]))
    cheap = order[0]
    best = 0.0
    for i in order[1:]:
        gain = scores[i] - scores[cheap]
        extra = (costs[i] - costs[cheap]) / top
        if gain > 0 and extra > 0:
            best = max(best, gain / extra)
    return best


def _pick(scores: Sequence[float], costs: Sequence[float], lam: float) -> int:
    top = max(costs) or 1.0
    if math.isinf(lam):
        return min(range(len(costs)), key=lambda i: (costs[i], -scores[i]))
    return min(range(len(costs)), key=lambda i: (-(scores[i] - lam * costs[i] / top), costs[i], i))


def evaluate(
    records: Sequence[Record],
    *,
    stats: dict[str, ModelStats],
    train_lengths: Sequence[int],
    router: Router,
    points: int = 21,
    decisions: TextIO | None = None,
    write_decision: Callable[[TextIO, str, int, str], None] | None = None,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """The evaluation report of ``records`` (see the module docstring).

    Steps: keep the records with a model the training file knows (``_usable``); every
    policy's choices on every kept record at every point (``_policy_choices``, which writes
    the router's decisions when ``decisions`` and ``write_decision`` are given); the groups
    (``_groups``), each summarized by ``_group_report`` (with ``bootstrap`` resamples for the
    intervals, drawn from ``seed``: the report is deterministic).
    """
    if points < 2:
        raise ValueError("points must be at least 2")
    fractions = [k / (points - 1) for k in range(points)]
    usable, skipped, dropped_models = _usable(records, stats)
    lengths = np.asarray(sorted(train_lengths) or [0], dtype=np.float64)
    per_policy = _policy_choices(
        usable,
        stats=stats,
        fractions=fractions,
        lengths=lengths,
        router=router,
        decisions=decisions,
        write_decision=write_decision,
    )
    report_groups = {
        name: _group_report(sorted(idx), usable, per_policy, stats, points, bootstrap, seed)
        for name, idx in sorted(_groups(usable).items())
    }
    return {
        "records": len(records),
        "evaluated": len(usable),
        "skipped": {
            "count": len(skipped),
            "reason": "none of the record's models is in the training file",
            "ids": skipped[:20],
        },
        "models_unknown_to_training": sorted(dropped_models),
        "points": points,
        "willingness": [round(f, 6) for f in fractions],
        "swept": "cost_quality",
        "bootstrap": {"resamples": bootstrap, "seed": seed, "level": 0.95},
        "groups": report_groups,
    }


def _usable(
    records: Sequence[Record], stats: dict[str, ModelStats]
) -> tuple[list[tuple[Record, list[str]]], list[str], set[str]]:
    """Each record with its known models (sorted), the ids of the records with none, and
    the models the training file does not know."""
    usable: list[tuple[Record, list[str]]] = []
    skipped: list[str] = []
    dropped_models: set[str] = set()
    for record in records:
        known = sorted(m for m in record.outcomes if m in stats)
        dropped_models.update(m for m in record.outcomes if m not in stats)
        if known:
            usable.append((record, known))
        else:
            skipped.append(record.id)
    return usable, skipped, dropped_models


def _oracle_ranks(usable: list[tuple[Record, list[str]]]) -> dict[int, int]:
    """Each usable record's rank (0 first) by its true break-even cost weight."""
    oracle_values = [
        _breakeven([r.outcomes[m].score for m in known], [r.outcomes[m].cost_usd for m in known])
        for r, known in usable
    ]
    return {
        i: rank
        for rank, i in enumerate(sorted(range(len(usable)), key=lambda i: (-oracle_values[i], i)))
    }


@dataclass(frozen=True, slots=True)
class _Picks:
    """One record's outcomes and the candidates its baselines pick from."""

    outcomes: dict[str, Outcome]
    cheapest: str
    best: str  # highest quality prior
    strong: str | None  # the pricier candidate (None with a single candidate)

    def choice(self, name: str, weight: float = 1.0) -> Choice:
        """``name`` for a share ``weight`` of the record's call."""
        return Choice(
            self.outcomes[name].score * weight,
            self.outcomes[name].cost_usd * weight,
            weight if name == self.strong else 0.0,
            name,
        )

    def mix(self, f: float) -> Choice:
        """The best-prior candidate for a share ``f``, the cheapest for the rest."""
        a, b = self.choice(self.cheapest, 1.0 - f), self.choice(self.best, f)
        return Choice(a.score + b.score, a.cost + b.cost, a.strong_share + b.strong_share)


def _picks(record: Record, known: list[str], stats: dict[str, ModelStats]) -> _Picks:
    """The record's cheapest, best-prior and pricier candidates, priced by the training file."""
    price = {m: stats[m].cost_per_input_token for m in known}
    return _Picks(
        outcomes=record.outcomes,
        cheapest=min(known, key=lambda m: (price[m], -stats[m].quality_prior, m)),
        best=max(known, key=lambda m: (stats[m].quality_prior, -price[m], m)),
        strong=max(known, key=lambda m: (price[m], m)) if len(known) > 1 else None,
    )


def _policy_choices(
    usable: list[tuple[Record, list[str]]],
    *,
    stats: dict[str, ModelStats],
    fractions: list[float],
    lengths: np.ndarray,
    router: Router,
    decisions: TextIO | None,
    write_decision: Callable[[TextIO, str, int, str], None] | None,
) -> dict[str, list[list[Choice]]]:
    """Per policy, one row per usable record of its choice at every point."""
    oracle_rank = _oracle_ranks(usable)
    per_policy: dict[str, list[list[Choice]]] = {p: [] for p in POLICIES}
    for i, (record, known) in enumerate(usable):
        picks = _picks(record, known, stats)
        per_policy["router"].append(
            _router_row(record, known, picks, fractions, router, decisions, write_decision)
        )
        per_policy["random"].append([picks.mix(f) for f in fractions])
        per_policy["best_single"].append([picks.choice(picks.best) for _ in fractions])
        per_policy["prompt_length"].append(_length_row(record, picks, fractions, lengths))
        per_policy["oracle"].append(
            _oracle_row(known, picks, fractions, oracle_rank[i], len(usable))
        )
    return per_policy


def _router_row(
    record: Record,
    known: list[str],
    picks: _Picks,
    fractions: list[float],
    router: Router,
    decisions: TextIO | None,
    write_decision: Callable[[TextIO, str, int, str], None] | None,
) -> list[Choice]:
    """The router's pick at every setting, each written as a decision when asked."""
    row = []
    for k, picked in enumerate(router(record, known, fractions)):
        row.append(picks.choice(picked))
        if decisions is not None and write_decision is not None:
            write_decision(decisions, record.id, k, picked)
    return row


def _length_row(
    record: Record, picks: _Picks, fractions: list[float], lengths: np.ndarray
) -> list[Choice]:
    """Prompts longer than the training lengths' (1 - f) quantile go to the best prior."""
    row = []
    for f in fractions:
        if f <= 0.0:
            row.append(picks.choice(picks.cheapest))
        elif f >= 1.0:
            row.append(picks.choice(picks.best))
        else:
            threshold = _quantile(lengths, 1.0 - f)
            row.append(
                picks.choice(picks.best if record.input_tokens > threshold else picks.cheapest)
            )
    return row


def _oracle_row(
    known: list[str], picks: _Picks, fractions: list[float], rank: int, n_usable: int
) -> list[Choice]:
    """The record's ideal model (the cheapest among the best-scoring) at the points where
    its ``rank`` is within the first floor(f * n_usable), the cheapest candidate elsewhere."""
    true_scores = [picks.outcomes[m].score for m in known]
    true_costs = [picks.outcomes[m].cost_usd for m in known]
    ideal = known[_pick(true_scores, true_costs, 0.0)]
    return [
        picks.choice(ideal if rank < math.floor(f * n_usable + 1e-9) else picks.cheapest)
        for f in fractions
    ]


def _groups(usable: list[tuple[Record, list[str]]]) -> dict[str, list[int]]:
    """The usable records' indexes per task family, per source and ``overall``."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (record, _) in enumerate(usable):
        groups[record.family].append(i)
        groups[f"source:{record.source}"].append(i)
        groups["overall"].append(i)
    return groups


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _group_report(
    idx: list[int],
    usable: list[tuple[Record, list[str]]],
    per_policy: dict[str, list[list[Choice]]],
    stats: dict[str, ModelStats],
    points: int,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """The group's figures, and with ``bootstrap`` > 0 a 95% percentile interval for each
    headline figure (the reference's quality and cost, every policy's saving at 95% and APGR)
    from that many resamples of the group's records with replacement. The reference and the
    two-model pair are chosen once, on the full group; each resample recomputes their means."""
    candidate_sets = {tuple(usable[i][1]) for i in idx}
    common = set.intersection(*(set(usable[i][1]) for i in idx)) if idx else set()
    weights = _resample_weights(len(idx), bootstrap, seed) if idx and bootstrap > 0 else None

    def column(model_name: str, attr: str) -> np.ndarray:
        return np.array([getattr(usable[i][0].outcomes[model_name], attr) for i in idx])

    reference: dict[str, Any] | None = None
    ref_boot: tuple[np.ndarray, np.ndarray] | None = None
    if common:
        ranked = sorted(
            common,
            key=lambda m: (
                -_mean([usable[i][0].outcomes[m].score for i in idx]),
                _mean([usable[i][0].outcomes[m].cost_usd for i in idx]),
                m,
            ),
        )
        name = ranked[0]
        reference = {
            "model": name,
            "quality": _mean([usable[i][0].outcomes[name].score for i in idx]),
            "cost": _mean([usable[i][0].outcomes[name].cost_usd for i in idx]),
        }
        if weights is not None:
            ref_boot = (weights @ column(name, "score"), weights @ column(name, "cost_usd"))
            reference["quality_ci"] = _interval(ref_boot[0])
            reference["cost_ci"] = _interval(ref_boot[1])
    two_model: dict[str, Any] | None = None
    pair_boot: tuple[np.ndarray, np.ndarray] | None = None
    if len(candidate_sets) == 1 and len(next(iter(candidate_sets))) == 2:
        pair = next(iter(candidate_sets))
        weak, strong = sorted(pair, key=lambda m: (stats[m].cost_per_input_token, m))
        two_model = {
            "weak": weak,
            "strong": strong,
            "weak_quality": _mean([usable[i][0].outcomes[weak].score for i in idx]),
            "strong_quality": _mean([usable[i][0].outcomes[strong].score for i in idx]),
        }
        if weights is not None:
            pair_boot = (weights @ column(weak, "score"), weights @ column(strong, "score"))
    policies = {}
    for policy, rows in per_policy.items():
        quality = [_mean([rows[i][k].score for i in idx]) for k in range(points)]
        cost = [_mean([rows[i][k].cost for i in idx]) for k in range(points)]
        entry: dict[str, Any] = {"quality": quality, "cost": cost}
        boot: dict[str, np.ndarray] = {}
        if weights is not None:
            for attr in ("score", "cost", "strong_share"):
                matrix = np.array([[getattr(rows[i][k], attr) for k in range(points)] for i in idx])
                boot[attr] = weights @ matrix  # (resamples, points)
        if reference is not None:
            entry["cost_saving_at_95"] = cost_saving(
                quality, cost, reference["quality"], reference["cost"]
            )
            if ref_boot is not None:
                entry["cost_saving_at_95_ci"] = _interval(
                    [
                        cost_saving(q, c, rq, rc)
                        for q, c, rq, rc in zip(boot["score"], boot["cost"], *ref_boot, strict=True)
                    ]
                )
        if two_model is not None:
            share = [_mean([rows[i][k].strong_share for i in idx]) for k in range(points)]
            entry["strong_share"] = share
            entry["apgr"] = apgr(
                share, quality, two_model["weak_quality"], two_model["strong_quality"]
            )
            if pair_boot is not None:
                entry["apgr_ci"] = _interval(
                    [
                        apgr(list(h), list(q), float(w), float(st))
                        for h, q, w, st in zip(
                            boot["strong_share"], boot["score"], *pair_boot, strict=True
                        )
                    ]
                )
        policies[policy] = entry
    return {
        "records": len(idx),
        "candidate_sets": len(candidate_sets),
        "reference": reference,
        "two_model": two_model,
        "policies": policies,
    }


def _resample_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n): each row a bootstrap resample's record counts / n (a mean is a row
    times the records' values)."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)
    return counts / float(n)


def _interval(values: Sequence[float | None] | np.ndarray) -> list[float | None]:
    """The 2.5th and 97.5th percentiles of the resampled values, from values that occurred
    (no interpolation). A None (the figure does not exist in that resample: never reached,
    or no gap to recover) counts as below every number; a bound that falls on one is None."""
    finite = np.array([-math.inf if v is None else float(v) for v in values])
    if finite.size == 0:
        return [None, None]
    bounds = np.quantile(finite, [0.025, 0.975], method="inverted_cdf")
    return [None if math.isinf(b) else float(b) for b in bounds]


def apgr(
    strong_share: Sequence[float], quality: Sequence[float], weak: float, strong: float
) -> float | None:
    """RouteLLM's APGR: trapezoid area of (quality - weak) / (strong - weak) over the share of
    calls to the strong model, with the all-weak (0, weak) and all-strong (1, strong) ends."""
    if strong <= weak:
        return None
    curve = sorted({(0.0, weak), (1.0, strong), *zip(strong_share, quality, strict=True)})
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        area += (x1 - x0) * ((y0 - weak) + (y1 - weak)) / 2.0
    return area / (strong - weak)


def cost_saving(
    quality: Sequence[float], cost: Sequence[float], ref_quality: float, ref_cost: float
) -> float | None:
    """1 - (the lowest cost among the achieved points reaching 95% of ``ref_quality``) /
    ``ref_cost``; None if no point reaches it. No interpolation between points: a cost between
    two settings is only reachable by mixing them at random, which the router does not do."""
    target = QUALITY_TARGET * ref_quality
    eps = 1e-12
    reached = [c for q, c in zip(quality, cost, strict=True) if q >= target - eps]
    if not reached or ref_cost <= 0:
        return None
    return 1.0 - float(min(reached)) / ref_cost

"""Public interface: ``estimate(features) -> Estimate`` and ``choose(candidates, estimate, w)``.

``choose`` is the cost/quality trade-off used live by the routing engine and offline by
``manage.py routing_eval``: every candidate gets a predicted success probability ``q`` (the
trained per-model head for models in the training data, else the shared difficulty head and the
candidate's quality prior) and an expected cost ``c`` (its prices times the estimated input and
output tokens). Candidates are ranked by ``q - lambda * c / max(c)``, where ``lambda`` comes
from the willingness to pay: 0 ranks the cheapest first, 1 the best predicted quality first.
In between, ``lambda`` is calibrated on the training data so that willingness ``w`` sends about
a fraction ``w`` of typical traffic above the cheapest candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from routing.complexity.features import LONG_CONTEXT_TOKENS, RequestFeatures
from routing.complexity.model import ComplexityModel, default_model, sigmoid

# Quality tiers: a typical model of tier t answers a typical request well with this probability.
TIER_PRIORS: tuple[float, ...] = (0.55, 0.68, 0.80, 0.90)
# A request needs the lowest tier whose predicted success reaches this.
TIER_TARGET = 0.75


@dataclass(frozen=True, slots=True)
class Needs:
    """Capabilities a request needs. Hard needs (tools, vision, json_schema, long_context) are
    filters; soft ones (reasoning, code, math) are hints for scoring and policies."""

    tools: bool = False
    vision: bool = False
    json_schema: bool = False
    long_context: bool = False
    reasoning: bool = False
    code: bool = False
    math: bool = False


@dataclass(frozen=True, slots=True)
class Estimate:
    difficulty: float  # 0 easy .. 1 hard (percentile among the training prompts)
    tier: int  # 1..4, the lowest quality tier expected to answer well
    needs: Needs
    language: str
    tier_success: tuple[float, ...]  # predicted P(good answer) for a typical tier 1..4 model
    model_success: dict[str, float]  # predicted P(good answer) per model known to the artefact
    input_tokens: int
    output_tokens: int  # a rough guess, for expected-cost arithmetic
    shared_logit: float
    shared_median: float

    def success_for(self, model_id: str, quality_prior: float) -> float:
        """Predicted P(good answer) for a candidate: trained head if known, else from its prior."""
        known = self.model_success.get(model_id)
        if known is not None:
            return known
        prior = min(max(quality_prior, 1e-4), 1 - 1e-4)
        z = math.log(prior / (1 - prior)) + self.shared_logit - self.shared_median
        return sigmoid(z)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A model the request may go to. Prices are per token (US dollars, Decimal or float);
    ``quality_prior`` in [0, 1] is how often it answers a typical request well (used only for
    models the artefact does not know)."""

    model_id: str
    price_in: Decimal | float
    price_out: Decimal | float
    quality_prior: float


@dataclass(frozen=True, slots=True)
class Ranked:
    candidate: Candidate
    success: float
    expected_cost: float  # US dollars, a float estimate for ranking, never for billing
    utility: float


def guess_output_tokens(features: RequestFeatures) -> int:
    if features.multiple_choice and features.dense[16] > 0:  # "...Answer:" style prompt
        guess = 16
    elif features.code:
        guess = 350
    elif features.reasoning or features.math:
        guess = 300
    else:
        guess = 250
    if features.max_tokens is not None:
        guess = min(guess, max(int(features.max_tokens), 1))
    return guess


def estimate(features: RequestFeatures, *, model: ComplexityModel | None = None) -> Estimate:
    model = model or default_model()
    scores = model.scores(features)
    tier_success = tuple(
        round(sigmoid(model.unknown_model_logit(scores.shared, prior)), 6)
        for prior in model.tier_priors
    )
    tier = next((i + 1 for i, p in enumerate(tier_success) if p >= TIER_TARGET), len(tier_success))
    output_tokens = guess_output_tokens(features)
    needs = Needs(
        tools=features.has_tools,
        vision=features.has_images,
        json_schema=features.response_format in ("json_object", "json_schema"),
        long_context=features.input_tokens + output_tokens > LONG_CONTEXT_TOKENS,
        reasoning=features.reasoning,
        code=features.code,
        math=features.math,
    )
    return Estimate(
        difficulty=model.difficulty(scores.shared),
        tier=tier,
        needs=needs,
        language=features.language,
        tier_success=tier_success,
        model_success={name: sigmoid(z) for name, z in scores.per_model.items()},
        input_tokens=features.input_tokens,
        output_tokens=output_tokens,
        shared_logit=scores.shared,
        shared_median=model.shared_median,
    )


def choose(
    candidates: list[Candidate],
    estimate: Estimate,
    willingness: float,
    *,
    model: ComplexityModel | None = None,
) -> list[Ranked]:
    """Order candidates best-first for this request and willingness to pay (0..1).

    The first entry is the choice, the rest the fallback order. Ties break on lower expected
    cost, then on the model id, so the order is deterministic.
    """
    model = model or default_model()
    lam = model.cost_weight(willingness)
    priced = []
    for candidate in candidates:
        cost = (
            float(candidate.price_in) * estimate.input_tokens
            + float(candidate.price_out) * estimate.output_tokens
        )
        success = estimate.success_for(candidate.model_id, candidate.quality_prior)
        priced.append((candidate, success, cost))
    if not priced:
        return []
    top_cost = max(cost for _, _, cost in priced) or 1.0
    ranked = []
    for candidate, success, cost in priced:
        relative = cost / top_cost
        utility = -relative if math.isinf(lam) else success - lam * relative
        ranked.append(Ranked(candidate, success, cost, utility))
    if math.isinf(lam):
        ranked.sort(key=lambda r: (r.expected_cost, -r.success, r.candidate.model_id))
    else:
        ranked.sort(key=lambda r: (-r.utility, r.expected_cost, r.candidate.model_id))
    return ranked

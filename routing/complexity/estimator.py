"""Public interface: ``estimate(features) -> Estimate`` and ``choose(candidates, estimate, w)``.

``choose`` is the cost/quality trade-off used live by the routing engine and offline by
``manage.py routing_eval``: every candidate gets a predicted success probability ``q`` (the
trained per-model head for models in the training data; for a catalog model, its quality tier
read through the trained strong / weak heads, ``anchored_logit``; else the shared difficulty
head and the candidate's quality prior) and an expected cost ``c`` (its prices times the
estimated input and output tokens). Candidates are ranked by ``q - lambda * c / c_ref``, where
``c_ref`` is the reference model's expected cost of the request on the live path (offline, the
most expensive candidate's) and ``lambda`` comes from the willingness to pay (the policy's
``cost_quality``): 0 ranks the cheapest first, 1 the best predicted quality first.
In between, ``lambda`` is calibrated on the training data so that willingness ``w`` sends about
a fraction ``w`` of typical traffic above the cheapest candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal

from routing.complexity.features import LONG_CONTEXT_TOKENS, RequestFeatures
from routing.complexity.model import ComplexityModel, Scores, default_model, sigmoid

# Quality tiers: a typical model of tier t answers a typical request well with this probability.
TIER_PRIORS: tuple[float, ...] = (0.55, 0.68, 0.80, 0.90)
# A request needs the lowest tier whose predicted success reaches this.
TIER_TARGET = 0.75
# In a conversation, how far a harder earlier ask pulls the last turn's logits toward its own
# (``carried``). A choice, not learned: the training records are single prompts, so no label
# says how much a follow-up inherits; half way keeps "thanks, and the next step?" after a
# proof above a greeting and below the proof itself.
CARRY = 0.5

# Catalog models are not the artefact's models: a catalog model is read through the artefact's
# strong / weak pair, the two models of the RouteLLM records (9,266 MMLU, GSM8K and MT-Bench
# prompts, the most evidence per prompt in the training file), by where its quality tier sits
# between them in logit space: 0 is the weak head (Mixtral-8x7B-Instruct, a 2023 open model,
# about tier 2), 1 the strong one (gpt-4-1106-preview, tier 4). So the gap between tiers is the
# request's own: near zero for a greeting both models answer, wide for a proof one of them fails.
# The positions are a documented mapping (docs/routing.md, "Quality for catalog models"), not
# learned; an artefact without the pair falls back to the tier priors below.
ANCHOR_STRONG = "gpt-4-1106-preview"
ANCHOR_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
TIER_POSITIONS: tuple[float, ...] = (-0.68, 0.05, 0.89, 2.41)

# How a candidate's quality was predicted (the explanation's ``quality``).
EVIDENCE_HEAD = "trained head"
EVIDENCE_TIER_HEADS = "tier through the trained strong/weak heads"
EVIDENCE_TIER_PRIOR = "tier prior"


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
    # (weak, strong) logits of the anchor heads for this request; None: the artefact has no pair
    anchors: tuple[float, float] | None = None
    # the artefact that made the estimate: ``choose`` reads its willingness grid
    model: ComplexityModel | None = field(default=None, repr=False, compare=False)

    def success_for(self, model_id: str, quality_prior: float, tier: int | None = None) -> float:
        """Predicted P(good answer) for a candidate: its trained head when the artefact knows
        the model, else its tier through the anchor heads, else its quality prior."""
        known = self.model_success.get(model_id)
        if known is not None:
            return known
        if tier is not None and self.anchors is not None:
            return sigmoid(anchored_logit(self.anchors, tier))
        prior = min(max(quality_prior, 1e-4), 1 - 1e-4)
        z = math.log(prior / (1 - prior)) + self.shared_logit - self.shared_median
        return sigmoid(z)

    def evidence_for(self, model_id: str, tier: int | None = None) -> str:
        """Which of the three ``success_for`` used (for the explanation)."""
        if model_id in self.model_success:
            return EVIDENCE_HEAD
        if tier is not None and self.anchors is not None:
            return EVIDENCE_TIER_HEADS
        return EVIDENCE_TIER_PRIOR


def anchored_logit(anchors: tuple[float, float], tier: int) -> float:
    """A tier's logit between the weak and strong heads. The gap counts only when the strong
    head predicts better (a negative gap on a prompt is noise, not a reason to rank the better
    tiers lower), so predicted quality never falls as the tier rises."""
    weak, strong = anchors
    position = TIER_POSITIONS[min(max(tier, 1), len(TIER_POSITIONS)) - 1]
    return weak + position * max(strong - weak, 0.0)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A model the request may go to. Prices are per token (US dollars, Decimal or float);
    ``quality_prior`` in [0, 1] is how often it answers a typical request well, used only for
    a model the artefact does not know and without a ``tier`` the anchor heads can read."""

    model_id: str
    price_in: Decimal | float
    price_out: Decimal | float
    quality_prior: float
    tier: int | None = None  # the catalog's quality tier (read through the anchor heads)


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


def carried(last: float, earlier: float) -> float:
    """A logit of the last turn with the conversation's earlier asks read: a harder (lower)
    earlier logit pulls it CARRY of the way down; an easier one leaves it (a hard question
    after small talk stays hard)."""
    return last + CARRY * min(0.0, earlier - last)


def _conversation_scores(model: ComplexityModel, features: RequestFeatures) -> Scores:
    scores = model.scores(features)
    if features.earlier is None:
        return scores
    before = model.scores(features.earlier)
    return Scores(
        carried(scores.shared, before.shared),
        {m: carried(z, before.per_model.get(m, z)) for m, z in scores.per_model.items()},
    )


def estimate(features: RequestFeatures, *, model: ComplexityModel | None = None) -> Estimate:
    """The estimate of a request: the last user turn scored by the artefact, and in a
    conversation, each logit carried toward the earlier user turns' (``carried``)."""
    model = model or default_model()
    scores = _conversation_scores(model, features)
    weak, strong = scores.per_model.get(ANCHOR_WEAK), scores.per_model.get(ANCHOR_STRONG)
    anchors = (weak, strong) if weak is not None and strong is not None else None
    if anchors is not None:
        tier_logits = [anchored_logit(anchors, t) for t in range(1, len(TIER_POSITIONS) + 1)]
    else:
        tier_logits = [model.unknown_model_logit(scores.shared, p) for p in model.tier_priors]
    tier_success = tuple(round(sigmoid(z), 6) for z in tier_logits)
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
        anchors=anchors,
        model=model,
    )


def choose(
    candidates: list[Candidate],
    estimate: Estimate,
    willingness: float,
    *,
    model: ComplexityModel | None = None,
    reference_cost: float | None = None,
) -> list[Ranked]:
    """Order candidates best-first for this request and willingness to pay (0..1).

    ``lambda`` comes from ``model``'s willingness grid, else the estimate's artefact's, else
    the bundled one's. The cost term is each candidate's expected cost relative to
    ``reference_cost`` (the reference model's expected cost of this request, as the live path
    passes it), else to the most expensive candidate's. The first entry is the choice, the
    rest the fallback order.
    Ties break on lower expected cost, then on the model id, so the order is deterministic.
    """
    model = model or estimate.model or default_model()
    lam = model.cost_weight(willingness)
    priced = []
    for candidate in candidates:
        cost = (
            float(candidate.price_in) * estimate.input_tokens
            + float(candidate.price_out) * estimate.output_tokens
        )
        success = estimate.success_for(candidate.model_id, candidate.quality_prior, candidate.tier)
        priced.append((candidate, success, cost))
    if not priced:
        return []
    if reference_cost is not None and reference_cost > 0:
        top_cost = reference_cost
    else:
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

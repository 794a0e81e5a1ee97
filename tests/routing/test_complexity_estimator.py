import math

import pytest

from routing.complexity import (
    TIER_PRIORS,
    Candidate,
    Needs,
    RequestFeatures,
    choose,
    default_model,
    estimate,
)
from routing.complexity.model import sigmoid
from tests.routing.complexity_toys import BIG, SMALL, toy_model

CANDIDATES = [
    Candidate(BIG, 0.004, 0.0, 0.9),
    Candidate(SMALL, 0.00004, 0.0, 0.6),
]


def test_toy_model_estimate_exact_values():
    model = toy_model()
    est = estimate(RequestFeatures.from_prompt("a hard question"), model=model)
    assert est.model_success == {BIG: sigmoid(4.0), SMALL: sigmoid(-4.0)}
    assert est.shared_logit == 0.0
    assert est.difficulty == 0.5  # shared logit 0 is the middle of the training quantiles
    assert est.tier_success == pytest.approx(TIER_PRIORS, abs=1e-6)
    assert est.tier == 3  # first tier whose typical model reaches 0.75
    assert est.needs == Needs()
    assert (est.input_tokens, est.output_tokens, est.language) == (4, 250, "en")


def test_cost_weight_follows_the_calibration_grid():
    model = toy_model()
    assert model.cost_weight(0.0) == math.inf
    assert model.cost_weight(0.25) == 1.0
    assert model.cost_weight(0.5) == 0.5
    assert model.cost_weight(0.75) == 0.25
    assert model.cost_weight(1.0) == 0.0
    for bad in (-0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match="willingness must be between 0 and 1"):
            model.cost_weight(bad)


def test_choose_trades_cost_for_predicted_quality():
    model = toy_model()
    hard = estimate(RequestFeatures.from_prompt("a hard question"), model=model)
    easy = estimate(RequestFeatures.from_prompt("an easy question"), model=model)

    def order(est, w):
        return [r.candidate.model_id for r in choose(CANDIDATES, est, w, model=model)]

    # gain of big on the hard prompt: sigmoid(4) - sigmoid(-4) = 0.964; big wins once
    # lambda * (1 - 0.01) < 0.964, i.e. lambda < 0.974: willingness 0.3 (lambda 0.833), not 0.25
    assert order(hard, 0.0) == [SMALL, BIG]
    assert order(hard, 0.25) == [SMALL, BIG]
    assert order(hard, 0.3) == [BIG, SMALL]
    assert order(hard, 1.0) == [BIG, SMALL]
    # equal predicted quality: the cheaper model first at every willingness
    for w in (0.0, 0.5, 1.0):
        assert order(easy, w) == [SMALL, BIG]

    ranked = choose(CANDIDATES, hard, 0.5, model=model)
    assert ranked[0].expected_cost == pytest.approx(0.004 * 4)
    assert ranked[0].utility == pytest.approx(sigmoid(4.0) - 0.5 * 1.0)
    assert ranked[1].utility == pytest.approx(sigmoid(-4.0) - 0.5 * 0.01)
    assert choose([], hard, 0.5, model=model) == []


def test_unknown_models_are_scored_from_their_quality_prior():
    model = toy_model()
    est = estimate(RequestFeatures.from_prompt("anything"), model=model)
    assert est.success_for("brand-new", 0.7) == pytest.approx(0.7)
    candidates = [
        Candidate("new-cheap", 1e-6, 1e-6, 0.5),
        Candidate("new-strong", 1e-5, 1e-5, 0.95),
    ]
    assert [r.candidate.model_id for r in choose(candidates, est, 1.0, model=model)] == [
        "new-strong",
        "new-cheap",
    ]
    assert [r.candidate.model_id for r in choose(candidates, est, 0.0, model=model)] == [
        "new-cheap",
        "new-strong",
    ]


def test_bundled_model_needs_and_ranges():
    long_text = "word " * 14_000
    est = estimate(
        RequestFeatures.from_messages(
            [{"role": "user", "content": [{"type": "text", "text": long_text}, {"type": "image"}]}],
            tools=[{"type": "function", "function": {"name": "f"}}],
            response_format={"type": "json_object"},
        )
    )
    assert est.needs == Needs(
        tools=True, vision=True, json_schema=True, long_context=True, reasoning=False
    )
    assert est.input_tokens == 17_500
    assert 0.0 <= est.difficulty <= 1.0
    assert est.tier in (1, 2, 3, 4)
    assert set(est.model_success) == set(default_model().models)
    assert all(0.0 < p < 1.0 for p in est.model_success.values())
    assert list(est.tier_success) == sorted(est.tier_success)  # better tiers never do worse


def test_bundled_model_learned_that_gpt4_beats_mixtral_on_math_word_problems():
    prompt = (
        "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
        "muffins for her friends every day with four. She sells the remainder at the farmers' "
        "market daily for $2 per fresh duck egg. How much in dollars does she make every day?"
    )
    est = estimate(RequestFeatures.from_prompt(prompt))
    strong = est.model_success["gpt-4-1106-preview"]
    weak = est.model_success["mistralai/Mixtral-8x7B-Instruct-v0.1"]
    assert strong > weak
    candidates = [
        Candidate("gpt-4-1106-preview", 24.7e-6, 0.0, 0.8),
        Candidate("mistralai/Mixtral-8x7B-Instruct-v0.1", 0.24e-6, 0.0, 0.67),
    ]
    assert choose(candidates, est, 0.0)[0].candidate.model_id.startswith("mistralai/")
    assert choose(candidates, est, 1.0)[0].candidate.model_id == "gpt-4-1106-preview"


def test_tier_positions_are_the_calibration_of_the_bundled_artefact():
    """TIER_POSITIONS are computed, not chosen: retraining the artefact changes them, and this
    says to copy the new ones."""
    from routing.complexity.data import DEFAULT_TRAIN_FILE, read_records
    from routing.complexity.estimator import TIER_POSITIONS
    from routing.complexity.train import tier_positions

    assert tier_positions(default_model(), read_records(DEFAULT_TRAIN_FILE)) == pytest.approx(
        TIER_POSITIONS, abs=0.011
    )


def test_a_catalog_model_is_read_through_the_anchor_heads_by_its_tier():
    from routing.complexity.estimator import (
        ANCHOR_STRONG,
        ANCHOR_WEAK,
        EVIDENCE_HEAD,
        EVIDENCE_TIER_HEADS,
        EVIDENCE_TIER_PRIOR,
        TIER_POSITIONS,
    )

    hard = estimate(
        RequestFeatures.from_prompt(
            "Prove that for every positive integer n, the number n^5 - n is divisible by 30."
        )
    )
    weak, strong = hard.anchors
    assert (weak, strong) == (
        pytest.approx(
            math.log(hard.model_success[ANCHOR_WEAK] / (1 - hard.model_success[ANCHOR_WEAK]))
        ),
        pytest.approx(
            math.log(hard.model_success[ANCHOR_STRONG] / (1 - hard.model_success[ANCHOR_STRONG]))
        ),
    )
    for tier, position in enumerate(TIER_POSITIONS, start=1):
        expected = sigmoid(weak + position * max(strong - weak, 0.0))
        assert hard.success_for("acme/new-model", 0.5, tier) == pytest.approx(expected)
        assert hard.tier_success[tier - 1] == pytest.approx(expected, abs=1e-6)
    assert hard.evidence_for("acme/new-model", 3) == EVIDENCE_TIER_HEADS
    assert hard.evidence_for(ANCHOR_STRONG, 3) == EVIDENCE_HEAD
    assert hard.evidence_for("acme/new-model") == EVIDENCE_TIER_PRIOR
    # a model the artefact knows keeps its own head whatever its tier
    assert hard.success_for(ANCHOR_WEAK, 0.9, 4) == hard.model_success[ANCHOR_WEAK]
    # the gap between tiers is the request's: wide on this proof, nil where the heads agree
    assert hard.tier_success[3] - hard.tier_success[0] > 0.3
    greeting = estimate(RequestFeatures.from_prompt("hi there!"))
    assert greeting.tier_success[3] - greeting.tier_success[0] < 0.05
    assert greeting.tier == 1 and hard.tier == 4


def test_without_the_anchor_pair_unknown_models_fall_back_to_their_prior():
    model = toy_model()
    est = estimate(RequestFeatures.from_prompt("x"), model=model)
    assert est.anchors is None
    assert est.success_for("brand-new", 0.7, 3) == est.success_for("brand-new", 0.7)


def test_choose_measures_cost_against_the_reference_cost_when_given():
    model = toy_model()
    est = estimate(RequestFeatures.from_prompt("an easy one"), model=model)
    default = choose(CANDIDATES, est, 0.5, model=model)
    lam = model.cost_weight(0.5)
    by_id = {r.candidate.model_id: r for r in default}
    top = max(r.expected_cost for r in default)
    for r in default:
        assert r.utility == pytest.approx(r.success - lam * r.expected_cost / top)
    priced = choose(CANDIDATES, est, 0.5, model=model, reference_cost=by_id[BIG].expected_cost * 10)
    for r in priced:
        assert r.utility == pytest.approx(
            r.success - lam * r.expected_cost / (by_id[BIG].expected_cost * 10)
        )


def test_a_follow_up_is_carried_half_way_toward_a_harder_earlier_ask():
    model = toy_model()  # small's head: -4 on prompts with "hard", +4 otherwise; big's +4
    hard, easy = "a hard question", "thanks, go on"

    def conversation(*asks):
        messages = []
        for ask in asks:
            messages += [{"role": "user", "content": ask}, {"role": "assistant", "content": "."}]
        return estimate(RequestFeatures.from_messages(messages[:-1]), model=model)

    assert conversation(easy).model_success[SMALL] == sigmoid(4.0)
    # after the hard ask, the follow-up's logit moves CARRY = 0.5 of the way: 4 - 0.5 * 8
    assert conversation(hard, easy).model_success[SMALL] == sigmoid(0.0)
    assert conversation(hard, easy).model_success[BIG] == sigmoid(4.0)  # no harder before
    # a hard question after small talk is not made easier by it
    assert conversation(easy, hard).model_success[SMALL] == sigmoid(-4.0)


def test_the_bundled_model_reads_a_proofs_follow_up_as_harder_than_the_same_words_alone():
    proof = "Prove that for every positive integer n, the number n^5 - n is divisible by 30."
    follow_up = "Thanks! And the next step?"
    alone = estimate(RequestFeatures.from_prompt(follow_up))
    after = estimate(
        RequestFeatures.from_messages(
            [
                {"role": "user", "content": proof},
                {"role": "assistant", "content": "Factor n^5 - n = n(n - 1)(n + 1)(n^2 + 1)."},
                {"role": "user", "content": follow_up},
            ]
        )
    )
    assert alone.tier == 1
    assert after.tier >= 3 and after.difficulty > alone.difficulty

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

"""routing_eval on a four-record fixture whose figures are computed by hand.

Records (tokens = characters / 4): e1 easy 10, h1 hard 20, e2 easy 30, h2 hard 40. On easy
records both models score 1; on hard ones small scores 0 and big 1. big costs 0.1 a request,
small 0.001. The training file is the same four records, so big's price is 0.4 / 100 tokens,
small's 0.004 / 100, and the priors are 1.0 (big) and 0.5 (small). The hand-built model
predicts sigmoid(4) for both models, except sigmoid(-4) for small on prompts containing "hard";
its willingness grid gives lambda = 0.25 / w below w = 0.5. The router is the gateway's
(``routing.engine.route`` on a catalog of the two models, ``cost_quality`` = the point's
willingness).
"""

import io
import json
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from orgs.policy import PolicySpec
from routing.complexity import RequestFeatures, estimate
from routing.complexity.data import model_stats, read_records
from routing.complexity.estimator import EVIDENCE_HEAD
from routing.complexity.model import load_model
from routing.engine import RouteRequest, route
from routing.health import HealthConfig, LocalHealth
from routing.offline import live_router, tiers, training_catalog
from routing.policies import policy_merge
from tests.routing.complexity_toys import (
    BIG,
    SMALL,
    toy_records,
    write_jsonl,
    write_toy_artefact,
)

Q_LOW, Q_HIGH = 0.5, 1.0


@pytest.fixture
def files(tmp_path):
    data = write_jsonl(tmp_path / "eval.jsonl", toy_records())
    model = write_toy_artefact(tmp_path / "toy.zip")
    return {"data": data, "model": model, "dir": tmp_path}


def run_eval(files, **options) -> dict:
    stdout = io.StringIO()
    call_command(
        "routing_eval",
        data=str(options.pop("data", files["data"])),
        train=str(options.pop("train", files["data"])),
        model=str(files["model"]),
        stdout=stdout,
        **options,
    )
    return json.loads(stdout.getvalue())


def test_router_and_baselines_hand_computed(files):
    report = run_eval(files)
    assert report["points"] == 21
    assert report["willingness"] == [k / 20 for k in range(21)]
    assert (report["records"], report["evaluated"], report["skipped"]["count"]) == (4, 4, 0)
    assert set(report["groups"]) == {"overall", "source:fixture", "toy"}
    assert report["swept"] == "cost_quality"
    assert report["bootstrap"] == {"resamples": 1000, "seed": 0, "level": 0.95}
    group = report["groups"]["toy"]
    assert group["reference"] == {
        "model": BIG,
        "quality": 1.0,
        "cost": 0.1,
        "quality_ci": [1.0, 1.0],  # big scores 1 and costs 0.1 on every record
        "cost_ci": [0.1, 0.1],
    }
    assert group["two_model"] == {
        "weak": SMALL,
        "strong": BIG,
        "weak_quality": 0.5,
        "strong_quality": 1.0,
    }
    p = group["policies"]

    # router: hard prompts move to big once lambda < 0.974, i.e. from w = 0.3 (k = 6)
    assert p["router"]["quality"] == [Q_LOW] * 6 + [Q_HIGH] * 15
    assert p["router"]["strong_share"] == [0.0] * 6 + [0.5] * 15
    assert p["router"]["cost"] == pytest.approx([0.001] * 6 + [0.0505] * 15, abs=1e-15)
    # PGR 0 at 0%, 1 at 50% and 100% of calls to big: area 0.25 / 2 + 0.5 = 0.375 ... / 0.5
    assert p["router"]["apgr"] == 0.75
    # 95% of big's quality is first reached at k = 6, cost 0.0505 (no interpolation)
    assert p["router"]["cost_saving_at_95"] == pytest.approx(1 - 0.0505 / 0.1, abs=1e-12)
    # four records: a resample of easy records only has no gap to recover (no APGR, counted
    # below every number, so the lower bound is None) and saves 99% (small everywhere); one
    # of hard records only saves nothing
    assert p["router"]["apgr_ci"] == [None, 0.875]
    assert p["router"]["cost_saving_at_95_ci"] == pytest.approx([0.0, 0.99])

    # random: expected mix of small and big, a straight line
    assert p["random"]["quality"] == pytest.approx([0.5 + 0.5 * k / 20 for k in range(21)])
    assert p["random"]["apgr"] == pytest.approx(0.5, abs=1e-12)
    assert p["random"]["cost_saving_at_95"] == pytest.approx(1 - 0.0901 / 0.1, abs=1e-12)

    # best single model (highest training prior): big everywhere
    assert p["best_single"]["quality"] == [1.0] * 21
    assert p["best_single"]["cost"] == pytest.approx([0.1] * 21, abs=1e-15)
    assert p["best_single"]["cost_saving_at_95"] == 0.0
    assert p["best_single"]["apgr"] == 0.5

    # prompt length: thresholds 10 + 30 (1 - f) tokens: h2 (40) from k=1, e2 (30) from k=7,
    # h1 (20) from k=14, e1 (10) at k=20
    assert p["prompt_length"]["strong_share"] == [0.0] + [0.25] * 6 + [0.5] * 7 + [0.75] * 6 + [1.0]
    assert p["prompt_length"]["quality"] == [0.5] + [0.75] * 13 + [1.0] * 7
    assert p["prompt_length"]["apgr"] == 0.625
    # first point reaching 95%: k = 14 (1.0, 0.07525)
    assert p["prompt_length"]["cost_saving_at_95"] == pytest.approx(1 - 0.07525 / 0.1, abs=1e-12)

    # oracle: hard records first; floor(4 f) records upgraded
    assert p["oracle"]["quality"] == [0.5] * 5 + [0.75] * 5 + [1.0] * 11
    assert p["oracle"]["strong_share"] == [0.0] * 5 + [0.25] * 5 + [0.5] * 11
    assert p["oracle"]["apgr"] == 0.75
    assert p["oracle"]["cost_saving_at_95"] == pytest.approx(1 - 0.0505 / 0.1, abs=1e-12)
    assert p["best_single"]["cost_saving_at_95_ci"] == [0.0, 0.0]

    assert report["groups"]["overall"]["policies"] == p


def test_decisions_file_has_one_line_per_record_and_point(files):
    out = files["dir"] / "decisions" / "out.jsonl"
    run_eval(files, decisions=str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4 * 21
    assert lines[0] == {"id": "e1", "point": 0, "model": SMALL}
    by_key = {(d["id"], d["point"]): d["model"] for d in lines}
    assert set(by_key.values()) == {BIG, SMALL}
    assert [by_key[("h1", k)] for k in range(21)] == [SMALL] * 6 + [BIG] * 15
    assert [by_key[("e2", k)] for k in range(21)] == [SMALL] * 21
    assert all(set(d) == {"id", "point", "model"} for d in lines)


def test_models_unknown_to_the_training_file(files):
    rows = toy_records()
    rows.append(
        {
            "id": "x1",
            "task": "toy:other",
            "prompt": "who knows",
            "outcomes": {"mystery": {"score": 1.0, "cost_usd": 0.5}},
        }
    )
    rows.append(
        {
            "id": "x2",
            "task": "other:one",
            "prompt": "hard again",
            "outcomes": {
                "mystery": {"score": 1.0, "cost_usd": 0.5},
                SMALL: {"score": 0.0, "cost_usd": 0.001},
            },
        }
    )
    data = write_jsonl(files["dir"] / "with_unknown.jsonl", rows)
    report = run_eval(files, data=data)
    assert report["skipped"] == {
        "count": 1,
        "reason": "none of the record's models is in the training file",
        "ids": ["x1"],
    }
    assert report["models_unknown_to_training"] == ["mystery"]
    assert report["evaluated"] == 5
    other = report["groups"]["other"]
    assert other["records"] == 1
    assert other["policies"]["router"]["quality"] == [0.0] * 21  # small is its only candidate
    # the toy records' figures are unchanged
    assert report["groups"]["toy"]["policies"]["router"]["apgr"] == 0.75


def test_holdout_flag_evaluates_the_held_out_fifth(files):
    rows = []
    for i in range(10):
        for row in toy_records():
            rows.append({**row, "id": f"{row['id']}-{i}"})
    data = write_jsonl(files["dir"] / "forty.jsonl", rows)
    report = run_eval(files, data=data, train=data, holdout=True)
    assert report["records"] == 8  # 2 tasks x 20 records, every fifth held out
    assert report["data"].endswith("(held-out 20%)")


def test_bad_input_is_reported_with_file_and_line(files):
    missing = files["dir"] / "nope.jsonl"
    with pytest.raises(CommandError, match=r"nope\.jsonl: no such file"):
        run_eval(files, data=missing)

    good = json.dumps(toy_records()[0])
    bad = files["dir"] / "bad.jsonl"
    bad.write_text(good + "\n\n" + '{"id": "broken", "prompt": ' + "\n")
    with pytest.raises(CommandError, match=r"bad\.jsonl:3: not valid JSON"):
        run_eval(files, data=bad)

    no_outcomes = files["dir"] / "no_outcomes.jsonl"
    no_outcomes.write_text(good + "\n" + json.dumps({"id": "a", "prompt": "p"}) + "\n")
    with pytest.raises(CommandError, match=r"no_outcomes\.jsonl:2: missing field 'outcomes'"):
        run_eval(files, data=no_outcomes)

    bad_score = files["dir"] / "bad_score.jsonl"
    bad_score.write_text(
        json.dumps({"id": "a", "prompt": "p", "outcomes": {"m": {"score": 3, "cost_usd": 0}}})
    )
    with pytest.raises(CommandError, match=r"bad_score\.jsonl:1: outcome for 'm' needs a score"):
        run_eval(files, data=bad_score)

    with pytest.raises(CommandError, match=r"nope\.jsonl: no such file"):
        run_eval(files, train=missing)

    with pytest.raises(CommandError, match="--points must be at least 21"):
        run_eval(files, points=5)

    (files["dir"] / "junk.zip").write_text("not a zip")
    with pytest.raises(CommandError, match="not a complexity model artefact"):
        call_command(
            "routing_eval",
            data=str(files["data"]),
            model=str(files["dir"] / "junk.zip"),
            stdout=io.StringIO(),
        )


def test_plot_is_written(files):
    png = files["dir"] / "curves.png"
    run_eval(files, plot=str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_evaluated_router_is_the_gateways_engine_on_the_training_models(files):
    records = read_records(files["data"])
    stats = model_stats(records)
    snapshot = training_catalog(stats)
    assert tiers(stats) == {SMALL: 1, BIG: 3}  # quartile of the mean score among 2 models
    assert snapshot.models[BIG].current_price.input_per_token == Decimal("0.004")
    model = load_model(files["model"])
    hard = next(r for r in records if r.id == "h1")
    features = RequestFeatures.from_prompt(hard.prompt)
    policy = policy_merge(
        [("organization", PolicySpec(strategy="balanced", cost_quality=Decimal("0.5")))]
    )
    decision = route(
        request=RouteRequest(features=features),
        policy=policy,
        snapshot=snapshot,
        store=LocalHealth(HealthConfig()),
        estimate_=estimate(features, model=model),
    )
    # the artefact's per-model heads apply to the catalog's models of the same name
    assert decision.explain["quality"] == EVIDENCE_HEAD
    assert live_router(stats, model)(hard, [SMALL, BIG], [0.0, 0.5, 1.0]) == [
        SMALL,
        decision.candidates[0].model_id,
        BIG,
    ]
    # the record's candidates reach the engine as the policy's allowed_models
    assert live_router(stats, model, strategy="cost")(hard, [SMALL], [1.0]) == [SMALL]

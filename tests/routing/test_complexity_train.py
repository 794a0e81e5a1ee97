import hashlib
import io
import json
import random

from django.core.management import call_command

from routing.complexity import RequestFeatures, estimate, load_model
from routing.complexity.cv import HEADLINE, cross_validate, kfold
from routing.complexity.data import (
    DEFAULT_TRAIN_FILE,
    Record,
    read_records,
    split_holdout,
)
from routing.complexity.model import DEFAULT_ARTEFACT
from routing.complexity.train import (
    TrainConfig,
    assign_clusters,
    featurize,
    train_artefact,
    train_model,
    vocab_rows,
)
from routing.offline import live_router
from tests.routing.complexity_toys import write_jsonl


def synthetic_rows(n: int = 60) -> list[dict]:
    """Half calculus prompts (small fails), half greetings (both succeed)."""
    rows = []
    for i in range(n):
        calculus = i % 2 == 1
        topic = "compute the calculus integral of x" if calculus else "say hello to my friend"
        rows.append(
            {
                "id": f"syn/{i:03d}",
                "source": "synthetic",
                "task": "calc" if calculus else "chat",
                "prompt": f"{topic} number {i}",
                "outcomes": {
                    "big": {"score": 1.0, "cost_usd": 0.01},
                    "small": {"score": 0.0 if calculus else 1.0, "cost_usd": 0.0001},
                },
            }
        )
    return rows


def test_training_is_deterministic_and_learns_the_signal(tmp_path):
    records = read_records(write_jsonl(tmp_path / "syn.jsonl", synthetic_rows()))
    config = TrainConfig(steps=60)
    first = train_artefact(records, config=config, data_label="syn")
    shuffled = list(records)
    random.Random(7).shuffle(shuffled)
    second = train_artefact(shuffled, config=config, data_label="syn")
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(second).hexdigest()

    path = tmp_path / "model.zip"
    path.write_bytes(first)
    model = load_model(path)
    assert model.models == ["big", "small"]
    calc = estimate(RequestFeatures.from_prompt("compute the calculus integral of y"), model=model)
    chat = estimate(RequestFeatures.from_prompt("say hello to my neighbour"), model=model)
    assert calc.model_success["small"] < 0.2 < 0.8 < chat.model_success["small"]
    assert calc.model_success["big"] > 0.8
    assert calc.difficulty > chat.difficulty
    # willingness is calibrated on the training prompts: half of them gain from the big model
    assert model.cost_weight(0.25) > calc.model_success["big"] - calc.model_success["small"]
    assert model.cost_weight(0.75) < calc.model_success["big"] - calc.model_success["small"]


def test_holdout_split_is_stratified_deterministic_and_disjoint(tmp_path):
    records = read_records(write_jsonl(tmp_path / "syn.jsonl", synthetic_rows()))
    train, held = split_holdout(records)
    assert (len(train), len(held)) == (48, 12)
    assert sum(r.task == "calc" for r in held) == 6
    assert {r.id for r in train}.isdisjoint({r.id for r in held})
    reversed_train, reversed_held = split_holdout(list(reversed(records)))
    assert [r.id for r in reversed_held] == [r.id for r in held]
    assert [r.id for r in reversed_train] == [r.id for r in train]


def test_routing_train_command_writes_the_artefact(tmp_path):
    data = write_jsonl(tmp_path / "syn.jsonl", synthetic_rows())
    out = tmp_path / "out" / "model.zip"
    stdout = io.StringIO()
    call_command("routing_train", data=str(data), out=str(out), steps=10, stdout=stdout)
    summary = json.loads(stdout.getvalue())
    blob = out.read_bytes()
    assert summary["sha256"] == hashlib.sha256(blob).hexdigest()
    assert summary["records"] == 60
    assert load_model(out).meta["trained_on"]["records"] == 60

    stdout = io.StringIO()
    call_command(
        "routing_train", data=str(data), out=str(out), steps=10, holdout=True, stdout=stdout
    )
    assert json.loads(stdout.getvalue())["records"] == 48
    assert load_model(out).meta["config"]["steps"] == 10


def test_bundled_artefact_was_trained_on_the_bundled_data():
    records = sorted(read_records(DEFAULT_TRAIN_FILE), key=lambda r: (r.id, r.task))
    assert len(records) == 11_471
    digest = hashlib.sha256()
    for record in records:
        digest.update(record.id.encode())
    meta = load_model(DEFAULT_ARTEFACT).meta
    assert meta["trained_on"]["records"] == 11_471
    assert meta["trained_on"]["ids_sha256"] == digest.hexdigest()
    assert meta["config"] == {**TrainConfig().__dict__}
    assert isinstance(records[0], Record)


def test_kfold_is_disjoint_stratified_deterministic_and_keeps_ids_together(tmp_path):
    rows = synthetic_rows(40)
    rows.append({**rows[1], "task": "calc:copy"})  # same id under a second task
    records = read_records(write_jsonl(tmp_path / "syn.jsonl", rows))
    folds = kfold(records, 4)
    assert sorted(r.id + r.task for f in folds for r in f) == sorted(r.id + r.task for r in records)
    for fold in folds:
        assert sum(r.task == "calc" for r in fold) == 5
    (fold_of_copy,) = [i for i, f in enumerate(folds) for r in f if r.task == "calc:copy"]
    assert rows[1]["id"] in {r.id for r in folds[fold_of_copy] if r.task == "calc"}
    again = kfold(list(reversed(records)), 4)
    assert [[r.id for r in f] for f in again] == [[r.id for r in f] for f in folds]


def test_topic_clusters_are_used_the_same_way_in_training_and_scoring(tmp_path):
    records = read_records(write_jsonl(tmp_path / "syn.jsonl", synthetic_rows()))
    config = TrainConfig(steps=30, clusters=2)
    meta, _weights, cluster_map = train_model(records, config=config)
    assert cluster_map is not None and cluster_map.shape == (len(meta["vocab"]), 2)
    path = tmp_path / "model.zip"
    path.write_bytes(train_artefact(records, config=config))
    model = load_model(path)
    assert model.n_clusters == 2
    features = featurize(records)
    rows = vocab_rows(features, model.vocab)
    assert assign_clusters(rows, cluster_map) == [model.cluster(ids) for ids in rows]
    # the two topics (calculus, greetings) fall into different clusters
    topic = {r.task: model.cluster(ids) for r, ids in zip(records, rows, strict=True)}
    assert topic["calc"] != topic["chat"]
    no_clusters = train_artefact(records, config=TrainConfig(steps=30, clusters=0))
    path.write_bytes(no_clusters)
    assert load_model(path).cluster(rows[0]) is None


def test_routing_cv_command_reports_every_fold(tmp_path):
    rows = synthetic_rows(80)
    data = write_jsonl(tmp_path / "syn.jsonl", rows)
    result = cross_validate(
        read_records(data),
        k=2,
        router_for=live_router,
        config=TrainConfig(steps=20, clusters=2),
        points=21,
    )
    assert result["k"] == 2 and len(result["folds"]) == 2
    assert set(result["mean"]) == {key for key, _, _ in HEADLINE}
    stdout = io.StringIO()
    call_command("routing_cv", data=str(data), folds=2, all=True, stdout=stdout)
    assert json.loads(stdout.getvalue())["records"] == 80

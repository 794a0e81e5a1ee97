"""Routing-data records (the shared JSONL format), the deterministic held-out split, and the
per-model price / quality statistics that the offline evaluation takes from a training file.

Format, one JSON object a line::

    {"id": str, "source": str, "task": str, "prompt": str,
     "outcomes": {MODEL: {"score": 0..1, "cost_usd": float}}}
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from routing.complexity.model import DATA_DIR
from routing.tokens import tokens_for_chars

DEFAULT_TRAIN_FILE = DATA_DIR / "train.jsonl.gz"
HOLDOUT_EVERY = 5  # 1 record in 5 (20%) of every task is held out


class DataError(ValueError):
    """A routing-data file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Outcome:
    score: float
    cost_usd: float


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    source: str
    task: str
    prompt: str
    outcomes: dict[str, Outcome]

    @property
    def family(self) -> str:
        """The benchmark, without subject or category: ``mmlu:anatomy`` -> ``mmlu``."""
        return self.task.split(":", 1)[0]

    @property
    def input_tokens(self) -> int:
        return max(1, tokens_for_chars(len(self.prompt)))


def _parse(line: str, where: str) -> Record:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object")
    for key in ("id", "prompt", "outcomes"):
        if key not in raw:
            raise DataError(f"{where}: missing field {key!r}")
    if not isinstance(raw["id"], str) or not raw["id"]:
        raise DataError(f"{where}: 'id' must be a non-empty string")
    if not isinstance(raw["prompt"], str):
        raise DataError(f"{where}: 'prompt' must be a string")
    outcomes_raw = raw["outcomes"]
    if not isinstance(outcomes_raw, dict) or not outcomes_raw:
        raise DataError(f"{where}: 'outcomes' must be a non-empty object")
    outcomes: dict[str, Outcome] = {}
    for model, value in outcomes_raw.items():
        if not isinstance(value, dict):
            raise DataError(f"{where}: outcome for {model!r} must be an object")
        score, cost = value.get("score"), value.get("cost_usd")
        if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
            raise DataError(f"{where}: outcome for {model!r} needs a score between 0 and 1")
        if isinstance(cost, bool) or not isinstance(cost, int | float) or cost < 0:
            raise DataError(f"{where}: outcome for {model!r} needs a cost_usd >= 0")
        outcomes[model] = Outcome(float(score), float(cost))
    task = raw.get("task") or "unknown"
    source = raw.get("source") or "unknown"
    if not isinstance(task, str) or not isinstance(source, str):
        raise DataError(f"{where}: 'task' and 'source' must be strings")
    return Record(raw["id"], source, task, raw["prompt"], outcomes)


def read_records(path: str | Path) -> list[Record]:
    """All records of a ``.jsonl`` or ``.jsonl.gz`` file; blank lines are skipped.

    Ids may repeat (the shared file has 68 MMLU questions listed under two subjects, with an id
    derived from the prompt); the split keeps records with one id on the same side.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            records = [
                _parse(line, f"{path}:{number}")
                for number, line in enumerate(handle, start=1)
                if line.strip()
            ]
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _id_hash(record_id: str) -> str:
    return hashlib.sha256(record_id.encode("utf-8")).hexdigest()


def split_holdout(records: Iterable[Record]) -> tuple[list[Record], list[Record]]:
    """(train, held_out): within every task, records ordered by sha256(id), every 5th held out.

    Deterministic, independent of file order, and stratified by task (20% of each task, rounded
    up for small tasks).
    """
    by_task: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_task[record.task].append(record)
    held: set[str] = set()
    for task_records in by_task.values():
        ordered = sorted(task_records, key=lambda r: _id_hash(r.id))
        held.update(r.id for r in ordered[::HOLDOUT_EVERY])
    all_records = [r for group in by_task.values() for r in group]
    all_records.sort(key=lambda r: (r.id, r.task))
    train = [r for r in all_records if r.id not in held]
    held_out = [r for r in all_records if r.id in held]
    return train, held_out


@dataclass(frozen=True, slots=True)
class ModelStats:
    """What a training file says about one model: used as its price and quality prior."""

    quality_prior: float  # mean score
    cost_per_input_token: float  # total cost / total prompt tokens (output cost folded in)
    records: int


def model_stats(records: Iterable[Record]) -> dict[str, ModelStats]:
    score_sum: dict[str, float] = defaultdict(float)
    cost_sum: dict[str, float] = defaultdict(float)
    tokens: dict[str, int] = defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    for record in records:
        for model, outcome in record.outcomes.items():
            score_sum[model] += outcome.score
            cost_sum[model] += outcome.cost_usd
            tokens[model] += record.input_tokens
            count[model] += 1
    return {
        model: ModelStats(
            quality_prior=score_sum[model] / count[model],
            cost_per_input_token=cost_sum[model] / tokens[model],
            records=count[model],
        )
        for model in sorted(count)
    }

"""Hand-built complexity models and record files whose routing figures can be computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from routing.complexity.features import DENSE_FEATURES
from routing.complexity.model import ARTEFACT_VERSION, ComplexityModel, artefact_bytes

BIG, SMALL = "big", "small"


def toy_meta_weights(
    *, bias_big: float = 4.0, bias_small: float = 4.0, hard_small: float = -8.0
) -> tuple[dict, np.ndarray]:
    """Vocabulary ["hard"]; models big and small. Both succeed with sigmoid(4) on any prompt,
    except that a prompt containing the word "hard" drops small to sigmoid(4 - 8)."""
    n_dense = len(DENSE_FEATURES)
    weights = np.zeros((1 + n_dense + 1, 3), dtype=np.float32)
    weights[0, 2] = hard_small  # "hard" -> small's head
    weights[-1, 1] = bias_big
    weights[-1, 2] = bias_small
    meta = {
        "version": ARTEFACT_VERSION,
        "models": [BIG, SMALL],
        "vocab": ["hard"],
        "dense_names": list(DENSE_FEATURES),
        "dense_mean": [0.0] * n_dense,
        "dense_scale": [1.0] * n_dense,
        "tier_priors": [0.55, 0.68, 0.80, 0.90],
        "config": {},
        "trained_on": {"label": "hand-built", "records": 0, "ids_sha256": ""},
        "shared_median": 0.0,
        "shared_quantiles": [-1.0, 0.0, 1.0],
        # willingness 0 -> +inf, 0.5 -> 0.5, 1 -> 0; in (0, 0.5) lambda = 0.25 / w
        "lambda_grid": [None, 0.5, 0.0],
    }
    return meta, weights


def toy_model(**kwargs: float) -> ComplexityModel:
    meta, weights = toy_meta_weights(**kwargs)
    return ComplexityModel(meta, weights)


def write_toy_artefact(path: Path) -> Path:
    meta, weights = toy_meta_weights()
    path.write_bytes(artefact_bytes(meta, weights))
    return path


def toy_records() -> list[dict]:
    """Two hard records (small fails, big succeeds) and two easy ones (both succeed).
    Prompt lengths 40, 80, 120 and 160 characters = 10, 20, 30, 40 tokens."""

    def record(rid: str, task: str, prompt: str, small: float, big: float) -> dict:
        return {
            "id": rid,
            "source": "fixture",
            "task": task,
            "prompt": prompt,
            "outcomes": {
                BIG: {"score": big, "cost_usd": 0.1},
                SMALL: {"score": small, "cost_usd": 0.001},
            },
        }

    return [
        record("e1", "toy:easy", "easy one".ljust(40, "."), 1.0, 1.0),
        record("h1", "toy:hard", "hard one".ljust(80, "."), 0.0, 1.0),
        record("e2", "toy:easy", "easy two".ljust(120, "."), 1.0, 1.0),
        record("h2", "toy:hard", "hard two".ljust(160, "."), 0.0, 1.0),
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path

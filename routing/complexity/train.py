"""Training: records -> artefact (meta + weights), numpy only, deterministic.

Full-batch Adam on the multi-task logistic loss (soft labels: the record's score in [0, 1]),
starting from zeros, a fixed number of steps, no sampling: the same records and settings give
the same bytes. The seed is recorded and only orders ties, so there is nothing random left.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from routing.complexity.data import Record, model_stats
from routing.complexity.estimator import ANCHOR_STRONG, ANCHOR_WEAK, TIER_PRIORS
from routing.complexity.features import DENSE_FEATURES, RequestFeatures
from routing.complexity.model import ARTEFACT_VERSION, ComplexityModel, artefact_bytes

LAMBDA_STEPS = 100
QUANTILE_STEPS = 100


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 20261126
    min_df: int = 3
    max_vocab: int = 40_000
    l2_shared: float = 1e-4
    l2_model: float = 2e-4
    l2_bias: float = 0.0
    steps: int = 300
    learning_rate: float = 0.05
    clusters: int = 12
    cluster_iterations: int = 20


@dataclass
class Matrix:
    """A compressed-sparse-row matrix (rows = prompts), enough for X @ v and X.T @ g."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    n_cols: int

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def rows(self, selected: np.ndarray) -> Matrix:
        starts, ends = self.indptr[selected], self.indptr[selected + 1]
        lengths = ends - starts
        take = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        return Matrix(indptr, self.indices[take], self.data[take], self.n_cols)

    def dot(self, vector: np.ndarray) -> np.ndarray:
        return np.add.reduceat(self.data * vector[self.indices], self.indptr[:-1])

    def tdot(self, g: np.ndarray) -> np.ndarray:
        lengths = np.diff(self.indptr)
        return np.bincount(
            self.indices, weights=self.data * np.repeat(g, lengths), minlength=self.n_cols
        )


def featurize(records: Sequence[Record]) -> list[RequestFeatures]:
    return [RequestFeatures.from_prompt(r.prompt) for r in records]


def build_vocab(features: Sequence[RequestFeatures], config: TrainConfig) -> list[str]:
    df: Counter[str] = Counter()
    for f in features:
        df.update(set(f.ngrams))
    kept = [(count, gram) for gram, count in df.items() if count >= config.min_df]
    kept.sort(key=lambda item: (-item[0], item[1]))
    return sorted(gram for _, gram in kept[: config.max_vocab])


def vocab_rows(features: Sequence[RequestFeatures], vocab: dict[str, int]) -> list[list[int]]:
    return [sorted({vocab[g] for g in f.ngrams if g in vocab}) for f in features]


def build_matrix(
    rows: Sequence[list[int]],
    features: Sequence[RequestFeatures],
    n_vocab: int,
    dense_mean: np.ndarray,
    dense_scale: np.ndarray,
    clusters: Sequence[int | None] | None = None,
    n_clusters: int = 0,
) -> Matrix:
    """Columns: vocabulary (1/sqrt(count)), dense (standardised), one per cluster (the
    prompt's cluster), cluster x dense (the dense features again, in the prompt's cluster's
    block), bias. The model's ``scores`` computes the same sums."""
    n_dense = len(DENSE_FEATURES)
    indptr = [0]
    indices: list[int] = []
    data: list[float] = []
    dense_cols = np.arange(n_vocab, n_vocab + n_dense)
    cluster_start = n_vocab + n_dense
    block_start = cluster_start + n_clusters
    n_cols = block_start + n_clusters * n_dense + 1
    for i, (ids, f) in enumerate(zip(rows, features, strict=True)):
        if ids:
            value = 1.0 / np.sqrt(len(ids))
            indices.extend(ids)
            data.extend([value] * len(ids))
        dense = ((np.asarray(f.dense) - dense_mean) / dense_scale).tolist()
        indices.extend(dense_cols.tolist())
        data.extend(dense)
        k = clusters[i] if clusters is not None else None
        if k is not None:
            indices.append(cluster_start + k)
            data.append(1.0)
            indices.extend(range(block_start + k * n_dense, block_start + (k + 1) * n_dense))
            data.extend(dense)
        indices.append(n_cols - 1)  # bias column
        data.append(1.0)
        indptr.append(len(indices))
    return Matrix(
        np.asarray(indptr, dtype=np.int64),
        np.asarray(indices, dtype=np.int64),
        np.asarray(data, dtype=np.float64),
        n_cols,
    )


def topic_clusters(rows: Sequence[list[int]], n_vocab: int, config: TrainConfig) -> np.ndarray:
    """Spherical k-means on the prompts' idf-weighted n-gram sets; returns the cluster map
    (vocabulary x clusters, float16 as stored): a prompt's cluster is the argmax of the sum of its
    n-grams' rows, i.e. the centroid with the highest cosine similarity."""
    k = config.clusters
    df = np.bincount(
        np.concatenate([np.asarray(r, dtype=np.int64) for r in rows if r]), minlength=n_vocab
    ).astype(np.float64)
    idf = np.log((1.0 + len(rows)) / (1.0 + df)) + 1.0
    kept = [r for r in rows if r]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in kept])]).astype(np.int64)
    indices = np.concatenate([np.asarray(r, dtype=np.int64) for r in kept])
    data = idf[indices]
    norms = np.sqrt(np.add.reduceat(data * data, indptr[:-1]))
    data = data / np.repeat(norms, np.diff(indptr))
    x = Matrix(indptr, indices, data, n_vocab)
    n = x.n_rows
    rng = np.random.default_rng(config.seed)
    # k-means++ seeding (distance 1 - cosine), then Lloyd iterations.
    centroids = np.zeros((k, n_vocab))
    first = int(rng.integers(n))
    centroids[0, indices[indptr[first] : indptr[first + 1]]] = data[
        indptr[first] : indptr[first + 1]
    ]
    best = x.dot(centroids[0])
    for c in range(1, k):
        distance = np.clip(1.0 - best, 0.0, None) ** 2
        total = distance.sum()
        pick = int(rng.choice(n, p=distance / total)) if total > 0 else int(rng.integers(n))
        centroids[c, indices[indptr[pick] : indptr[pick + 1]]] = data[
            indptr[pick] : indptr[pick + 1]
        ]
        best = np.maximum(best, x.dot(centroids[c]))
    for _ in range(config.cluster_iterations):
        sims = np.stack([x.dot(centroids[c]) for c in range(k)], axis=1)
        assign = np.argmax(sims, axis=1)
        for c in range(k):
            members = (assign == c).astype(np.float64)
            if members.sum() == 0:  # an empty cluster restarts at the worst-served prompt
                worst = int(np.argmin(sims.max(axis=1)))
                members[worst] = 1.0
            total = x.tdot(members)
            centroids[c] = total / max(float(np.linalg.norm(total)), 1e-12)
    return (idf[:, None] * centroids.T).astype(np.float16)


def cluster_ranges(
    features: Sequence[RequestFeatures],
    clusters: Sequence[int | None] | None,
    dense_mean: np.ndarray,
    dense_scale: np.ndarray,
    n_clusters: int,
) -> tuple[list[list[float]], list[list[float]]]:
    """Per cluster, the range of the standardised dense features among its training prompts
    (rounded outwards): a cluster's dense slopes are only applied inside the range they were
    fitted on, so a 5-word chat prompt that lands in the few-shot Winogrande cluster does not
    extrapolate that cluster's sentence-count slope."""
    low = np.zeros((n_clusters, len(DENSE_FEATURES)))
    high = np.zeros((n_clusters, len(DENSE_FEATURES)))
    if clusters is None:
        return low.tolist(), high.tolist()
    dense = (np.asarray([f.dense for f in features], dtype=np.float64) - dense_mean) / dense_scale
    assigned = np.asarray([-1 if k is None else k for k in clusters])
    for k in range(n_clusters):
        members = dense[assigned == k]
        if len(members):
            low[k] = np.floor(members.min(axis=0) * 1e6) / 1e6
            high[k] = np.ceil(members.max(axis=0) * 1e6) / 1e6
    return low.tolist(), high.tolist()


def assign_clusters(rows: Sequence[list[int]], cluster_map: np.ndarray) -> list[int | None]:
    """Each prompt's cluster, computed exactly as ``ComplexityModel.cluster`` does."""
    table = cluster_map.astype(np.float64)
    return [int(np.argmax(table[ids].sum(axis=0))) if ids else None for ids in rows]


def _fit(
    x: Matrix,
    models: list[str],
    records: Sequence[Record],
    config: TrainConfig,
) -> np.ndarray:
    """Weights (n_cols x (1 + len(models))): column 0 shared, column 1+m model m."""
    n_cols = x.n_cols
    subsets = []
    for name in models:
        rows = np.asarray([i for i, r in enumerate(records) if name in r.outcomes], dtype=np.int64)
        labels = np.asarray([records[i].outcomes[name].score for i in rows], dtype=np.float64)
        subsets.append((rows, x.rows(rows), labels))
    n_pairs = sum(len(rows) for rows, _, _ in subsets)
    weights = np.zeros((n_cols, len(models) + 1))
    l2 = np.full((n_cols, len(models) + 1), config.l2_model)
    l2[:, 0] = config.l2_shared
    l2[-1, :] = config.l2_bias
    l2[-1, 0] = 0.0
    m1 = np.zeros_like(weights)
    m2 = np.zeros_like(weights)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, config.steps + 1):
        shared = x.dot(weights[:, 0])
        grad = np.zeros_like(weights)
        g_shared = np.zeros(x.n_rows)
        for m, (rows, sub, labels) in enumerate(subsets, start=1):
            z = shared[rows] + sub.dot(weights[:, m])
            residual = (1.0 / (1.0 + np.exp(-z)) - labels) / n_pairs
            grad[:, m] = sub.tdot(residual)
            g_shared[rows] += residual
        grad[:, 0] = x.tdot(g_shared)
        grad += l2 * weights
        m1 = beta1 * m1 + (1 - beta1) * grad
        m2 = beta2 * m2 + (1 - beta2) * grad * grad
        m1_hat = m1 / (1 - beta1**step)
        m2_hat = m2 / (1 - beta2**step)
        weights -= config.learning_rate * m1_hat / (np.sqrt(m2_hat) + eps)
    return weights


def _lambda_grid(
    model: ComplexityModel, records: Sequence[Record], all_features: Sequence[RequestFeatures]
) -> list[float | None]:
    """Break-even cost weights on the training prompts -> willingness grid (see estimator)."""
    stats = model_stats(records)
    breakeven = []
    for record, features in zip(records, all_features, strict=True):
        scores = model.scores(features)
        options = []
        for name in record.outcomes:
            cost = stats[name].cost_per_input_token * record.input_tokens
            options.append((cost, -_sig(scores.per_model[name]), name))
        options.sort()
        top = max(cost for cost, _, _ in options) or 1.0
        cheap_cost, cheap_neg_q, _ = options[0]
        best = 0.0
        for cost, neg_q, _ in options[1:]:
            gain = cheap_neg_q - neg_q
            extra = (cost - cheap_cost) / top
            if gain > 0 and extra > 0:
                best = max(best, gain / extra)
        breakeven.append(best)
    values = np.asarray(breakeven)
    grid: list[float] = [float("inf")]
    for k in range(1, LAMBDA_STEPS):
        grid.append(float(np.quantile(values, 1.0 - k / LAMBDA_STEPS)))
    grid.append(0.0)
    # JSON has no infinity: the first entry (willingness 0, cheapest first) is stored as null.
    return [None if np.isinf(v) else round(v, 8) for v in grid]


def _sig(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


def train_model(
    records: Sequence[Record],
    *,
    config: TrainConfig | None = None,
    data_label: str = "",
    features: Sequence[RequestFeatures] | None = None,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """Fit the model; returns (meta, float32 weights, float32 cluster map or None), ready for
    ``artefact_bytes``.

    ``features``, if given, are the records' features in the same order (a cache for
    cross-validation); otherwise they are computed here.
    """
    config = config or TrainConfig()
    if features is None:
        features = featurize(records)
    order = sorted(range(len(records)), key=lambda i: (records[i].id, records[i].task))
    records = [records[i] for i in order]
    features = [features[i] for i in order]
    vocab_list = build_vocab(features, config)
    vocab = {gram: i for i, gram in enumerate(vocab_list)}
    dense = np.asarray([f.dense for f in features], dtype=np.float64)
    dense_mean = dense.mean(axis=0)
    dense_scale = dense.std(axis=0)
    dense_scale[dense_scale < 1e-9] = 1.0
    dense_mean = np.round(dense_mean, 8)
    dense_scale = np.round(dense_scale, 8)
    rows = vocab_rows(features, vocab)
    cluster_map = topic_clusters(rows, len(vocab), config) if config.clusters else None
    clusters = assign_clusters(rows, cluster_map) if cluster_map is not None else None
    low, high = cluster_ranges(features, clusters, dense_mean, dense_scale, config.clusters)
    x = build_matrix(rows, features, len(vocab), dense_mean, dense_scale, clusters, config.clusters)
    models = sorted({name for r in records for name in r.outcomes})
    weights = _fit(x, models, records, config).astype(np.float32)
    digest = hashlib.sha256()
    for r in records:
        digest.update(r.id.encode())
    meta: dict[str, Any] = {
        "version": ARTEFACT_VERSION,
        "models": models,
        "vocab": vocab_list,
        "dense_names": list(DENSE_FEATURES),
        "dense_mean": dense_mean.tolist(),
        "dense_scale": dense_scale.tolist(),
        "tier_priors": list(TIER_PRIORS),
        "config": asdict(config),
        "trained_on": {
            "label": data_label,
            "records": len(records),
            "ids_sha256": digest.hexdigest(),
        },
        # placeholders filled from the fitted model below
        "shared_median": 0.0,
        "shared_quantiles": [0.0, 1.0],
        "lambda_grid": [None, 0.0],
        "clusters": config.clusters,
        "cluster_dense_low": low,
        "cluster_dense_high": high,
    }
    model = ComplexityModel(meta, weights, cluster_map)
    shared = np.asarray([model.scores(f).shared for f in features])
    meta["shared_median"] = round(float(np.median(shared)), 8)
    meta["shared_quantiles"] = [
        round(float(v), 8) for v in np.quantile(shared, np.linspace(0, 1, QUANTILE_STEPS + 1))
    ]
    model = ComplexityModel(meta, weights, cluster_map)
    meta["lambda_grid"] = _lambda_grid(model, records, features)
    return meta, weights, cluster_map


def train_artefact(records: Sequence[Record], **kwargs: Any) -> bytes:
    meta, weights, cluster_map = train_model(records, **kwargs)
    return artefact_bytes(meta, weights, cluster_map)


def tier_positions(
    model: ComplexityModel, records: Sequence[Record], priors: Sequence[float] = TIER_PRIORS
) -> tuple[float, ...]:
    """Where each quality tier sits between the anchor heads (``estimator.TIER_POSITIONS``):
    for tier t, the position whose mean predicted success over the prompts both anchors
    answered equals the tier's prior (a typical tier-t model answers a typical prompt well
    that often), to 0.01. Tiers below the weak anchor get negative positions, above the
    strong one positions over 1."""
    weak, gap = [], []
    for record in records:
        if ANCHOR_WEAK not in record.outcomes or ANCHOR_STRONG not in record.outcomes:
            continue
        scores = model.scores(RequestFeatures.from_prompt(record.prompt))
        w, s = scores.per_model[ANCHOR_WEAK], scores.per_model[ANCHOR_STRONG]
        weak.append(w)
        gap.append(max(s - w, 0.0))
    if not weak:
        raise ValueError("no record has outcomes for both anchor models")
    w_arr, g_arr = np.asarray(weak), np.asarray(gap)

    def mean_success(position: float) -> float:
        return float(np.mean(1.0 / (1.0 + np.exp(-(w_arr + position * g_arr)))))

    positions = []
    for prior in priors:
        low, high = -20.0, 20.0
        for _ in range(40):  # bisection: the mean rises with the position
            mid = (low + high) / 2
            low, high = (mid, high) if mean_success(mid) < prior else (low, mid)
        positions.append(round((low + high) / 2, 2))
    return tuple(positions)

"""The trained complexity model: artefact format and the (numpy-only) scoring of one request.

The model is a multi-task logistic regression in the spirit of item response theory. For a
request with feature vector ``x`` and a model ``m`` the predicted probability of a good answer
is ``sigmoid(b_m + x . (w + u_m))``:

* ``w`` is shared by every model: ``-x . w`` is the request's difficulty (the "item"), and it
  alone predicts success for a model the training data never saw, from that model's quality
  prior: ``sigmoid(logit(prior) + x . w - median_train(x . w))``.
* ``b_m`` is the model's ability; ``u_m`` (more strongly regularised) its strengths and
  weaknesses, e.g. a code model on code prompts.

``x`` is a binary bag of word uni/bigrams from a fixed vocabulary (scaled by 1/sqrt(count)),
followed by the standardised dense features of ``features.DENSE_FEATURES``.

The artefact is a zip holding ``meta.json`` (vocabulary, calibration tables, training
provenance) and ``weights.npy`` (float32, rows = vocabulary + dense + bias, columns = shared
+ one per known model). Files are written with fixed timestamps so that the same training run
produces byte-identical artefacts.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from routing.complexity.features import DENSE_FEATURES, RequestFeatures

ARTEFACT_VERSION = 2
DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "routing"
DEFAULT_ARTEFACT = DATA_DIR / "complexity_model.zip"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class ArtefactError(ValueError):
    """The model artefact is missing or not one this code can read."""


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


@dataclass(frozen=True, slots=True)
class Scores:
    """Raw model output for one request: the shared logit and one logit per known model."""

    shared: float
    per_model: dict[str, float]


class ComplexityModel:
    def __init__(
        self, meta: dict[str, Any], weights: np.ndarray, cluster_map: np.ndarray | None = None
    ) -> None:
        self.meta = meta
        self.models: list[str] = list(meta["models"])
        vocab: list[str] = meta["vocab"]
        self.vocab = {gram: i for i, gram in enumerate(vocab)}
        n_vocab = len(vocab)
        n_dense = len(meta["dense_names"])
        if tuple(meta["dense_names"]) != DENSE_FEATURES:
            raise ArtefactError("artefact was trained on different dense features; retrain it")
        # Topic clusters: each prompt falls in the cluster whose column of ``cluster_map``
        # (vocabulary x clusters) scores its n-grams highest; that cluster has its own offset
        # and its own dense-feature weights (rows after the dense ones).
        self.n_clusters = int(meta.get("clusters", 0))
        n_rows = n_vocab + n_dense + self.n_clusters * (1 + n_dense) + 1
        if weights.shape != (n_rows, len(self.models) + 1):
            raise ArtefactError(f"weights shape {weights.shape} does not match the metadata")
        if self.n_clusters and (
            cluster_map is None or cluster_map.shape != (n_vocab, self.n_clusters)
        ):
            raise ArtefactError("cluster map missing or not matching the metadata")
        self.cluster_map = (
            np.asarray(cluster_map, dtype=np.float64) if self.n_clusters else np.zeros((0, 0))
        )
        self.weights = weights.astype(np.float64)
        self.vocab_weights = self.weights[:n_vocab]
        self.dense_weights = self.weights[n_vocab : n_vocab + n_dense]
        start = n_vocab + n_dense
        self.cluster_bias = self.weights[start : start + self.n_clusters]
        start += self.n_clusters
        self.cluster_dense = self.weights[start : start + self.n_clusters * n_dense].reshape(
            self.n_clusters, n_dense, self.weights.shape[1]
        )
        self.bias = self.weights[-1]
        shape = (self.n_clusters, n_dense)
        self.cluster_low = np.asarray(meta.get("cluster_dense_low", []), dtype=np.float64)
        self.cluster_high = np.asarray(meta.get("cluster_dense_high", []), dtype=np.float64)
        self.cluster_low = self.cluster_low.reshape(shape)
        self.cluster_high = self.cluster_high.reshape(shape)
        # One gather serves the n-gram weights and the cluster scores: columns = the
        # per-model weight columns, then the cluster map's.
        self.vocab_table = (
            np.hstack([self.vocab_weights, self.cluster_map])
            if self.n_clusters
            else self.vocab_weights
        )
        self.dense_mean = np.asarray(meta["dense_mean"], dtype=np.float64)
        self.dense_scale = np.asarray(meta["dense_scale"], dtype=np.float64)
        self.shared_median = float(meta["shared_median"])
        # Quantiles of the shared logit over the training prompts (ascending), for difficulty.
        self.shared_quantiles = np.asarray(meta["shared_quantiles"], dtype=np.float64)
        # willingness grid -> cost weight lambda (descending; the first is +inf).
        self.lambda_grid = [math.inf if v is None else float(v) for v in meta["lambda_grid"]]
        self.tier_priors: list[float] = [float(v) for v in meta["tier_priors"]]
        self.model_index = {name: i + 1 for i, name in enumerate(self.models)}

    # ------------------------------------------------------------------ scoring

    def vocab_ids(self, features: RequestFeatures) -> list[int]:
        get = self.vocab.get
        ids = {get(gram, -1) for gram in features.ngrams}
        ids.discard(-1)
        return sorted(ids)

    def cluster(self, ids: list[int]) -> int | None:
        """The prompt's topic cluster (None without clusters or known n-grams)."""
        if not self.n_clusters or not ids:
            return None
        return int(np.argmax(self.cluster_map[ids].sum(axis=0)))

    def scores(self, features: RequestFeatures) -> Scores:
        ids = self.vocab_ids(features)
        dense = (np.asarray(features.dense, dtype=np.float64) - self.dense_mean) / self.dense_scale
        if not ids:
            out = dense @ self.dense_weights + self.bias
        else:
            summed = self.vocab_table[ids].sum(axis=0)
            n_out = self.bias.shape[0]
            out = self.bias + summed[:n_out] / math.sqrt(len(ids))
            if self.n_clusters:
                # same argmax as ``cluster``: the cluster columns summed in the same order
                k = int(np.argmax(summed[n_out:]))
                # the cluster's dense slopes only inside the range its training prompts span
                inside = np.minimum(np.maximum(dense, self.cluster_low[k]), self.cluster_high[k])
                out = (
                    out
                    + self.cluster_bias[k]
                    + dense @ self.dense_weights
                    + inside @ self.cluster_dense[k]
                )
            else:
                out = out + dense @ self.dense_weights
        shared = float(out[0])
        per_model = {name: shared + float(out[i]) for name, i in self.model_index.items()}
        return Scores(shared=shared, per_model=per_model)

    def difficulty(self, shared: float) -> float:
        """1 - the percentile of the shared logit among training prompts (0 easy, 1 hard)."""
        q = self.shared_quantiles
        position = float(np.interp(shared, q, np.linspace(0.0, 1.0, len(q))))
        return round(1.0 - position, 6)

    def unknown_model_logit(self, shared: float, quality_prior: float) -> float:
        return logit(quality_prior) + shared - self.shared_median

    def cost_weight(self, willingness: float) -> float:
        """Lambda for a willingness in [0, 1]: +inf at 0 (cheapest), 0 at 1 (best quality)."""
        if not 0.0 <= willingness <= 1.0 or math.isnan(willingness):
            raise ValueError(f"willingness must be between 0 and 1, got {willingness!r}")
        grid = self.lambda_grid
        steps = len(grid) - 1
        position = willingness * steps
        low = int(position)
        if low >= steps:
            return grid[-1]
        frac = position - low
        a, b = grid[low], grid[low + 1]
        if math.isinf(a):
            return a if frac == 0.0 else b / frac
        return a + (b - a) * frac

    # ------------------------------------------------------------------ artefact I/O

    def to_bytes(self) -> bytes:
        clusters = self.cluster_map if self.n_clusters else None
        return artefact_bytes(self.meta, self.weights.astype(np.float32), clusters)


def _npy(array: np.ndarray, dtype: type) -> bytes:
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(array, dtype=dtype), allow_pickle=False)
    return out.getvalue()


def artefact_bytes(
    meta: dict[str, Any], weights: np.ndarray, cluster_map: np.ndarray | None = None
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        info = zipfile.ZipInfo("meta.json", date_time=_ZIP_DATE)
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, json.dumps(meta, sort_keys=True, separators=(",", ":")))
        # weights float32; the cluster map float16 (it only decides an argmax; training
        # assigns clusters with the same rounded values)
        arrays: list[tuple[str, np.ndarray, type]] = [("weights.npy", weights, np.float32)]
        if cluster_map is not None:
            arrays.append(("clusters.npy", cluster_map, np.float16))
        for name, array, dtype in arrays:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, _npy(array, dtype))
    return buffer.getvalue()


def load_model(path: str | Path | None = None) -> ComplexityModel:
    path = Path(path) if path is not None else DEFAULT_ARTEFACT
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("meta.json"))
            weights = np.load(io.BytesIO(zf.read("weights.npy")), allow_pickle=False)
            cluster_map = (
                np.load(io.BytesIO(zf.read("clusters.npy")), allow_pickle=False)
                if "clusters.npy" in zf.namelist()
                else None
            )
    except FileNotFoundError as exc:
        raise ArtefactError(f"{path}: no model artefact (run manage.py routing_train)") from exc
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ArtefactError(f"{path}: not a complexity model artefact ({exc})") from exc
    if meta.get("version") != ARTEFACT_VERSION:
        raise ArtefactError(f"{path}: artefact version {meta.get('version')!r} is not supported")
    return ComplexityModel(meta, weights, cluster_map)


@lru_cache(maxsize=1)
def default_model() -> ComplexityModel:
    """The bundled artefact, loaded once per process."""
    return load_model(DEFAULT_ARTEFACT)

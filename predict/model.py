"""The length model: a scikit-learn pipeline from prompt to log output-length quantiles.

``Pipeline([features, LengthRegressor])`` where :class:`LengthRegressor` is a small stack:

1. a ridge regression on the full sparse TF-IDF features, whose out-of-fold predictions become one
   input of the booster (linear models use rare n-grams well, boosted trees do not);
2. a truncated SVD of the same features (the reduced TF-IDF; columns seen in at least two
   training prompts);
3. one ``HistGradientBoostingRegressor`` with quantile loss per quantile (0.5 and 0.9 by default)
   on ``[prompt statistics, SVD components, ridge prediction]``.

The target is ``log(output tokens)``; a predictor returns token counts. The p50/p90 pair feeds
:meth:`lapsd.replay.estimate.LengthPrediction.from_quantiles`, so schedulers get a log-normal belief
and a conditional remaining length once a request outlives its median.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.decomposition import TruncatedSVD
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from threadpoolctl import threadpool_limits

from lapsd.predict.features import N_STATS, build_features, log_chars, to_frame
from lapsd.replay.estimate import LengthPrediction

QUANTILES = (0.5, 0.9)


def _row_groups(X: sp.csr_matrix) -> np.ndarray:
    """Group ids of a CSR matrix's rows: equal rows (the same prompt) share an id."""
    ids: dict[bytes, int] = {}
    out = np.empty(X.shape[0], dtype=np.int64)
    for i in range(X.shape[0]):
        lo, hi = X.indptr[i], X.indptr[i + 1]
        key = X.indices[lo:hi].tobytes() + X.data[lo:hi].tobytes()
        out[i] = ids.setdefault(key, len(ids))
    return out


class LengthRegressor(RegressorMixin, BaseEstimator):
    """Stacked ridge + SVD + quantile gradient boosting on log length (module docstring).

    Parameters
    ----------
    quantiles
        Quantiles to model, increasing; predictions are made monotone across them.
    n_components
        SVD components of the sparse features (capped by the data size).
    n_dense
        Leading feature columns passed to the booster unreduced (the prompt statistics).
    ridge_alpha
        Ridge regularisation.
    inner_folds
        Folds for the ridge's out-of-fold predictions, grouped by identical feature rows so that
        a prompt answered by several models never informs its own out-of-fold prediction.
    max_iter, learning_rate, max_leaf_nodes, min_samples_leaf
        Booster settings.
    random_state
        Seed of the SVD, the folds and the booster.
    omp_threads
        OpenMP threads for the booster (``None``: the library default). One by default: on a few
        thousand rows, thread start-up and contention cost more than they gain (measured 0.4 s
        single-threaded against 8.7 s with the default on a 2-core machine for 300 rows).
    """

    def __init__(self, quantiles: Sequence[float] = QUANTILES, n_components: int = 128,
                 n_dense: int = N_STATS, ridge_alpha: float = 1.0, inner_folds: int = 5,
                 max_iter: int = 200, learning_rate: float = 0.05, max_leaf_nodes: int = 15,
                 min_samples_leaf: int = 20, random_state: int = 0,
                 omp_threads: int | None = 1) -> None:
        self.quantiles = quantiles
        self.n_components = n_components
        self.n_dense = n_dense
        self.ridge_alpha = ridge_alpha
        self.inner_folds = inner_folds
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state
        self.omp_threads = omp_threads

    def _design(self, X: sp.csr_matrix, ridge_pred: np.ndarray) -> np.ndarray:
        dense = X[:, : self.n_dense].toarray()
        reduced = self.svd_.transform(X[:, self.svd_columns_])
        return np.hstack([dense, reduced, ridge_pred[:, None]])

    def fit(self, X: Any, y: np.ndarray) -> LengthRegressor:
        """Fit the stack on features ``X`` and log lengths ``y``."""
        with threadpool_limits(self.omp_threads, user_api="openmp"):
            return self._fit(X, y)

    def _fit(self, X: Any, y: np.ndarray) -> LengthRegressor:
        X = sp.csr_matrix(X)
        y = np.asarray(y, dtype=np.float64)
        groups = _row_groups(X)
        folds = GroupKFold(min(self.inner_folds, int(groups.max()) + 1), shuffle=True,
                           random_state=self.random_state)
        oof = np.empty_like(y)
        for tr, te in folds.split(X, groups=groups):
            oof[te] = Ridge(alpha=self.ridge_alpha).fit(X[tr], y[tr]).predict(X[te])
        self.ridge_ = Ridge(alpha=self.ridge_alpha).fit(X, y)
        # The SVD sees only columns present in at least two rows: singletons carry no shared
        # structure, and the dense work of randomized SVD grows with the number of columns.
        self.svd_columns_ = np.flatnonzero(np.diff(X.tocsc().indptr) >= 2)
        if self.svd_columns_.size < 2:
            self.svd_columns_ = np.arange(X.shape[1])
        Xs = X[:, self.svd_columns_]
        k = max(1, min(self.n_components, Xs.shape[1] - 1, Xs.shape[0] - 1))
        self.svd_ = TruncatedSVD(k, random_state=self.random_state).fit(Xs)
        design = self._design(X, oof)
        self.boosters_ = [
            HistGradientBoostingRegressor(
                loss="quantile", quantile=q, max_iter=self.max_iter,
                learning_rate=self.learning_rate, max_leaf_nodes=self.max_leaf_nodes,
                min_samples_leaf=self.min_samples_leaf, early_stopping=False,
                random_state=self.random_state,
            ).fit(design, y)
            for q in self.quantiles
        ]
        return self

    def predict_quantiles(self, X: Any) -> np.ndarray:
        """Log-length quantiles, shape ``(n, len(quantiles))``, non-decreasing along a row."""
        X = sp.csr_matrix(X)
        design = self._design(X, self.ridge_.predict(X))
        with threadpool_limits(self.omp_threads, user_api="openmp"):
            out = np.column_stack([b.predict(design) for b in self.boosters_])
        return np.maximum.accumulate(out, axis=1)

    def predict(self, X: Any) -> np.ndarray:
        """The first quantile (the median by default) of log length."""
        return self.predict_quantiles(X)[:, 0]


def build_pipeline(*, embeddings: bool = False, **regressor: Any) -> Pipeline:
    """The untrained length pipeline; ``regressor`` overrides :class:`LengthRegressor` settings."""
    return Pipeline([("features", build_features(embeddings=embeddings)),
                     ("regressor", LengthRegressor(**regressor))])


def build_length_baseline() -> Pipeline:
    """The prompt-length-only baseline: log output length linear in log prompt characters."""
    return Pipeline([("length", FunctionTransformer(log_chars)), ("ridge", Ridge(alpha=1e-6))])


def log_target(output_tokens: np.ndarray) -> np.ndarray:
    """The regression target: ``log`` of output tokens (at least one token)."""
    return np.log(np.maximum(np.asarray(output_tokens, dtype=np.float64), 1.0))


@dataclass
class LengthPredictor:
    """A trained predictor: the pipeline, its baselines and its model card.

    Attributes
    ----------
    pipeline
        Trained :func:`build_pipeline` (input :func:`lapsd.predict.features.to_frame`).
    length_baseline
        Trained :func:`build_length_baseline` (input: the prompt column), kept so that
        ``lapsd predict eval`` compares against the baselines on any data.
    train_mean_tokens
        Mean output tokens of the training data (the mean baseline).
    card
        The model card (see :mod:`lapsd.predict.persist`).
    """

    pipeline: Pipeline
    length_baseline: Pipeline
    train_mean_tokens: float
    card: dict[str, Any] = field(default_factory=dict)

    def predict_lengths(self, prompts: Sequence[str],
                        categories: Sequence[str | None] | None = None,
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Predicted median and 0.9 quantile of output tokens, each of shape ``(n,)``."""
        if len(prompts) == 0:
            return np.empty(0), np.empty(0)
        q = np.exp(self.pipeline[-1].predict_quantiles(
            self.pipeline[:-1].transform(to_frame(prompts, categories))))
        return np.maximum(q[:, 0], 1.0), np.maximum(q[:, -1], 1.0)

    def baseline_lengths(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """Predictions of the two baselines (``mean`` and ``length``) for ``prompts``."""
        frame = to_frame(prompts)
        return {"mean": np.full(len(prompts), self.train_mean_tokens),
                "length": np.exp(self.length_baseline.predict(frame[:, 0]))}

    def predictions(self, prompts: Sequence[str],
                    categories: Sequence[str | None] | None = None) -> list[LengthPrediction]:
        """Log-normal beliefs for the schedulers (:class:`~lapsd.replay.estimate.LengthPrediction`).

        One per prompt.
        """
        p50, p90 = self.predict_lengths(prompts, categories)
        return [LengthPrediction.from_quantiles(a, b) for a, b in zip(p50, p90, strict=True)]


def fit_predictor(prompts: Sequence[str], categories: Sequence[str | None] | None,
                  output_tokens: np.ndarray, *, embeddings: bool = False,
                  card: dict[str, Any] | None = None, **regressor: Any) -> LengthPredictor:
    """Fit the pipeline and both baselines on one training set."""
    y = log_target(output_tokens)
    frame = to_frame(prompts, categories)
    pipeline = build_pipeline(embeddings=embeddings, **regressor).fit(frame, y)
    baseline = build_length_baseline().fit(frame[:, 0], y)
    return LengthPredictor(pipeline, baseline, float(np.mean(output_tokens)), dict(card or {}))

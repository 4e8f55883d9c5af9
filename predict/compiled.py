"""A fitted probe pipeline as plain arrays, for predictions one request at a time.

A live server asks the probe for one request's belief after every few rounds
(:class:`~lapsd.predict.probe.RunningBelief`); scikit-learn's ``predict`` spends about a
millisecond per call validating its input in each step of the pipeline (3-4 ms for the probe's
pipelines, measured), as much as the speculative-decoding round it follows. The fitted numbers
are all that is needed: :class:`CompiledPipeline` keeps the standardisation, the PCA projection
and the head (a ridge's coefficients, or the boosted trees' nodes walked by a numba kernel)
and predicts with numpy, about 20-60 µs a row. The probe predicts with it everywhere, for a
whole trace as for one request, so a server's beliefs and ``lapsd predict apply``'s are the
same numbers. It reads the fitted attributes of the estimators the probe builds
(``StandardScaler``, ``PCA`` without whitening, ``Ridge``,
``HistGradientBoostingRegressor`` on numerical features); the tests check it against
``Pipeline.predict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from lapsd.errors import LapsdError
from lapsd.jit import njit


@dataclass(frozen=True)
class _Block:
    """Columns standardised, then (with ``components``) projected.

    ``((x - mean) / scale - center) @ components``.
    """

    columns: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    center: np.ndarray | None = None
    components: np.ndarray | None = None

    def apply(self, X: np.ndarray) -> np.ndarray:
        z = (X[:, self.columns] - self.mean) / self.scale
        if self.components is None:
            return z
        return (z - self.center) @ self.components


@dataclass(frozen=True)
class _Forest:
    """Boosted regression trees, their nodes stacked (children indices made absolute)."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf: np.ndarray
    missing_left: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    baseline: float


@njit(cache=True)
def _walk(X: np.ndarray, f: np.ndarray, thr: np.ndarray, left: np.ndarray, right: np.ndarray,
          leaf: np.ndarray, missing_left: np.ndarray, value: np.ndarray, roots: np.ndarray,
          baseline: float) -> np.ndarray:
    """Each row's leaf values summed over the trees, plus the baseline.

    Numerical splits as scikit-learn walks them: ``x <= threshold`` goes left, a missing
    value where the split says.
    """
    out = np.full(X.shape[0], baseline)
    for i in range(X.shape[0]):
        for root in roots:
            node = root
            while not leaf[node]:
                x = X[i, f[node]]
                go_left = missing_left[node] if np.isnan(x) else x <= thr[node]
                node = left[node] if go_left else right[node]
            out[i] += value[node]
    return out


@dataclass(frozen=True)
class CompiledPipeline:
    """A probe's ``Pipeline([("features", ColumnTransformer), ("head", ...)])`` as arrays."""

    blocks: tuple[_Block, ...]
    coef: np.ndarray | None
    intercept: float
    forest: _Forest | None

    def predict(self, X: np.ndarray) -> np.ndarray:
        """What ``Pipeline.predict(X)`` gives, up to floating-point rounding."""
        Z = np.hstack([b.apply(np.asarray(X, dtype=np.float64)) for b in self.blocks])
        if self.forest is None:
            assert self.coef is not None
            return Z @ self.coef + self.intercept
        t = self.forest
        return _walk(Z, t.feature, t.threshold, t.left, t.right, t.leaf, t.missing_left,
                     t.value, t.roots, t.baseline)


def _block(transformer: Any, columns: Any) -> _Block:
    steps = transformer.steps if isinstance(transformer, Pipeline) else [("scale", transformer)]
    scaler = steps[0][1]
    pca = steps[1][1] if len(steps) > 1 else None
    if not isinstance(scaler, StandardScaler) or len(steps) > 2 or (
            pca is not None and (not isinstance(pca, PCA) or pca.whiten)):
        raise LapsdError(f"cannot compile the probe's step {transformer!r}: expected a "
                         "StandardScaler, optionally then a PCA without whitening")
    cols = np.asarray(columns, dtype=np.int64)
    mean = np.zeros(cols.size) if scaler.mean_ is None else np.asarray(scaler.mean_, np.float64)
    scale = np.ones(cols.size) if scaler.scale_ is None else np.asarray(scaler.scale_,
                                                                         np.float64)
    if pca is None:
        return _Block(cols, mean, scale)
    return _Block(cols, mean, scale, np.asarray(pca.mean_, np.float64),
                  np.ascontiguousarray(np.asarray(pca.components_, np.float64).T))


def _forest(head: HistGradientBoostingRegressor) -> _Forest:
    trees = [p[0].nodes for p in head._predictors]  # noqa: SLF001 (the fitted trees)
    if any(t["is_categorical"].any() for t in trees):
        raise LapsdError("cannot compile a boosted head with categorical splits")
    offsets = np.cumsum([0] + [t.size for t in trees[:-1]]).astype(np.int64)
    nodes = np.concatenate(trees)
    shift = np.repeat(offsets, [t.size for t in trees])
    return _Forest(
        nodes["feature_idx"].astype(np.int64), nodes["num_threshold"].astype(np.float64),
        nodes["left"].astype(np.int64) + shift, nodes["right"].astype(np.int64) + shift,
        nodes["is_leaf"].astype(np.bool_), nodes["missing_go_to_left"].astype(np.bool_),
        nodes["value"].astype(np.float64), offsets,
        float(np.ravel(head._baseline_prediction)[0]))  # noqa: SLF001


def compile_pipeline(pipeline: Pipeline) -> CompiledPipeline:
    """The arrays of a fitted probe pipeline (module docstring).

    Raises
    ------
    LapsdError
        For a pipeline not shaped as the probe builds them.
    """
    features, head = pipeline.named_steps["features"], pipeline.named_steps["head"]
    blocks = tuple(_block(t, cols) for _, t, cols in features.transformers_
                   if t != "drop" and len(cols))
    if isinstance(head, Ridge):
        return CompiledPipeline(blocks, np.asarray(head.coef_, np.float64).ravel(),
                                float(np.ravel(head.intercept_)[0]), None)
    if isinstance(head, HistGradientBoostingRegressor):
        return CompiledPipeline(blocks, None, 0.0, _forest(head))
    raise LapsdError(f"cannot compile the probe's head {head!r}: expected Ridge or "
                     "HistGradientBoostingRegressor")

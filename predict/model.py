"""The length model: prompt -> log output length, pooled over target models.

:class:`LengthModel` learns one prompt score ``f(prompt)`` from every target model's answers
at once: each model ``m`` has an offset ``b_m`` (its verbosity), fitted by alternating
between the booster on ``log L - b_m`` and the offsets as mean residuals. A user with few
answers of their own model so still gets the ranking learnt from all models; the per-target
calibration (:mod:`lapsd.predict.calibrate`) then adapts offset and spread to their model.

The score is a stack:

1. each high-dimensional text representation (the static embedding and, when on, hashed
   TF-IDF; :mod:`lapsd.predict.features`) is reduced to one ridge-regression score, whose
   out-of-fold values (folds grouped by prompt text, so a prompt answered by several models
   never informs its own score) become a booster input;
2. ``HistGradientBoostingRegressor`` (squared loss on log length) on the instruction cues
   (:mod:`lapsd.predict.cues`) and those scores.

A regression objective ranked unseen prompt sets better than LightGBM's LambdaRank on the
same inputs (``bench/results/predict_*.txt``), so the booster regresses.

:class:`LengthPredictor` bundles the model, the calibration, the re-predictor
(:mod:`lapsd.predict.continuation`), the two baselines and the model card.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from threadpoolctl import threadpool_limits

from lapsd.predict.calibrate import Calibration
from lapsd.predict.cues import cue_features
from lapsd.predict.features import build_tfidf, log_chars, static_embeddings
from lapsd.replay.estimate import LengthPrediction

_Z90 = 1.2815515655446004  # standard normal 0.9 quantile


def unique_prompts(prompts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct prompts and, per input, the index of its distinct prompt."""
    ids: dict[str, int] = {}
    inverse = np.fromiter((ids.setdefault(p, len(ids)) for p in prompts), np.int64,
                          len(prompts))
    return list(ids), inverse


class LengthModel(RegressorMixin, BaseEstimator):
    """Pooled prompt -> log-length model with per-target-model offsets (module docstring).

    Parameters
    ----------
    embeddings
        Use the static sentence embedding (needs the ``embed`` extra).
    tfidf
        Use hashed word TF-IDF.
    ridge_alpha
        Ridge regularisation of the text scores.
    inner_folds
        Folds of the text scores' out-of-fold values (grouped by prompt).
    offset_rounds
        Alternations between booster and per-model offsets.
    max_iter, learning_rate, max_leaf_nodes, min_samples_leaf
        Booster settings.
    random_state
        Seed of the folds and the booster.
    omp_threads
        Threads of the booster and of BLAS (one by default: on a few thousand rows, thread
        start-up and contention cost more than they gain; a 1,000 x 384 ridge took 0.52 s with
        OpenBLAS's 2 threads and 0.07 s with one on the 2-core development machine).
    """

    def __init__(self, embeddings: bool = False, tfidf: bool = False,
                 ridge_alpha: float = 3.0, inner_folds: int = 5, offset_rounds: int = 2,
                 max_iter: int = 200, learning_rate: float = 0.05, max_leaf_nodes: int = 15,
                 min_samples_leaf: int = 20, random_state: int = 0,
                 omp_threads: int | None = 1) -> None:
        self.embeddings = embeddings
        self.tfidf = tfidf
        self.ridge_alpha = ridge_alpha
        self.inner_folds = inner_folds
        self.offset_rounds = offset_rounds
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state
        self.omp_threads = omp_threads

    def _text_blocks(self, prompts: list[str], *, fit: bool) -> list[Any]:
        """The text representations of distinct prompts (embedding, TF-IDF), as enabled."""
        blocks: list[Any] = []
        if self.embeddings:
            blocks.append(static_embeddings(prompts))
        if self.tfidf:
            if fit:
                self.tfidf_ = build_tfidf().fit(prompts)
            blocks.append(sp.csr_matrix(self.tfidf_.transform(prompts)))
        return blocks

    def _ridge(self, X: Any, y: np.ndarray, weight: np.ndarray) -> Ridge:
        return Ridge(alpha=self.ridge_alpha).fit(X, y, sample_weight=weight)

    def fit(self, prompts: Sequence[str], y: np.ndarray,
            models: Sequence[str] | None = None) -> LengthModel:
        """Fit on prompts, log lengths ``y`` and the target model of each example."""
        y = np.asarray(y, dtype=np.float64)
        names = np.asarray(models if models is not None else ["model"] * len(y), dtype=object)
        uniq, inv = unique_prompts(prompts)
        cues = cue_features(uniq)[inv]
        blocks = self._text_blocks(uniq, fit=True)
        # The ridges fit distinct prompts (mean target, weighted by count): the same solution
        # as on every row, on 805 rows instead of 8,050 for alpaca_eval's ten models.
        counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
        folds = (list(KFold(min(self.inner_folds, len(uniq)), shuffle=True,
                            random_state=self.random_state).split(uniq))
                 if blocks and len(uniq) >= 2 else [])
        self.offsets_ = {str(m): 0.0 for m in sorted(set(names))}
        with threadpool_limits(self.omp_threads):
            for _ in range(max(1, self.offset_rounds)):
                target = y - np.array([self.offsets_[m] for m in names])
                mean_target = np.bincount(inv, weights=target, minlength=len(uniq)) / counts
                scores = []
                for block in blocks:
                    oof = np.zeros(len(uniq))
                    for tr, te in folds:
                        oof[te] = self._ridge(block[tr], mean_target[tr], counts[tr]).predict(
                            block[te])
                    scores.append(oof[inv])
                design = np.column_stack([cues, *scores])
                self.booster_ = HistGradientBoostingRegressor(
                    max_iter=self.max_iter, learning_rate=self.learning_rate,
                    max_leaf_nodes=self.max_leaf_nodes, min_samples_leaf=self.min_samples_leaf,
                    early_stopping=False, random_state=self.random_state,
                ).fit(design, target)
                resid = y - self.booster_.predict(design)
                self.offsets_ = {m: float(resid[names == m].mean()) for m in self.offsets_}
            self.ridges_ = [self._ridge(block, mean_target, counts) for block in blocks]
        return self

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        """``f(prompt)``: log length before any target model's offset, shape ``(n,)``."""
        if len(prompts) == 0:
            return np.zeros(0)
        uniq, inv = unique_prompts(prompts)
        blocks = self._text_blocks(uniq, fit=False)
        with threadpool_limits(self.omp_threads):
            design = np.column_stack([cue_features(uniq),
                                      *(r.predict(b) for r, b in zip(self.ridges_, blocks,
                                                                     strict=True))])
            return self.booster_.predict(design)[inv]

    def predict(self, prompts: Sequence[str]) -> np.ndarray:
        """Log length with the mean offset of the training models (sklearn's interface)."""
        return self.score(prompts) + float(np.mean(list(self.offsets_.values())))


def build_length_baseline() -> Pipeline:
    """The prompt-length-only baseline: log output length linear in log prompt characters."""
    return Pipeline([("length", FunctionTransformer(log_chars)), ("ridge", Ridge(alpha=1e-6))])


def log_target(output_tokens: np.ndarray) -> np.ndarray:
    """The regression target: ``log`` of output tokens (at least one token)."""
    return np.log(np.maximum(np.asarray(output_tokens, dtype=np.float64), 1.0))


@dataclass
class LengthPredictor:
    """A trained predictor: model, calibration, re-predictor, baselines and model card.

    Attributes
    ----------
    model
        The trained :class:`LengthModel`.
    calibration
        Offsets and spreads per target model (:class:`~lapsd.predict.calibrate.Calibration`).
    continuation
        The re-predictor (:class:`lapsd.predict.continuation.ContinuationModel`), or ``None``
        when the training data had no response text.
    length_baseline
        Trained :func:`build_length_baseline` (input: prompts), kept so that
        ``lapsd predict eval`` compares against the baselines on any data.
    train_mean_tokens
        Mean output tokens of the training data (the mean baseline).
    card
        The model card (see :mod:`lapsd.predict.persist`); ``card["target_model"]`` is the
        model beliefs are calibrated for when a caller names none.
    """

    model: LengthModel
    calibration: Calibration
    continuation: Any
    length_baseline: Pipeline
    train_mean_tokens: float
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def default_target(self) -> str | None:
        """The target model of the card (``None``: pooled over the training models)."""
        return self.card.get("target_model")

    def log_beliefs(self, prompts: Sequence[str], target_model: str | None = None, *,
                    strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Log median and sigma of each prompt's length for ``target_model``.

        ``None`` means the card's target model. A model without a calibration of its own gets
        the pooled one, or an error with ``strict``.
        """
        offset, sigma = self.calibration.resolve(target_model or self.default_target,
                                                 strict=strict)
        mu = self.model.score(prompts) + offset
        return mu, np.full(mu.size, sigma)

    def predict_lengths(self, prompts: Sequence[str], target_model: str | None = None,
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Predicted median and 0.9 quantile of output tokens, each of shape ``(n,)``."""
        mu, sigma = self.log_beliefs(prompts, target_model)
        return np.maximum(np.exp(mu), 1.0), np.maximum(np.exp(mu + _Z90 * sigma), 1.0)

    def baseline_lengths(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """Predictions of the two baselines (``mean`` and ``length``) for ``prompts``."""
        return {"mean": np.full(len(prompts), self.train_mean_tokens),
                "length": np.exp(self.length_baseline.predict(list(prompts)))}

    def predictions(self, prompts: Sequence[str], target_model: str | None = None, *,
                    cap: float = math.inf, strict: bool = False) -> list[LengthPrediction]:
        """Capped log-normal beliefs for the schedulers, one per prompt.

        ``cap`` is the server's ``max_new_tokens`` (``inf`` when unknown).
        """
        mu, sigma = self.log_beliefs(prompts, target_model, strict=strict)
        return [LengthPrediction(max(math.exp(m), 1.0), float(s), cap)
                for m, s in zip(mu.tolist(), sigma.tolist(), strict=True)]

"""Re-prediction while a request runs: the total length given the prompt, ``g`` and the text so far.

After ``g`` tokens a request is known to be longer than ``g``, and its text says more: an open
numbered list whose items the prompt counted, an open code block, a closing phrase ("In
conclusion", "I hope this helps"), how many paragraphs are out. :class:`ContinuationModel`
predicts ``log L`` for requests with ``L > g`` from

* the prompt-only belief (log median ``mu`` and ``sigma``, calibrated for the target model) and
  the log of its conditional mean given ``L > g``;
* ``log g`` and ``log g - mu`` (how far past its median the request is);
* features of the partial text (:data:`TEXT_NAMES`), ``NaN`` when the text is unknown (a trace
  without responses): the booster then follows its missing-value branches, which are trained on
  rows whose text was hidden.

Its beliefs are :class:`~lapsd.replay.estimate.LengthPrediction` over the *total* length with a
spread calibrated per band of ``g`` (split-conformal on out-of-fold residuals), so a scheduler
conditions them on ``L > g`` as it does the prompt-only belief.

Training rows are cuts of answers at ``g`` tokens (:data:`CUTS` below each answer's length):
traces with per-round ``response_chars`` are cut exactly at the round that reached ``g``;
answers without rounds (alpaca_eval, MT-bench) are cut in proportion to tokens (``g / L`` of
the characters), an estimate recorded in the model card.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import GroupKFold
from threadpoolctl import threadpool_limits

from lapsd.predict.calibrate import conformal_sigma
from lapsd.predict.data import LengthData
from lapsd.replay.lognormal import conditional_mean

#: Tokens generated at which training answers are cut.
CUTS = (8, 16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
#: Upper edges (tokens generated) of the bands with a spread of their own.
SIGMA_BANDS = (32, 64, 128, 256, 512)

_LIST_LINE = re.compile(r"^\s*(?:[-*•]|(\d{1,3})[.)])\s", re.MULTILINE)
_CLOSING = re.compile(
    r"\b(?:in conclusion|in summary|to summari[sz]e|overall|to sum up|in short|finally|"
    r"i hope (?:this|that|these)|hope this helps|let me know|feel free|good luck|"
    r"if you have any (?:other|more|further) questions|best regards|sincerely|thank you)\b",
    re.IGNORECASE)

#: Names of the partial-text features, in order.
TEXT_NAMES = ("chars_per_token", "log_lines", "paragraphs", "list_items", "largest_item",
              "in_list", "open_code", "code_blocks", "closing_phrase", "ends_sentence",
              "log_last_line", "headers", "items_left")
_N_TEXT = len(TEXT_NAMES)


def text_row(text: str, g: int, asked_items: float) -> list[float]:
    """The :data:`TEXT_NAMES` values of the first ``g`` tokens' text ``text``.

    ``asked_items`` is the number of items the prompt asked for (0 when it asked none).
    """
    lines = [x for x in text.split("\n") if x.strip()]
    numbers = [int(m) for m in _LIST_LINE.findall(text) if m]
    items = len(_LIST_LINE.findall(text))
    last = lines[-1] if lines else ""
    largest = max(numbers, default=0)
    fences = text.count("```")
    tail = text[-300:]
    return [
        len(text) / max(g, 1), np.log1p(len(lines)), float(text.count("\n\n")),
        float(items), float(largest), 1.0 if _LIST_LINE.match(last) else 0.0,
        float(fences % 2), float(fences // 2), 1.0 if _CLOSING.search(tail) else 0.0,
        1.0 if text.rstrip().endswith((".", "!", "?", ":")) else 0.0,
        np.log1p(len(last)), float(sum(x.lstrip().startswith("#") or x.rstrip().endswith(":")
                                       for x in lines)),
        asked_items - largest if asked_items > 0 else np.nan,
    ]


def text_features(texts: Sequence[str | None], generated: np.ndarray,
                  asked_items: np.ndarray) -> np.ndarray:
    """Partial-text features, shape ``(n, len(TEXT_NAMES))``; rows of unknown text are NaN."""
    out = np.full((len(texts), _N_TEXT), np.nan)
    for i, t in enumerate(texts):
        if t is not None:
            out[i] = text_row(t, int(generated[i]), float(asked_items[i]))
    return out


def band(generated: np.ndarray) -> np.ndarray:
    """The band of :data:`SIGMA_BANDS` of each ``generated`` (0: up to the first edge)."""
    return np.searchsorted(np.asarray(SIGMA_BANDS), generated, side="left")


def design(mu: np.ndarray, sigma: np.ndarray, generated: np.ndarray,
           text: np.ndarray) -> np.ndarray:
    """The re-predictor's input rows (see the module docstring)."""
    g = np.asarray(generated, dtype=np.float64)
    cond = np.array([conditional_mean(float(np.exp(m)), float(s), np.inf, float(x))
                     for m, s, x in zip(mu, sigma, g, strict=True)])
    return np.column_stack([mu, sigma, np.log1p(g), np.log1p(g) - mu, np.log(cond + g), text])


def cut_text(text: str, tokens: int, offsets: Any, g: int) -> str:
    """The text after ``g`` of the answer's ``tokens`` tokens (exact offsets when known)."""
    if offsets is not None:
        emitted, chars = offsets
        r = int(np.searchsorted(emitted, g, side="left"))
        return text[: int(chars[min(r, chars.size - 1)])]
    return text[: round(len(text) * g / tokens)]


def training_cuts(data: LengthData, asked_items: np.ndarray, hide_text: float = 0.3,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cuts of every answer with text: ``(example index, g, text features, log L)``.

    A share ``hide_text`` of the rows has its text features set to NaN (unknown text).
    """
    rng = np.random.default_rng(seed)
    rows, gs, texts = [], [], []
    for i, text in enumerate(data.responses):
        if text is None:
            continue
        total = int(data.output_tokens[i])
        for g in CUTS:
            if g >= total:
                break
            rows.append(i)
            gs.append(g)
            texts.append(cut_text(text, total, data.offsets[i], g))
    idx = np.array(rows, dtype=np.int64)
    g_arr = np.array(gs, dtype=np.int64)
    feats = text_features(texts, g_arr, asked_items[idx]) if rows else np.zeros((0, _N_TEXT))
    feats[rng.random(len(rows)) < hide_text] = np.nan
    return idx, g_arr, feats, np.log(data.output_tokens[idx].astype(np.float64))


class ContinuationModel(RegressorMixin, BaseEstimator):
    """Booster on (prompt belief, g, partial text) -> log total length, with banded spreads.

    Parameters
    ----------
    max_iter, learning_rate, max_leaf_nodes, min_samples_leaf
        Booster settings.
    random_state
        Seed of the folds and the booster.
    omp_threads
        Threads of the booster and of BLAS (see :class:`lapsd.predict.model.LengthModel`).
    """

    def __init__(self, max_iter: int = 200, learning_rate: float = 0.05,
                 max_leaf_nodes: int = 31, min_samples_leaf: int = 40, random_state: int = 0,
                 omp_threads: int | None = 1) -> None:
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state
        self.omp_threads = omp_threads

    def _booster(self) -> HistGradientBoostingRegressor:
        return HistGradientBoostingRegressor(
            max_iter=self.max_iter, learning_rate=self.learning_rate,
            max_leaf_nodes=self.max_leaf_nodes, min_samples_leaf=self.min_samples_leaf,
            early_stopping=False, random_state=self.random_state)

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray,
            generated: np.ndarray) -> ContinuationModel:
        """Fit on :func:`design` rows; spreads from 2-fold out-of-fold residuals by group."""
        y = np.asarray(y, dtype=np.float64)
        oof = np.empty_like(y)
        with threadpool_limits(self.omp_threads):
            n_groups = np.unique(groups).size
            if n_groups >= 2:
                for tr, te in GroupKFold(2, shuffle=True, random_state=self.random_state
                                         ).split(X, groups=groups):
                    oof[te] = self._booster().fit(X[tr], y[tr]).predict(X[te])
            self.booster_ = self._booster().fit(X, y)
            if n_groups < 2:
                oof = self.booster_.predict(X)
        resid = y - oof
        bands = band(generated)
        pooled = conformal_sigma(resid - resid.mean())
        self.sigmas_ = [conformal_sigma(resid[bands == b]) if np.sum(bands == b) >= 30 else pooled
                        for b in range(len(SIGMA_BANDS) + 1)]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Log median of the total length."""
        with threadpool_limits(self.omp_threads):
            return self.booster_.predict(X)

    def sigma(self, generated: np.ndarray) -> np.ndarray:
        """The calibrated spread at ``generated`` tokens."""
        return np.asarray(self.sigmas_)[band(np.asarray(generated))]


def continuation_beliefs(model: ContinuationModel, mu: np.ndarray, sigma: np.ndarray,
                         generated: np.ndarray, texts: Sequence[str | None],
                         asked_items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log median and sigma of the total length of requests ``generated`` tokens in.

    ``mu``/``sigma`` are the prompt-only beliefs, ``texts`` the text so far (``None``:
    unknown), ``asked_items`` the items each prompt asked for (0: none). One batch.
    """
    g = np.asarray(generated, dtype=np.int64)
    X = design(np.asarray(mu), np.asarray(sigma), g, text_features(texts, g, asked_items))
    return model.predict(X), model.sigma(g)

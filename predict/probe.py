"""Length prediction from the target model's own hidden states: a probe (issue 22, section 3).

A trace collected with ``--states`` (:mod:`lapsd.replay.trace`'s states table) holds, per
request, the target's state at the prompt's last token and its mean over the prompt at a few
layers, and while decoding the state of every ``every``-th generated token at one layer.
:class:`ProbePredictor` reads them twice:

Admission
    ``log L`` from the prompt states (and, by default, the prompt's instruction cues,
    :mod:`lapsd.predict.cues`): standardised, projected by PCA (the states are highly
    redundant: a few hundred examples against thousands of dimensions), then a ridge or a
    gradient-boosting head.
Re-prediction after ``t`` generated tokens
    ``log (L - t)`` of requests still running at ``t`` (``L > t``) from the decode state at
    ``t`` (standardised, PCA), ``log t`` and the admission belief (its log median and the log
    of its conditional mean given ``L > t``). One model over every ``t``: the decode states of
    all ``t`` share one space, pooling gives it every row, and ``log t`` with the conditional
    prior lets it bend per ``t``; its spread is calibrated per band of ``t``
    (:data:`~lapsd.predict.continuation.SIGMA_BANDS`), where errors differ most.

Both heads are chosen by cross-validation among :data:`HEADS` on folds that hold out whole
prompt sources where there are enough (:func:`~lapsd.predict.split.source_groups`), on the
training data only. The same out-of-fold predictions calibrate the spreads (split-conformal,
:func:`~lapsd.predict.calibrate.conformal_sigma`), so intervals are sized for prompts unlike
the training ones; the admission model's out-of-fold beliefs are also what the re-predictor
trains on, so it learns how far to trust an admission belief fitted without that prompt.

Outputs that hit ``max_new_tokens`` (the trace's cap) are censored: ``L = cap`` only says
``X >= cap``. The heads train on ``log X`` imputed for them (its conditional mean under the
out-of-fold belief: one Buckley-James step), and calibration scores a censored example by how
far its capped 0.9 quantile falls short of the cap (it is covered exactly when that quantile
reaches it).

Beliefs are the policies' :class:`~lapsd.replay.estimate.LengthPrediction` over the total
length. A remaining-length belief ``R ~ LogNormal(m, s)`` at ``t`` becomes the total-length
log-normal whose conditional given ``L > t`` has the same median and 0.9 quantile of
``L - t`` (:func:`total_belief`), so a policy conditioning on ``L > t`` reads the probe's
remaining belief back.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.stats import norm
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from lapsd.errors import LapsdError
from lapsd.jit import njit
from lapsd.predict.calibrate import LEVEL, conformal_sigma
from lapsd.predict.compiled import CompiledPipeline, compile_pipeline
from lapsd.predict.continuation import SIGMA_BANDS, band
from lapsd.predict.cues import cue_features
from lapsd.predict.data import LengthData, check_prompts
from lapsd.predict.metrics import belief_metrics
from lapsd.predict.model import LengthPredictor
from lapsd.predict.persist import (
    PROBE_KIND,
    new_card,
    predictor_from_payload,
    read_payload,
    write_payload,
)
from lapsd.predict.split import (
    check_training,
    prompt_folds,
    prompt_groups,
    prompt_hashes,
    seen_prompts,
    source_groups,
)
from lapsd.replay.arrays import output_cap
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.lognormal import conditional_mean, log_ndtr, ndtri
from lapsd.replay.trace import Trace, TraceError, read_trace, trace_digest

#: Heads tried on the projected states: ``(name, ridge alpha)``, ``alpha None``: the booster.
HEADS: tuple[tuple[str, float | None], ...] = (
    ("ridge", 1.0), ("ridge", 10.0), ("ridge", 100.0), ("ridge", 1000.0), ("boost", None))
#: Principal components kept of the prompt states and of the decode states (fewer when the
#: training data has fewer examples).
COMPONENTS = 64
#: Keys of the states block (and the collector's target) a probe's inputs must match.
MATCHED = ("layers", "decode_layer", "hidden_size", "target")
#: Fewest examples a probe trains on.
MIN_EXAMPLES = 10
#: Generated tokens after which :func:`evaluate_probe` scores the remaining length.
REMAINING_AT = (64, 128)
#: Fewest residuals of a band of ``t`` for a spread of its own.
MIN_BAND = 30
#: Lowest log median of a belief (``exp`` of it is still a normal positive float64).
LOG_TINY = -700.0


# ----------------------------------------------------------------------------------- data
@dataclass
class StateData:
    """Requests of traces with hidden states, as arrays (one trace or several alike).

    Attributes
    ----------
    request_ids, prompts, categories, datasets, target_models
        One entry per request.
    output_tokens
        Output length in tokens (int64).
    prompt_states
        ``(n, 2 * layers * hidden)`` float32: per layer (ascending), the prompt's last-token
        state then its mean.
    decode_owner, decode_tokens, decode_states
        One row per decode state: the request's index, its generated tokens ``t``, the state
        ``(m, hidden)``.
    features
        What the states are (:data:`MATCHED` keys, ``every``, ``target_sha256``).
    cap
        The traces' ``max_new_tokens`` (``inf`` when unknown).
    sources
        ``{"path", "sha256"}`` of each trace read.
    """

    request_ids: list[str]
    prompts: list[str]
    categories: list[str | None]
    datasets: list[str | None]
    target_models: list[str | None]
    output_tokens: np.ndarray
    prompt_states: np.ndarray
    decode_owner: np.ndarray
    decode_tokens: np.ndarray
    decode_states: np.ndarray
    features: dict[str, Any]
    cap: float = math.inf
    sources: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        """The number of requests."""
        return len(self.request_ids)

    @property
    def censored(self) -> np.ndarray:
        """Requests stopped by the cap: their length is only known to be at least it."""
        return self.output_tokens >= self.cap

    def subset(self, index: Sequence[int] | np.ndarray) -> StateData:
        """The requests at ``index`` (in that order) with their decode states."""
        idx = np.asarray(index, dtype=np.int64)
        new = np.full(len(self), -1, dtype=np.int64)
        new[idx] = np.arange(idx.size)
        rows = np.flatnonzero(new[self.decode_owner] >= 0)
        rows = rows[np.argsort(new[self.decode_owner[rows]], kind="stable")]
        pick = idx.tolist()
        return StateData([self.request_ids[i] for i in pick], [self.prompts[i] for i in pick],
                         [self.categories[i] for i in pick], [self.datasets[i] for i in pick],
                         [self.target_models[i] for i in pick], self.output_tokens[idx],
                         self.prompt_states[idx], new[self.decode_owner[rows]],
                         self.decode_tokens[rows], self.decode_states[rows], self.features,
                         self.cap, self.sources)

    def length_data(self) -> LengthData:
        """The same requests as prompt-only training data (the prompt-only predictor's)."""
        return LengthData(list(self.prompts), list(self.categories), self.output_tokens,
                          [m or "unknown" for m in self.target_models],
                          prompt_sets=[d or "trace" for d in self.datasets])

    @staticmethod
    def concat(parts: Sequence[StateData]) -> StateData:
        """Several traces' requests as one; their states must be alike (:func:`check_features`)."""
        first = parts[0]
        for p in parts[1:]:
            check_features(first.features, p.features, "the first trace", "another trace")
        caps = {p.cap for p in parts}
        if len(caps) > 1:
            raise LapsdError(f"the traces have different max_new_tokens ({sorted(caps)}): a "
                             "probe trains on one cap; pass traces collected alike")
        owners, base = [], 0
        for p in parts:
            owners.append(p.decode_owner + base)
            base += len(p)
        return StateData(
            [x for p in parts for x in p.request_ids], [x for p in parts for x in p.prompts],
            [x for p in parts for x in p.categories], [x for p in parts for x in p.datasets],
            [x for p in parts for x in p.target_models],
            np.concatenate([p.output_tokens for p in parts]),
            np.concatenate([p.prompt_states for p in parts]), np.concatenate(owners),
            np.concatenate([p.decode_tokens for p in parts]),
            np.concatenate([p.decode_states for p in parts]), first.features, first.cap,
            [s for p in parts for s in p.sources])


def _features(trace: Trace) -> dict[str, Any]:
    block = trace.manifest["states"]
    collector = trace.manifest.get("collector") or {}
    targets = sorted({m for m in trace.requests["target_model"].to_list() if m is not None})
    return {"layers": list(block["layers"]), "decode_layer": block["decode_layer"],
            "hidden_size": block["hidden_size"], "every": block["every"],
            "target": collector.get("target") or (targets[0] if len(targets) == 1 else None),
            "target_sha256": collector.get("target_sha256")}


def from_trace(trace: Trace, where: str | Path) -> StateData:
    """A trace's requests with their states.

    Raises
    ------
    TraceError
        When the trace has no states table or a request has no prompt text.
    """
    if trace.states is None:
        raise TraceError("the trace has no hidden states (states.parquet): collect it with "
                         "`lapsd collect ... --states` (or `lapsd live --states`)", path=where)
    req = trace.requests
    prompts = req["prompt"].to_list()
    missing = [i for i, p in enumerate(prompts) if p is None]
    if missing:
        raise TraceError(f"{len(missing)} of {len(prompts)} requests have no prompt text",
                         path=where, column="prompt", row=missing[0])
    check_prompts(prompts, where)
    features = _features(trace)
    layers, hidden = features["layers"], features["hidden_size"]
    order = pl.DataFrame({"request_id": req["request_id"],
                          "_i": pl.int_range(req.height, eager=True)})
    st = trace.states.join(order, on="request_id", how="left")
    prompt = st.filter(pl.col("kind") != "decode").with_columns(
        (pl.col("kind") == "prompt_mean").cast(pl.Int64).alias("_k")).sort("_i", "layer", "_k")
    prompt_states = prompt["state"].to_numpy().astype(np.float32).reshape(
        req.height, 2 * len(layers) * hidden)
    decode = st.filter(pl.col("kind") == "decode").sort("_i", "generated_tokens")
    states = (decode["state"].to_numpy().astype(np.float32) if decode.height
              else np.zeros((0, hidden), np.float32))
    return StateData(
        req["request_id"].to_list(), [str(p) for p in prompts], req["category"].to_list(),
        req["dataset"].to_list(), req["target_model"].to_list(),
        req["output_tokens"].to_numpy().astype(np.int64), prompt_states,
        decode["_i"].to_numpy().astype(np.int64),
        decode["generated_tokens"].to_numpy().astype(np.int64), states, features,
        output_cap(trace), [{"path": str(where), "sha256": trace_digest(where)}
                            if Path(where).is_dir() else {"path": str(where), "sha256": ""}])


def load_state_data(paths: Sequence[str | Path]) -> StateData:
    """Trace folders with hidden states, put together (see :meth:`StateData.concat`)."""
    if not paths:
        raise LapsdError("no --data given: pass trace folder(s) collected with --states")
    return StateData.concat([from_trace(read_trace(p), p) for p in paths])


def check_features(expected: dict[str, Any], got: dict[str, Any], what_expected: str,
                   what_got: str) -> None:
    """Refuse states unlike the ones expected (:data:`MATCHED`), naming both in one line."""
    keys = [k for k in MATCHED if expected.get(k) != got.get(k)]
    sha_a, sha_b = expected.get("target_sha256"), got.get("target_sha256")
    if sha_a and sha_b and sha_a != sha_b:
        keys.append("target_sha256")
    if keys:
        def show(d: dict[str, Any]) -> str:
            return ", ".join(f"{k}={d.get(k)!r}" for k in keys)

        raise LapsdError(f"hidden states do not match: {what_expected} has {show(expected)} "
                         f"but {what_got} has {show(got)}; use a probe trained on states "
                         "recorded the same way (same target, --states layers)")


# ------------------------------------------------------------------------------- beliefs
def total_belief(generated: np.ndarray, median_remaining: np.ndarray,
                 sigma_remaining: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The total-length log-normal ``(median, sigma)`` read back as a remaining-length belief.

    After ``t = generated`` tokens the probe believes ``L - t ~ LogNormal(log m, s)``. The
    returned ``(median, sigma)`` of ``X`` are those whose conditional given ``X > t`` has
    median ``t + m`` and 0.9 quantile ``t + m exp(z s)`` (``z`` the normal 0.9 quantile). With
    ``a = (log t - mu) / sigma`` the conditional ``q``-quantile of ``log X - log t`` is
    ``sigma h_q(a)``, ``h_q(a) = Phi^-1(1 - (1 - q) Phibar(a)) - a``; the ratio ``h_0.9 /
    h_0.5`` rises from 1 to ``log 10 / log 2`` as ``a`` grows, so ``a`` is found by bisection
    and ``sigma``, ``mu`` follow. A belief whose tail is wider than that largest ratio allows
    keeps its median and gets the widest tail the family has. At ``t = 0`` it is the remaining
    belief itself.
    """
    t = np.atleast_1d(np.asarray(generated, dtype=np.float64))
    m = np.broadcast_to(np.asarray(median_remaining, dtype=np.float64), t.shape)
    s = np.broadcast_to(np.asarray(sigma_remaining, dtype=np.float64), t.shape)
    median, sigma = np.empty(t.shape), np.empty(t.shape)
    _total_belief(t, np.ascontiguousarray(m), np.ascontiguousarray(s), median, sigma)
    return median, sigma


#: ``log (1 - q)`` of the two quantiles :func:`total_belief` matches, and the 0.9 quantile of
#: the standard normal.
_LOG_UPPER_50, _LOG_UPPER_90 = math.log(0.5), math.log(0.1)
_Z90 = float(norm.ppf(0.9))


@njit(cache=True)
def _h(log_upper: float, a: float) -> float:
    """``h_q(a) = Phi^-1(1 - (1 - q) Phibar(a)) - a``, ``log_upper = log(1 - q)``."""
    return -ndtri(math.exp(log_upper + log_ndtr(-a))) - a


@njit(cache=True)
def _total_belief(t: np.ndarray, m: np.ndarray, s: np.ndarray, median: np.ndarray,
                  sigma: np.ndarray) -> None:
    """:func:`total_belief`, element by element (bisections on ``a``)."""
    for i in range(t.size):
        if t[i] <= 0.0:
            median[i], sigma[i] = m[i], s[i]
            continue
        u50 = math.log1p(m[i] / t[i])
        u90 = math.log1p(m[i] * math.exp(_Z90 * s[i]) / t[i])
        # a from -1e6 (a ratio within 1e-6 of 1) to 30 (within 0.3% of the largest; beyond,
        # P(X > t) underflows what the policies' kernels resolve, :mod:`lapsd.replay.lognormal`)
        # and no further than keeps the median exp(mu) a positive float64 (mu = log t - a
        # sigma, with a sigma = a u50 / h_0.5(a) rising in a): a tail beyond either is the
        # widest there is
        room = math.log(t[i]) - LOG_TINY
        lo, hi = 0.0, 30.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if mid * u50 / _h(_LOG_UPPER_50, mid) <= room:
                lo = mid
            else:
                hi = mid
        target = max(u90 / u50, 1.0 + 1e-9)
        lo, hi = -1e6, lo
        for _ in range(90):
            mid = (lo + hi) / 2
            if _h(_LOG_UPPER_90, mid) / _h(_LOG_UPPER_50, mid) < target:
                lo = mid
            else:
                hi = mid
        a = (lo + hi) / 2
        sigma[i] = u50 / _h(_LOG_UPPER_50, a)
        median[i] = math.exp(math.log(t[i]) - a * sigma[i])


def _imputed(y: np.ndarray, mu: np.ndarray, sigma: float, censored: np.ndarray) -> np.ndarray:
    """``y`` with each censored entry imputed: ``E[log X | log X >= y]`` under ``N(mu, sigma)``.

    A censored entry's ``y`` is the log cap; the expectation is the inverse Mills ratio's.
    """
    out = y.copy()
    alpha = (y[censored] - mu[censored]) / sigma
    mills = np.exp(norm.logpdf(alpha) - norm.logsf(alpha))
    out[censored] = np.maximum(y[censored], mu[censored] + sigma * mills)
    return out


def _scores(y: np.ndarray, mu: np.ndarray, censored: np.ndarray) -> np.ndarray:
    """Conformal scores of the capped interval ``exp(mu +- z sigma)``.

    ``|y - mu|``; for a censored example (``y`` the log cap) ``max(y - mu, 0)``: it is covered
    once the interval's upper end reaches the cap.
    """
    return np.where(censored, np.maximum(y - mu, 0.0), np.abs(y - mu))


# -------------------------------------------------------------------------------- models
def _head(name: str, alpha: float | None, seed: int) -> Any:
    if name == "ridge":
        return Ridge(alpha=alpha or 1.0)
    return HistGradientBoostingRegressor(max_iter=150, learning_rate=0.05, max_leaf_nodes=15,
                                         min_samples_leaf=20, early_stopping=False,
                                         random_state=seed)


def _projection(n_states: int, n_columns: int, n_rows: int, seed: int) -> ColumnTransformer:
    """Standardise and PCA-project the first ``n_states`` columns; standardise the rest."""
    k = max(1, min(COMPONENTS, n_rows - 1, n_states))
    return ColumnTransformer([
        ("states", Pipeline([("scale", StandardScaler()),
                             ("pca", PCA(k, svd_solver="randomized", random_state=seed))]),
         list(range(n_states))),
        ("extra", StandardScaler(), list(range(n_states, n_columns)))])


def _cross_fit(X: np.ndarray, y: np.ndarray, n_states: int,
               folds: list[tuple[np.ndarray, np.ndarray]], heads: Sequence[tuple[str, Any]],
               seed: int) -> np.ndarray:
    """Out-of-fold predictions of every head, ``(len(heads), n)``; one projection a fold."""
    oof = np.zeros((len(heads), y.size))
    for tr, te in folds:
        proj = _projection(n_states, X.shape[1], tr.size, seed).fit(X[tr])
        Ztr, Zte = proj.transform(X[tr]), proj.transform(X[te])
        for j, (name, alpha) in enumerate(heads):
            oof[j, te] = _head(name, alpha, seed).fit(Ztr, y[tr]).predict(Zte)
    return oof


@dataclass
class _Fit:
    """One fitted stage: the pipeline, the chosen head, out-of-fold predictions and scores."""

    pipeline: Pipeline
    head: str
    oof: np.ndarray
    offset: float
    cv_mse: dict[str, float]


def _fit_stage(X: np.ndarray, y_log: np.ndarray, n_states: int, censored: np.ndarray,
               folds: list[tuple[np.ndarray, np.ndarray]], seed: int) -> _Fit:
    """Choose a head by out-of-fold MSE, impute censored targets, refit (module docstring).

    The out-of-fold predictions kept are those of the chosen head on the imputed targets.
    """
    oof = _cross_fit(X, y_log, n_states, folds, HEADS, seed)
    free = ~censored if (~censored).any() else np.ones(y_log.size, bool)
    mse = ((oof[:, free] - y_log[free]) ** 2).mean(axis=1)
    best = int(np.argmin(mse))
    chosen = [HEADS[best]]
    y = y_log
    if censored.any():
        spread = max(float(np.std(y_log[free] - oof[best, free])), 1e-3)
        y = _imputed(y_log, oof[best], spread, censored)
        oof = _cross_fit(X, y, n_states, folds, chosen, seed)
        best_oof = oof[0]
    else:
        best_oof = oof[best]
    name, alpha = HEADS[best]
    pipeline = Pipeline([("features", _projection(n_states, X.shape[1], y.size, seed)),
                         ("head", _head(name, alpha, seed))]).fit(X, y)
    offset = float(np.median(y - best_oof))  # censored targets imputed: every example counts
    labels = [f"{n}(alpha={a:g})" if a is not None else n for n, a in HEADS]
    return _Fit(pipeline, labels[best], best_oof + offset, offset,
                {lab: float(v) for lab, v in zip(labels, mse, strict=True)})


def admission_design(prompt_states: np.ndarray, prompts: Sequence[str], cues: bool,
                     ) -> tuple[np.ndarray, int]:
    """Admission inputs and the number of their state columns.

    The prompt states (one row per prompt), then (``cues``) the instruction cues.
    """
    if not cues:
        return prompt_states, prompt_states.shape[1]
    return np.column_stack([prompt_states, cue_features(prompts)]), prompt_states.shape[1]


def decode_design(states: np.ndarray, generated: np.ndarray, mu: np.ndarray,
                  sigma: np.ndarray) -> np.ndarray:
    """Re-prediction inputs: the decode state, ``log t``, the admission belief.

    The belief enters as its log median and the log of its conditional mean given ``L > t``.
    """
    t = np.asarray(generated, dtype=np.float64)
    cond = np.array([conditional_mean(math.exp(m), s, math.inf, g)
                     for m, s, g in zip(mu.tolist(), sigma.tolist(), t.tolist(), strict=True)])
    return np.column_stack([states, np.log(t), mu, np.log(cond)])


@dataclass
class ProbeUpdates:
    """The probe's beliefs over one request's total length while it decodes.

    ``generated[i]`` tokens in, the belief is ``LengthPrediction(median[i], sigma[i], cap)``
    (:meth:`predictions`); ``generated`` ascending, multiples of the trace's ``every``.
    """

    request_id: str
    generated: np.ndarray
    median: np.ndarray
    sigma: np.ndarray
    cap: float

    def predictions(self) -> list[LengthPrediction]:
        """The beliefs as the policies take them."""
        return [LengthPrediction(float(m), float(s), self.cap)
                for m, s in zip(self.median.tolist(), self.sigma.tolist(), strict=True)]


@dataclass
class ProbePredictor:
    """A trained probe: admission and re-prediction pipelines, their calibration, the card.

    Attributes
    ----------
    admission
        Pipeline: admission inputs (:func:`admission_design`) -> ``log L`` (before ``offset``).
    repredictor
        Pipeline: :func:`decode_design` rows -> ``log (L - t)``; ``None`` when the training
        traces had too few decode states.
    calibration
        ``offset``/``sigma`` of admission, ``decode_offset``/``decode_sigmas`` (per band of
        ``t``, :data:`~lapsd.predict.continuation.SIGMA_BANDS`) of re-prediction, ``level``.
    card
        The model card: ``features`` (what states it needs), ``deployments``, metrics.
    """

    admission: Pipeline
    repredictor: Pipeline | None
    calibration: dict[str, Any]
    card: dict[str, Any] = field(default_factory=dict)
    #: The pipelines as arrays (:mod:`lapsd.predict.compiled`): what predicts, one row or many.
    _admission: CompiledPipeline = field(init=False, repr=False, compare=False)
    _repredictor: CompiledPipeline | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Compile the fitted pipelines."""
        self._admission = compile_pipeline(self.admission)
        self._repredictor = (None if self.repredictor is None
                             else compile_pipeline(self.repredictor))

    @property
    def cues(self) -> bool:
        """Whether the admission model also reads the instruction cues."""
        return bool(self.card["inputs"]["cues"])

    def check(self, data: StateData) -> None:
        """Refuse ``data`` whose states are unlike the training ones (one line)."""
        check_features(self.card["features"], data.features, "the probe",
                       f"the data ({', '.join(s['path'] for s in data.sources) or 'memory'})")

    def log_beliefs(self, data: StateData) -> tuple[np.ndarray, np.ndarray]:
        """Admission log median and sigma of each request's output length."""
        self.check(data)
        with threadpool_limits(1):
            return self.admission_log(data.prompt_states, data.prompts)

    def admission_log(self, prompt_states: np.ndarray, prompts: Sequence[str],
                      ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`log_beliefs` of prompt-state rows (:attr:`StateData.prompt_states`'s layout)."""
        X, _ = admission_design(prompt_states, prompts, self.cues)
        mu = self._admission.predict(X) + self.calibration["offset"]
        return mu, np.full(mu.size, float(self.calibration["sigma"]))

    def predictions(self, data: StateData) -> list[LengthPrediction]:
        """Admission beliefs, capped at the data's ``max_new_tokens``."""
        mu, sigma = self.log_beliefs(data)
        return [LengthPrediction(max(math.exp(m), 1.0), float(s), data.cap)
                for m, s in zip(mu.tolist(), sigma.tolist(), strict=True)]

    def remaining(self, data: StateData, rows: np.ndarray | None = None,
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Log median and sigma of ``L - t`` at decode states ``rows`` (default: all)."""
        mu, sigma = self.log_beliefs(data)
        rows = np.arange(data.decode_owner.size) if rows is None else np.asarray(rows)
        owner = data.decode_owner[rows]
        with threadpool_limits(1):
            return self.remaining_log(data.decode_states[rows], data.decode_tokens[rows],
                                      mu[owner], sigma[owner])

    def remaining_log(self, states: np.ndarray, generated: np.ndarray, mu: np.ndarray,
                      sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`remaining` of decode-state rows, with their requests' admission beliefs."""
        if self._repredictor is None:
            raise LapsdError("this probe has no re-predictor: its training traces had too few "
                             "decode states; collect longer outputs with --states")
        X = decode_design(states, generated, mu, sigma)
        m = self._repredictor.predict(X) + self.calibration["decode_offset"]
        return m, np.asarray(self.calibration["decode_sigmas"])[band(generated)]

    def updates(self, data: StateData) -> list[ProbeUpdates]:
        """Per request (in ``data``'s order), the beliefs after each of its decode states."""
        m, s = self.remaining(data)
        median, sigma = total_belief(data.decode_tokens, np.exp(m), s)
        bounds = np.searchsorted(data.decode_owner, np.arange(len(data) + 1))
        return [ProbeUpdates(data.request_ids[i], data.decode_tokens[lo:hi], median[lo:hi],
                             sigma[lo:hi], data.cap)
                for i, (lo, hi) in enumerate(itertools.pairwise(bounds))]


@dataclass
class RunningBelief:
    """A probe's beliefs about one request, from its states as a server computes them.

    What :meth:`ProbePredictor.predictions` and :meth:`ProbePredictor.updates` give for a
    trace, one request at a time: a server that runs the target (``lapsd live``) makes one at
    admission from the prompt states, then calls :meth:`update` with each decode state. States
    must be as the trace stores them (:mod:`lapsd.collect.states`: float16 where polars has
    it) for the beliefs to equal those of ``lapsd predict apply`` on the run's trace.
    """

    probe: ProbePredictor
    mu: float
    sigma: float
    cap: float

    @classmethod
    def admit(cls, probe: ProbePredictor, prompt_states: np.ndarray, prompt: str, cap: float,
              ) -> RunningBelief:
        """The admission belief from one row of :attr:`StateData.prompt_states`."""
        mu, sigma = probe.admission_log(np.asarray(prompt_states, np.float32)[None], [prompt])
        return cls(probe, float(mu[0]), float(sigma[0]), cap)

    @property
    def prediction(self) -> LengthPrediction:
        """The admission belief as the policies take it (capped)."""
        return LengthPrediction(max(math.exp(self.mu), 1.0), self.sigma, self.cap)

    def update(self, state: np.ndarray, generated: int) -> LengthPrediction:
        """The total-length belief after ``generated`` tokens, from that token's state."""
        t = np.array([generated], dtype=np.int64)
        m, s = self.probe.remaining_log(np.asarray(state, np.float32)[None], t,
                                        np.array([self.mu]), np.array([self.sigma]))
        median, sigma = total_belief(t, np.exp(m), s)
        return LengthPrediction(float(median[0]), float(sigma[0]), self.cap)


def updates(probe: ProbePredictor, data: StateData) -> list[ProbeUpdates]:
    """The belief updates ``probe`` makes while the requests of ``data`` decode.

    One :class:`ProbeUpdates` per request (``data``'s order): after ``generated[i]`` tokens
    (each decode state's ``t``) the total-length belief ``LengthPrediction(median[i],
    sigma[i], cap)``, whose conditional given ``L > t`` is the probe's remaining-length
    belief (:func:`total_belief`). A live server calls it with one request's states so far
    (:meth:`StateData.subset`) or builds the rows itself the same way.
    """
    return probe.updates(data)


def fit_probe(data: StateData, *, folds: int = 5, seed: int = 0, cues: bool = True,
              card: dict[str, Any] | None = None) -> ProbePredictor:
    """Train a probe on traces with states (module docstring).

    Parameters
    ----------
    data
        Requests with their states (:func:`load_state_data`).
    folds
        Folds of the cross-fitting (at least 2), by prompt source where there are enough
        sources, else by prompt.
    seed
        Seed of the folds, the projections and the booster.
    cues
        Also read the prompt's instruction cues at admission.
    card
        Extra model-card fields.

    Raises
    ------
    LapsdError
        With fewer than :data:`MIN_EXAMPLES` requests or too few prompts for ``folds``.
    """
    check_training(len(data), MIN_EXAMPLES, folds, "requests with states")
    start = time.perf_counter()
    groups = source_groups(data.prompts, data.categories, folds)
    split = ("by prompt source (category)"
             if groups.max() < prompt_groups(data.prompts).max() else "by prompt")
    folds_ = prompt_folds(data.prompts, folds, seed, groups)
    y = np.log(np.maximum(data.output_tokens, 1).astype(np.float64))
    censored = data.censored
    X, n_states = admission_design(data.prompt_states, data.prompts, cues)
    with threadpool_limits(1):
        adm = _fit_stage(X, y, n_states, censored, folds_, seed)
    sigma = conformal_sigma(_scores(y, adm.oof, censored))
    calibration: dict[str, Any] = {"offset": adm.offset, "sigma": sigma, "level": LEVEL,
                                   "decode_offset": 0.0, "decode_sigmas": []}
    rep = None
    metrics: dict[str, Any] = {"admission_head": adm.head, "admission_cv_mse": adm.cv_mse}
    rows = np.flatnonzero(data.decode_tokens < data.output_tokens[data.decode_owner])
    if rows.size >= 2 * MIN_BAND:
        owner, t = data.decode_owner[rows], data.decode_tokens[rows].astype(np.float64)
        # a censored request's remaining length is censored at cap - t
        y_rem = np.log(data.output_tokens[owner] - t)
        Xd = decode_design(data.decode_states[rows], t, adm.oof[owner],
                           np.full(rows.size, sigma))
        owner_of = np.zeros(y.size, np.int64)
        dfolds = []
        for _, te in folds_:
            owner_of[te] = 1
            in_te = owner_of[owner] == 1
            dfolds.append((np.flatnonzero(~in_te), np.flatnonzero(in_te)))
            owner_of[te] = 0
        with threadpool_limits(1):
            dec = _fit_stage(Xd, y_rem, data.decode_states.shape[1], censored[owner], dfolds,
                             seed)
        scores = _scores(y_rem, dec.oof, censored[owner])
        bands = band(t)
        pooled = conformal_sigma(scores)
        calibration["decode_offset"] = dec.offset
        calibration["decode_sigmas"] = [
            conformal_sigma(scores[bands == b]) if np.sum(bands == b) >= MIN_BAND else pooled
            for b in range(len(SIGMA_BANDS) + 1)]
        rep = dec.pipeline
        metrics.update(decode_head=dec.head, decode_cv_mse=dec.cv_mse, decode_rows=int(rows.size))
    probe = ProbePredictor(adm.pipeline, rep, calibration)
    probe.card = new_card(
        kind=PROBE_KIND,
        target_model=data.features.get("target"),
        features=data.features,
        deployments=("needs the target model's hidden states: a server that runs the target "
                     "(`lapsd live --states` with these layers, or an engine plug-in that "
                     "exposes them); a gateway in front of the server cannot use it"),
        inputs={"prompt_states": ["prompt_last", "prompt_mean"], "cues": cues,
                "decode_states": "decode at decode_layer every `every` tokens" if rep else None,
                "components": COMPONENTS},
        n_train=len(data), n_censored=int(censored.sum()), cap=data.cap,
        training_data=data.sources, split=f"GroupKFold {split}", cv_folds=folds,
        calibration={"method": "split-conformal on out-of-fold residuals (censored outputs "
                               "scored against the cap)", "level": LEVEL},
        metrics=metrics, train_seconds=round(time.perf_counter() - start, 1),
        train_prompt_hashes=sorted(set(prompt_hashes(data.prompts))),
        **(card or {}))
    return probe


# ------------------------------------------------------------------------------- storage
def save_probe(probe: ProbePredictor, path: str | Path) -> Path:
    """Write a probe atomically (a skops file of the predictor format, ``kind`` probe)."""
    import json

    return write_payload({"kind": PROBE_KIND, "card": json.dumps(probe.card, sort_keys=True),
                          "calibration": json.dumps(probe.calibration, sort_keys=True),
                          "admission": probe.admission, "repredictor": probe.repredictor},
                         path)


def probe_from_payload(payload: dict[str, Any]) -> ProbePredictor:
    """The probe of a payload read by :func:`lapsd.predict.persist.read_payload`."""
    import json

    return ProbePredictor(payload["admission"], payload["repredictor"],
                          json.loads(payload["calibration"]), json.loads(payload["card"]))


def load_probe(path: str | Path) -> ProbePredictor:
    """Load a probe written by :func:`save_probe` (other predictor files: one-line error)."""
    payload = read_payload(path)
    if payload.get("kind") != PROBE_KIND:
        raise LapsdError(f"{path} is a prompt-only predictor, not a probe: train one with "
                         "`lapsd predict train --probe --data TRACE_WITH_STATES`")
    return probe_from_payload(payload)


def load_any(path: str | Path) -> LengthPredictor | ProbePredictor:
    """A predictor file of either kind: the prompt-only predictor or a probe."""
    payload = read_payload(path)
    if payload.get("kind") == PROBE_KIND:
        return probe_from_payload(payload)
    return predictor_from_payload(payload)


def evaluate_probe(probe: ProbePredictor, data: StateData,
                   generated: Sequence[int] = REMAINING_AT) -> dict[str, Any]:
    """Metrics of a probe's beliefs on ``data``: at admission and after ``generated`` tokens.

    After ``t`` tokens, of the remaining length of the requests longer than ``t`` (each has a
    decode state at ``t``).

    The beliefs scored are the ones the policies get (:class:`LengthPrediction`, capped), their
    median and central 80% interval of ``L - t`` given ``L > t``.
    """
    result: dict[str, Any] = {
        "n": len(data), "admission": belief_metrics(probe.predictions(data), data.output_tokens),
        "remaining": {}, "seen_prompts": seen_prompts(probe, data.prompts)}
    if probe.repredictor is None:
        return result
    for t in generated:
        rows = np.flatnonzero((data.decode_tokens == t)
                              & (data.output_tokens[data.decode_owner] > t))
        if rows.size < 2:
            continue
        m, s = probe.remaining(data, rows)
        median, sigma = total_belief(np.full(rows.size, t), np.exp(m), s)
        beliefs = [LengthPrediction(float(a), float(b), data.cap)
                   for a, b in zip(median.tolist(), sigma.tolist(), strict=True)]
        result["remaining"][int(t)] = belief_metrics(
            beliefs, data.output_tokens[data.decode_owner[rows]], int(t))
    return result

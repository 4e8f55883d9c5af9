"""Using a trained predictor on traces: prediction columns and the replay's sources.

:func:`predictor_source` gives the replay's prompt-only beliefs, :func:`update_source` its
re-predictions while requests run; both take a predictor file or a predictor in memory.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from lapsd.errors import LapsdError
from lapsd.io import check_output, sha256_file
from lapsd.predict.continuation import continuation_beliefs
from lapsd.predict.cues import CUE_NAMES, cue_features
from lapsd.predict.model import LengthPredictor
from lapsd.predict.persist import load_predictor
from lapsd.predict.probe import ProbePredictor, ProbeUpdates, from_trace, load_any
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.trace import TraceError, read_trace, write_trace
from lapsd.replay.workload import PredictionSource, Updates, UpdateSource

_ASKED_ITEMS = CUE_NAMES.index("asked_items")


def apply_to_trace(model: str | Path, trace_dir: str | Path, out: str | Path | None = None,
                   target_model: str | None = None, *, overwrite: bool = False) -> Path:
    """Add ``predicted_tokens`` and ``predicted_tokens_p90`` to a trace's requests.

    Writes ``out`` (default: ``trace_dir`` in place) atomically: a reader sees the old trace or
    the new one, never a mix. An existing ``out`` other than ``trace_dir`` is replaced only with
    ``overwrite``. Existing prediction columns are replaced. ``target_model``
    selects a per-model calibration (it must exist in the predictor); by default each request's
    own target model is used where the predictor is calibrated for it. A probe
    (:mod:`lapsd.predict.probe`) predicts from the trace's hidden states at admission, which
    must be the kind it was trained on; it has one calibration (no ``target_model``). A probe
    with a re-predictor also writes its beliefs while decoding as the rounds'
    ``belief_median``/``belief_sigma`` (:func:`with_beliefs`; ``lapsd replay
    --recorded-updates`` delivers them); another predictor drops such columns, as they were
    not its own.

    Raises
    ------
    TraceError
        When the trace is unusable or a request has no prompt text.
    LapsdError
        When the predictor cannot be loaded, ``target_model`` has no calibration (or is given
        with a probe), a probe's states do not match the trace's, or ``out`` exists (without
        ``overwrite``) or cannot be written.
    """
    dest = Path(out) if out is not None else Path(trace_dir)
    same = dest.resolve() == Path(trace_dir).resolve()
    check_output(dest, "--out", folder=True, force=overwrite or same)
    predictor = load_any(model)
    if isinstance(predictor, ProbePredictor) and target_model is not None:
        raise LapsdError(f"{model} is a probe, calibrated for the target whose states it reads "
                         f"({predictor.card['features']['target']}); leave --target-model out")
    trace = read_trace(trace_dir)
    req = trace.requests
    prompts = req["prompt"].to_list()
    missing = [i for i, p in enumerate(prompts) if p is None]
    if missing:
        raise TraceError(f"{len(missing)} of {len(prompts)} requests have no prompt text, so "
                         "nothing can be predicted for them; re-import the trace with prompts",
                         path=Path(trace_dir), column="prompt", row=missing[0])
    rounds = trace.rounds.drop("belief_median", "belief_sigma", strict=False)
    if isinstance(predictor, ProbePredictor):
        data = from_trace(trace, trace_dir)
        mu, sigma = predictor.log_beliefs(data)
        if predictor.repredictor is not None and data.decode_owner.size:
            rounds = with_beliefs(rounds, predictor.updates(data))
    else:
        if target_model is not None:
            predictor.calibration.resolve(target_model, strict=True)
        models = ([target_model] * len(prompts) if target_model is not None
                  else req["target_model"].to_list())
        mu, sigma = _log_beliefs(predictor, prompts, models)
    requests = with_predictions(req, mu, sigma)
    manifest = dict(trace.manifest)
    manifest["predictions"] = {"model": str(model), "sha256": sha256_file(model),
                               "target_model": target_model or (
                                   predictor.card["features"]["target"]
                                   if isinstance(predictor, ProbePredictor)
                                   else predictor.default_target),
                               "updates": int(rounds.height - rounds["belief_median"].null_count())
                               if "belief_median" in rounds.columns else 0}
    # replace: every other part of the trace (its rounds, a states table) goes along unchanged.
    return write_trace(dataclasses.replace(trace, requests=requests, rounds=rounds,
                                           manifest=manifest), dest,
                       overwrite=overwrite or same)


def with_predictions(requests: pl.DataFrame, mu: np.ndarray, sigma: np.ndarray,
                     ) -> pl.DataFrame:
    """``requests`` with their log-normal beliefs as prediction columns.

    ``mu`` (log median) and ``sigma``, row by row, become ``predicted_tokens`` (the median, at
    least 1) and ``predicted_tokens_p90``.
    """
    p50 = np.maximum(np.exp(mu), 1.0)
    p90 = np.maximum(np.exp(mu + 1.2815515655446004 * sigma), p50)
    return requests.with_columns(pl.Series("predicted_tokens", p50, pl.Float64),
                                 pl.Series("predicted_tokens_p90", p90, pl.Float64))


def with_beliefs(rounds: pl.DataFrame, updates: Sequence[ProbeUpdates]) -> pl.DataFrame:
    """``rounds`` with a probe's re-predictions as ``belief_median``/``belief_sigma``.

    The state of generated token ``t`` is first computed by the verification that feeds it
    (:mod:`lapsd.collect.states`): the round that drafted and accepted it, or, for a round's
    last token, the next round. Either way it is the first round after which the request has
    emitted more than ``t`` tokens, and the belief from that state goes on that round (the
    replay hears it after the round). Where one round brings several states, the latest wins.
    """
    order = rounds.with_row_index("_row").sort("request_id", "round")
    bounds = {rid: (lo, lo + n) for rid, lo, n in order.group_by(
        "request_id", maintain_order=True).agg(pl.len().alias("n")).with_columns(
        (pl.col("n").cum_sum() - pl.col("n")).alias("lo")).select(
        "request_id", "lo", "n").iter_rows()}
    emitted = order["emitted"].to_numpy().astype(np.int64)
    rows = order["_row"].to_numpy()
    median = np.full(rounds.height, np.nan)
    sigma = np.full(rounds.height, np.nan)
    for up in updates:
        if up.request_id not in bounds or not up.generated.size:
            continue
        lo, hi = bounds[up.request_id]
        after = np.cumsum(emitted[lo:hi])
        at = np.searchsorted(after, up.generated, side="right")
        keep = at < hi - lo  # a state needs a round that fed its token
        median[rows[lo + at[keep]]] = up.median[keep]  # ascending t: the latest write wins
        sigma[rows[lo + at[keep]]] = up.sigma[keep]
    return rounds.with_columns(pl.Series("belief_median", median).fill_nan(None),
                               pl.Series("belief_sigma", sigma).fill_nan(None))


def _log_beliefs(predictor: LengthPredictor, prompts: Sequence[str],
                 models: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Prompt-only log median and sigma, each request calibrated for its own target model.

    A target model the predictor has no calibration for gets the predictor's default (the
    card's target model, else the pooled calibration), with one warning.
    """
    known = predictor.calibration.offsets
    unknown = sorted({m for m in models if m is not None and m not in known})
    if unknown:
        fallback = predictor.default_target or "the pooled calibration"
        warnings.warn(f"the predictor has no calibration for target model(s) {unknown}; using "
                      f"{fallback} (calibrate with `lapsd predict calibrate`)", stacklevel=3)
    score = predictor.model.score(prompts)
    offsets = np.empty(score.size)
    sigmas = np.empty(score.size)
    for name in set(models):
        use = name if name in known else None
        offset, sigma = predictor.calibration.resolve(use or predictor.default_target)
        mask = np.array([m == name for m in models])
        offsets[mask], sigmas[mask] = offset, sigma
    return score + offsets, sigmas


def _as_predictor(model: str | Path | LengthPredictor) -> LengthPredictor:
    return model if isinstance(model, LengthPredictor) else load_predictor(model)


def _requests(arrays: TraceArrays, index: np.ndarray, what: str,
              ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Distinct trace requests of ``index``, the inverse map, and their prompts."""
    unique, inverse = np.unique(np.asarray(index, dtype=np.int64), return_inverse=True)
    prompts = [arrays.prompts[i] for i in unique]
    missing = [int(unique[j]) for j, p in enumerate(prompts) if p is None]
    if missing:
        raise LapsdError(f"{what}: request {arrays.request_ids[missing[0]]!r} (and "
                         f"{len(missing) - 1} more) has no prompt text; use a trace with "
                         "prompts (a what-if instead: --predictions oracle:sigma=...)")
    return unique, inverse.ravel(), [str(p) for p in prompts]


def _models(arrays: TraceArrays, unique: np.ndarray) -> list[str | None]:
    return [arrays.target_models[i] if arrays.target_models else None for i in unique]


def predictor_source(model: str | Path | LengthPredictor) -> PredictionSource:
    """A prediction source for :func:`lapsd.replay.workload.make_predictions` (``--predictor``).

    ``model`` is a predictor file (loaded once) or a predictor in memory. Each call predicts
    every distinct trace request it is asked about once, calibrated for the request's target
    model, and returns one :class:`~lapsd.replay.estimate.LengthPrediction` per entry of
    ``index``, capped at the trace's ``max_new_tokens``.
    """
    predictor = _as_predictor(model)

    def source(arrays: TraceArrays, index: np.ndarray) -> list[LengthPrediction]:
        unique, inverse, prompts = _requests(arrays, index, f"--predictor {model}")
        mu, sigma = _log_beliefs(predictor, prompts, _models(arrays, unique))
        cap = arrays.max_new_tokens
        beliefs = [LengthPrediction(max(math.exp(m), 1.0), s, cap)
                   for m, s in zip(mu.tolist(), sigma.tolist(), strict=True)]
        return [beliefs[j] for j in inverse]

    return source


def _text_after(arrays: TraceArrays, i: int, r: int) -> str | None:
    """Request ``i``'s text after its first ``r`` rounds, or ``None`` when not recorded."""
    text = arrays.responses[i] if arrays.responses else None
    if text is None or arrays.response_chars is None:
        return None
    chars = int(arrays.response_chars[int(arrays.offsets[i]) + r - 1])
    return text[:chars] if chars >= 0 else None


def update_source(model: str | Path | LengthPredictor, every: int) -> UpdateSource:
    """Re-predictions every ``every`` rounds of each request, for ``build_workload(updates=)``.

    After rounds ``every, 2 every, ...`` (before the request's last round) the re-predictor
    gives a new belief over the total length from the prompt, the tokens generated so far and
    the text so far (when the trace kept it; otherwise from the prompt and ``g`` alone). Beliefs
    are capped at the trace's ``max_new_tokens``. All of a call's re-predictions are made in
    one batch.

    Raises
    ------
    LapsdError
        When ``every`` < 1 or the predictor has no re-predictor (trained without text).
    """
    predictor = _as_predictor(model)
    if every < 1:
        raise LapsdError(f"re-prediction every {every} rounds: pass a positive number")
    cont = predictor.continuation
    if cont is None:
        raise LapsdError("this predictor has no re-predictor: its training data had no "
                         "response text; retrain on answers or traces that keep the generated "
                         "text (alpaca_eval, Spec-Bench/MT-bench answers, `lapsd collect`)")

    def source(arrays: TraceArrays, index: np.ndarray) -> list[Updates]:
        unique, inverse, prompts = _requests(arrays, index, "re-prediction")
        mu, sigma = _log_beliefs(predictor, prompts, _models(arrays, unique))
        asked = np.expm1(cue_features(prompts)[:, _ASKED_ITEMS])
        owner, rounds, generated, texts = [], [], [], []
        emitted = arrays.cum["emitted"]
        for j, i in enumerate(unique.tolist()):
            lo, hi = int(arrays.offsets[i]), int(arrays.offsets[i + 1])
            for r in range(every, hi - lo, every):
                owner.append(j)
                rounds.append(r)
                generated.append(int(emitted[lo + r] - emitted[lo]))
                texts.append(_text_after(arrays, i, r))
        per_request: list[Updates] = [[] for _ in range(unique.size)]
        if owner:
            own = np.array(owner)
            new_mu, new_sigma = continuation_beliefs(cont, mu[own], sigma[own],
                                                     np.array(generated), texts, asked[own])
            cap = arrays.max_new_tokens
            for j, r, m, s in zip(owner, rounds, new_mu.tolist(), new_sigma.tolist(),
                                  strict=True):
                per_request[j].append((r, LengthPrediction(max(math.exp(m), 1.0), s, cap)))
        return [per_request[j] for j in inverse]

    return source

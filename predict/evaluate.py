"""Honest evaluation of the prompt-only predictor: by prompt, across models and prompt sets.

Every split groups examples by their prompt (:mod:`lapsd.predict.split`), so the same prompt is
never on both sides, also when several target models answered it. :func:`cross_dataset` goes
further: it trains on whole prompt sets and evaluates on another set, after removing from
training every prompt that also appears in the evaluated set (MT-bench's 80 questions are inside
Spec-Bench's 480): the number removed is reported. Each result is reported next to two baselines
fitted in the same run on the same training data: ``mean`` (the training mean for every
request) and ``length`` (log output length linear in log prompt characters). Ranking metrics of
the constant ``mean`` baseline are undefined and reported as ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lapsd.errors import LapsdError
from lapsd.predict.continuation import continuation_beliefs, cut_text
from lapsd.predict.cues import CUE_NAMES, cue_features
from lapsd.predict.data import LengthData
from lapsd.predict.metrics import metrics
from lapsd.predict.model import LengthPredictor
from lapsd.predict.split import normalize_prompt, prompt_folds, seen_prompts
from lapsd.predict.train import fit_predictor
from lapsd.replay.estimate import LengthPrediction

SYSTEMS = ("model", "mean", "length")
_Z90 = 1.2815515655446004


def _quantiles(predictor: LengthPredictor, prompts: Sequence[str], target: str | None,
               cap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, 0.1 and 0.9 quantiles of the capped beliefs."""
    mu, sigma = predictor.log_beliefs(prompts, target)
    return (np.minimum(np.exp(mu), cap), np.minimum(np.exp(mu - _Z90 * sigma), cap),
            np.minimum(np.exp(mu + _Z90 * sigma), cap))


def score_predictor(predictor: LengthPredictor, data: LengthData,
                    target_model: str | None = None, cap: float = math.inf,
                    ) -> dict[str, dict[str, float | None]]:
    """Metrics of the predictor's beliefs and of its two baselines on ``data``.

    ``target_model`` selects the calibration (``None``: the card's target model).
    """
    p50, p10, p90 = _quantiles(predictor, data.prompts, target_model, cap)
    base = predictor.baseline_lengths(data.prompts)
    return {"model": metrics(data.output_tokens, p50, p90, p10),
            "mean": metrics(data.output_tokens, base["mean"]),
            "length": metrics(data.output_tokens, base["length"])}


def evaluate_predictor(predictor: LengthPredictor, data: LengthData,
                       target_model: str | None = None) -> dict[str, Any]:
    """Metrics of a trained predictor and its stored baselines on ``data``.

    Also reports ``seen_prompts`` (:func:`seen_prompts`): how many of ``data``'s distinct
    prompts the predictor was trained on, which should be 0 for an honest number, and
    ``train_prompt_overlap``, the same as a share (``None`` when the card has no hashes).
    """
    seen = seen_prompts(predictor, data.prompts)
    return {**score_predictor(predictor, data, target_model), "seen_prompts": seen,
            "train_prompt_overlap": seen["share"] if seen["known"] else None}


def _fold_average(per_fold: list[dict[str, dict[str, float | None]]],
                  ) -> dict[str, dict[str, float | None]]:
    """Metrics per fold, averaged with fold sizes as weights (``n`` is the total).

    Per fold rather than pooled: pooling would rank the mean baseline's per-fold constants
    against each other and give it a spurious, non-zero Kendall tau.
    """
    weights = np.array([fold["model"]["n"] or 0.0 for fold in per_fold], dtype=np.float64)
    out: dict[str, dict[str, float | None]] = {}
    for system in SYSTEMS:
        out[system] = {}
        for key in per_fold[0][system]:
            values = [fold[system][key] for fold in per_fold]
            known = [v for v in values if v is not None]
            out[system][key] = (None if len(known) < len(values)
                                else float(np.average(known, weights=weights)))
        out[system]["n"] = float(weights.sum())
    return out


def cross_validate(data: LengthData, n_splits: int = 5, seed: int = 0, **fit: Any,
                   ) -> dict[str, dict[str, float | None]]:
    """K-fold evaluation by prompt of one target model's data; metrics per fold, averaged.

    ``fit`` is passed to :func:`lapsd.predict.train.fit_predictor` (``embeddings=``,
    ``folds=`` of its own cross-fitting, model settings).
    """
    fit.setdefault("folds", 3)
    parts = []
    for train, test in prompt_folds(data.prompts, n_splits, seed):
        tr, te = data.subset(train), data.subset(test)
        parts.append(score_predictor(fit_predictor(tr, seed=seed, **fit), te))
    return _fold_average(parts)


def cross_model(data: LengthData, held_out: str, n_splits: int = 5, seed: int = 0,
                **fit: Any) -> dict[str, dict[str, float | None]]:
    """Train on the other models' responses, evaluate on ``held_out``'s, split by prompt.

    For each fold, the training rows are the other models' answers to the training prompts and
    the test rows are ``held_out``'s answers to the test prompts, so neither the model nor the
    prompt was seen in training (the pooled calibration is used).
    """
    if held_out not in data.models:
        raise LapsdError(f"held-out model {held_out!r} is not in the data ({data.models})")
    others = [i for i, m in enumerate(data.target_models) if m != held_out]
    if not others:
        raise LapsdError("cross-model evaluation needs at least one other model in the data")
    fit.setdefault("folds", 3)
    target = data.for_model(held_out)
    parts = []
    for _, test in prompt_folds(target.prompts, n_splits, seed):
        test_prompts = {normalize_prompt(target.prompts[i]) for i in test}
        train_idx = [i for i in others if normalize_prompt(data.prompts[i]) not in test_prompts]
        predictor = fit_predictor(data.subset(train_idx), seed=seed, **fit)
        parts.append(score_predictor(predictor, target.subset(test), held_out))
    return _fold_average(parts)


def unseen_training(train: LengthData, evaluated: Sequence[str]) -> tuple[LengthData, int]:
    """``train`` without the examples whose prompt is among ``evaluated``; and how many went."""
    held = {normalize_prompt(p) for p in evaluated}
    keep = [i for i, p in enumerate(train.prompts) if normalize_prompt(p) not in held]
    return train.subset(keep), len(train) - len(keep)


def cross_dataset(train: LengthData, evaluated: LengthData, *, seed: int = 0,
                  cap: float = math.inf, **fit: Any) -> tuple[dict[str, Any], LengthPredictor]:
    """Train on one prompt set (or several), evaluate per target model on another.

    Returns the JSON-able result and the predictor trained.

    Training examples whose prompt also appears in ``evaluated`` are removed first (counted in
    ``dropped_seen``), so every evaluated prompt is unseen. Each evaluated model is scored with
    its own calibration when training had that model, else with the pooled one
    (``calibration`` says which).

    Raises
    ------
    LapsdError
        When nothing is left to train on.
    """
    kept, dropped = unseen_training(train, evaluated.prompts)
    if len(kept) == 0:
        raise LapsdError("every training prompt is also in the evaluated set: nothing unseen "
                         "to evaluate; pass another prompt set to --eval-data")
    predictor = fit_predictor(kept, seed=seed, **fit)
    per_model = {}
    for m in evaluated.models:
        part = evaluated.for_model(m)
        own = m in predictor.calibration.offsets
        per_model[m] = {**score_predictor(predictor, part, m if own else None, cap),
                        "calibration": m if own else "pooled"}
    return {"train_sets": train.sets, "eval_sets": evaluated.sets, "n_train": len(kept),
            "dropped_seen": dropped, "seen_prompts": seen_prompts(predictor, evaluated.prompts),
            "per_model": per_model}, predictor


def remaining_metrics(predictor: LengthPredictor, data: LengthData,
                      generated: Sequence[int] = (0, 64, 128, 256),
                      target_model: str | None = None, cap: float = math.inf,
                      ) -> dict[int, dict[str, dict[str, float | None]]]:
    """Remaining-length metrics after ``g`` tokens, prompt-only against re-predicted.

    For each ``g``, the examples longer than ``g`` are scored on their remaining length
    ``L - g``: the prompt-only belief's conditional mean given ``L > g``
    (:meth:`~lapsd.replay.estimate.LengthPrediction.mean_remaining`) against the re-predictor's
    belief from the text cut at ``g`` tokens (exact offsets where the data has them, else in
    proportion to tokens); at ``g = 0`` both are the prompt-only belief. Examples without text
    are re-predicted from the prompt and ``g`` alone.

    Raises
    ------
    LapsdError
        When the predictor has no re-predictor.
    """
    if predictor.continuation is None:
        raise LapsdError("this predictor has no re-predictor (its training data had no text)")
    mu, sigma = predictor.log_beliefs(data.prompts, target_model)
    asked = np.expm1(cue_features(data.prompts)[:, CUE_NAMES.index("asked_items")])
    out: dict[int, dict[str, dict[str, float | None]]] = {}
    for g in generated:
        idx = np.flatnonzero(data.output_tokens > g)
        if idx.size < 2:
            continue
        true = data.output_tokens[idx] - g
        prior = np.array([LengthPrediction(math.exp(mu[i]), sigma[i], cap).mean_remaining(g)
                          for i in idx])
        if g == 0:
            post = prior
        else:
            texts = [None if data.responses[i] is None else
                     cut_text(str(data.responses[i]), int(data.output_tokens[i]),
                              data.offsets[i], g) for i in idx]
            new_mu, new_sigma = continuation_beliefs(predictor.continuation, mu[idx],
                                                     sigma[idx], np.full(idx.size, g), texts,
                                                     asked[idx])
            post = np.array([LengthPrediction(math.exp(m), s, cap).mean_remaining(g)
                             for m, s in zip(new_mu, new_sigma, strict=True)])
        out[int(g)] = {"prompt_only": metrics(true, prior), "repredicted": metrics(true, post)}
    return out

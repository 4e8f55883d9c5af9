"""Training a predictor: cross-fitting, calibration, re-predictor, model card.

:func:`fit_predictor` is the one training procedure. It splits the examples into folds by
prompt text, fits the length model on all folds but one and scores the held-out fold, so every
example gets an out-of-fold score; those calibrate the beliefs per target model
(:mod:`lapsd.predict.calibrate`), feed the re-predictor's training rows (so it learns how far to
trust a prompt-only belief that was not fitted on the same prompt) and give the model card its
cross-validated metrics for free. The final model is then fitted on everything.

:func:`train_predictor` loads nothing: it trains on a :class:`~lapsd.predict.data.LengthData`
and saves; :func:`fit_on_arrays` trains on compiled traces in memory (the tuner's split).
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lapsd.errors import LapsdError
from lapsd.predict.calibrate import Calibration
from lapsd.predict.continuation import ContinuationModel, design, training_cuts
from lapsd.predict.cues import CUE_NAMES, cue_features
from lapsd.predict.data import LengthData, from_arrays
from lapsd.predict.features import embeddings_available
from lapsd.predict.metrics import metrics
from lapsd.predict.model import (
    LengthModel,
    LengthPredictor,
    build_length_baseline,
    log_target,
)
from lapsd.predict.persist import new_card, save_predictor
from lapsd.predict.split import (
    check_training,
    prompt_folds,
    prompt_groups,
    prompt_hashes,
    seen_prompts,
    source_groups,
)
from lapsd.replay.arrays import TraceArrays

#: Fewest examples a predictor trains on.
MIN_EXAMPLES = 10
_ASKED_ITEMS = CUE_NAMES.index("asked_items")


def _fit_continuation(data: LengthData, oof_mu: np.ndarray, oof_sigma: np.ndarray,
                      seed: int, **settings: Any) -> ContinuationModel | None:
    """The re-predictor, trained on cuts of the answers that carry text (or ``None``)."""
    if data.n_with_text == 0:
        return None
    asked = np.expm1(cue_features(data.prompts)[:, _ASKED_ITEMS])
    idx, g, text, y = training_cuts(data, asked, seed=seed)
    if idx.size < 50:
        return None
    X = design(oof_mu[idx], oof_sigma[idx], g, text)
    return ContinuationModel(random_state=seed, **settings).fit(
        X, y, prompt_groups(data.prompts)[idx], g)


def fit_predictor(data: LengthData, *, folds: int = 5, seed: int = 0,
                  embeddings: bool | None = None, tfidf: bool = False,
                  continuation: bool = True, target_model: str | None = None,
                  by_source: bool = True, card: dict[str, Any] | None = None,
                  **settings: Any) -> LengthPredictor:
    """Cross-fit, calibrate, fit the final model and the re-predictor (module docstring).

    Parameters
    ----------
    data
        Training examples of one or several target models (all are used).
    folds
        Prompt-grouped folds of the cross-fitting (at least 2).
    seed
        Seed of the folds and the boosters.
    embeddings
        Static sentence embeddings; ``None``: on when the ``embed`` extra is installed.
    tfidf
        Add hashed word TF-IDF (helps prompts like the training ones, not unseen sets).
    continuation
        Train the re-predictor when the data has response text.
    target_model
        The model beliefs are calibrated for by default (the card's ``target_model``);
        ``None``: the only model of the data, or pooled when there are several.
    by_source
        Hold out whole prompt sources (categories) in the cross-fitting when there are enough
        of them (:func:`~lapsd.predict.split.source_groups`): wider, more honest spreads for
        other prompt sets; ``False`` holds out prompts.
    card
        Extra model-card fields.
    settings
        :class:`~lapsd.predict.model.LengthModel` settings.

    Raises
    ------
    LapsdError
        With fewer than :data:`MIN_EXAMPLES` examples, fewer than 2 folds or too few prompts,
        or a ``target_model`` absent from the data.
    """
    check_training(len(data), MIN_EXAMPLES, folds, "examples")
    if target_model is not None and target_model not in data.models:
        data.for_model(target_model)  # raises, naming the models present
    if embeddings is None:
        embeddings = embeddings_available()
    start = time.perf_counter()
    make = {"embeddings": embeddings, "tfidf": tfidf, "random_state": seed, **settings}
    y = log_target(data.output_tokens)
    models = data.target_models
    oof = np.empty(y.size)
    groups = (source_groups(data.prompts, data.categories, folds) if by_source
              else prompt_groups(data.prompts))
    split = ("GroupKFold by prompt source (category)"
             if groups.max() < prompt_groups(data.prompts).max() else "GroupKFold by prompt")
    for tr, te in prompt_folds(data.prompts, folds, seed, groups):
        fold = LengthModel(**make).fit([data.prompts[i] for i in tr], y[tr],
                                       [models[i] for i in tr])
        oof[te] = fold.score([data.prompts[i] for i in te])
    calibration = Calibration.fit(y - oof, models)
    model = LengthModel(**make).fit(data.prompts, y, models)
    offsets = np.array([calibration.offsets[m] for m in models])
    sigmas = np.array([calibration.sigmas[m] for m in models])
    repredictor = (_fit_continuation(data, oof + offsets, sigmas, seed) if continuation
                   else None)
    baseline = build_length_baseline().fit(data.prompts, y)
    if target_model is None and len(data.models) == 1:
        target_model = data.models[0]
    per_model = {}
    for m in data.models:
        mask = np.array([x == m for x in models])
        mu = oof[mask] + calibration.offsets[m]
        z = 1.2815515655446004 * calibration.sigmas[m]
        per_model[m] = metrics(data.output_tokens[mask], np.exp(mu), np.exp(mu + z),
                               np.exp(mu - z))
    predictor = LengthPredictor(model, calibration, repredictor, baseline,
                                float(np.mean(data.output_tokens)))
    predictor.card = new_card(
        target_model=target_model,
        models=data.models,
        n_train=len(data),
        n_prompts=len(set(prompt_groups(data.prompts).tolist())),
        prompt_sets=data.sets,
        token_count=data.token_count,
        training_data=data.sources,
        features={"cues": list(CUE_NAMES), "static_embeddings": embeddings, "tfidf": tfidf},
        settings={k: v for k, v in make.items() if k not in ("embeddings", "tfidf")},
        calibration={"method": "split-conformal on out-of-fold residuals, per target model",
                     "level": calibration.level},
        continuation=None if repredictor is None else {
            "n_with_text": data.n_with_text,
            "cuts": "exact round offsets" if any(o is not None for o in data.offsets)
            else "estimated: characters in proportion to tokens"},
        metrics={"cross_validation": per_model, "cv_folds": folds, "split": split,
                 "note": "out-of-fold on the training prompt sets: other prompt sets rank "
                         "worse; see `lapsd predict cv --eval-data` and bench_predict.py"},
        train_seconds=round(time.perf_counter() - start, 1),
        train_prompt_hashes=sorted(set(prompt_hashes(data.prompts))),
        **(card or {}),
    )
    return predictor


def train_predictor(data: LengthData, out: str | Path | None = None, *,
                    target_model: str | None = None, cv_folds: int = 5, seed: int = 0,
                    embeddings: bool | None = None, **settings: Any) -> LengthPredictor:
    """Train on every model's examples (pooled), and save when ``out`` is given.

    Parameters
    ----------
    data
        Training examples (:func:`lapsd.predict.data.load_data`).
    out
        Where to write the predictor (atomically); ``None`` keeps it in memory only.
    target_model
        The model calibrated for by default (see :func:`fit_predictor`).
    cv_folds
        Folds of the cross-fitting, whose out-of-fold metrics the card records.
    seed, embeddings, settings
        See :func:`fit_predictor`.
    """
    predictor = fit_predictor(data, folds=cv_folds, seed=seed, embeddings=embeddings,
                              target_model=target_model, **settings)
    if out is not None:
        save_predictor(predictor, out)
    return predictor


def fit_on_arrays(arrays_list: Sequence[TraceArrays], *,
                  indices: Sequence[np.ndarray | None] | None = None, folds: int = 3,
                  seed: int = 0, embeddings: bool | None = None, by_source: bool = False,
                  **settings: Any) -> LengthPredictor:
    """Train a predictor in memory on compiled traces (the tuner's tuning split).

    Parameters
    ----------
    arrays_list
        Compiled traces; every request needs its prompt text. Responses with per-round offsets,
        when present, train the re-predictor.
    indices
        Per trace, the requests to train on (``None``: all of that trace).
    folds, seed, embeddings, settings
        See :func:`fit_predictor` (3 folds keep it at a few seconds for ~1,000 requests).
    by_source
        See :func:`fit_predictor`; off by default: the tuner replays held-out prompts of the
        same prompt sets, which folds by prompt imitate (holding out whole Spec-Bench
        categories would calibrate for a shift the replay does not have).
    """
    picks = list(indices) if indices is not None else [None] * len(arrays_list)
    if len(picks) != len(arrays_list):
        raise LapsdError(f"{len(arrays_list)} traces but {len(picks)} index arrays: pass one "
                         "per trace (None for all requests)")
    data = LengthData.concat([from_arrays(a, f"trace {k}", idx)
                              for k, (a, idx) in enumerate(zip(arrays_list, picks,
                                                                strict=True))])
    return fit_predictor(data, folds=folds, seed=seed, embeddings=embeddings,
                         by_source=by_source, **settings)


def calibrate_predictor(predictor: LengthPredictor, data: LengthData,
                        target_model: str | None = None) -> LengthPredictor:
    """A copy of ``predictor`` calibrated for the target model(s) of ``data``.

    Each model's offset and spread come from its own answers' residuals against the trained
    score (no retraining): a few hundred answers of a new model adapt the predictor to its
    verbosity. ``target_model`` restricts the calibration to that model and makes it the
    predictor's default; otherwise every model of ``data`` is calibrated, and the default
    becomes the data's only model (if it has one).

    Raises
    ------
    LapsdError
        When ``target_model`` is not in ``data``.
    """
    if target_model is not None:
        data = data.for_model(target_model)
    seen = seen_prompts(predictor, data.prompts)
    if seen["seen"]:
        warnings.warn(f"{seen['seen']} of {seen['distinct']} calibration prompts were in the "
                      "training data: their residuals are small, so the spread may be too "
                      "narrow; calibrate on other prompts", stacklevel=2)
    residuals = log_target(data.output_tokens) - predictor.model.score(data.prompts)
    calibration = Calibration.from_dict(copy.deepcopy(predictor.calibration.to_dict()))
    names = np.asarray(data.target_models, dtype=object)
    for m in data.models:
        calibration.add(m, residuals[names == m])
    card = copy.deepcopy(predictor.card)
    card["target_model"] = target_model or (data.models[0] if len(data.models) == 1
                                            else card.get("target_model"))
    card.setdefault("calibrated_on", []).append(
        {"models": data.models, "n": len(data), "sources": data.sources})
    return dataclasses.replace(predictor, calibration=calibration, card=card)

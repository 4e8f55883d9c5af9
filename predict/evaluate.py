"""Honest evaluation: splits by prompt text, ranking and error metrics, two baselines.

Every split groups examples by their prompt text, so the same prompt is never on both sides, also
when several target models answered it. Each result is reported next to two baselines computed in
the same run on the same split: ``mean`` (the training mean for every request) and ``length``
(log output length linear in log prompt characters). Ranking metrics of the constant ``mean``
baseline are undefined and reported as ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import kendalltau, spearmanr
from sklearn.model_selection import GroupKFold, GroupShuffleSplit

from lapsd.errors import LapsdError
from lapsd.predict.data import LengthData
from lapsd.predict.model import LengthPredictor, fit_predictor

#: Upper edges (tokens) of the length buckets for bucket accuracy: <=64, <=128, ..., >1024.
BUCKET_EDGES = (64, 128, 256, 512, 1024)
SYSTEMS = ("model", "mean", "length")


def prompt_groups(prompts: Sequence[str]) -> np.ndarray:
    """Group ids by prompt text (whitespace-stripped), so equal prompts share a group."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(p.strip(), len(ids)) for p in prompts], dtype=np.int64)


def prompt_split(prompts: Sequence[str], test_size: float = 0.2, seed: int = 0,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One train/test split with no prompt text on both sides."""
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train, test = next(splitter.split(prompts, groups=prompt_groups(prompts)))
    return train, test


def prompt_folds(prompts: Sequence[str], n_splits: int = 5, seed: int = 0,
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds by prompt text (shuffled groups)."""
    groups = prompt_groups(prompts)
    n_groups = int(groups.max()) + 1 if groups.size else 0
    if n_groups < n_splits:
        raise LapsdError(f"{n_groups} distinct prompts cannot make {n_splits} folds: use fewer "
                         "folds (--cv-folds) or more data")
    kfold = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(kfold.split(prompts, groups=groups))


def _rank_stat(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def metrics(true_tokens: np.ndarray, p50: np.ndarray, p90: np.ndarray | None = None,
            ) -> dict[str, float | None]:
    """Error and ranking metrics of predictions against true output lengths.

    Returns ``mae_tokens``, ``median_rel_error`` (median of ``|pred - true| / true``),
    ``spearman``, ``kendall_tau`` (tau-b), ``bucket_accuracy`` (same bucket of
    :data:`BUCKET_EDGES`) and, given ``p90``, ``p90_coverage`` (share of true lengths <= p90).
    """
    true = np.asarray(true_tokens, dtype=np.float64)
    pred = np.asarray(p50, dtype=np.float64)
    constant = np.ptp(pred) == 0.0
    out: dict[str, float | None] = {
        "n": float(true.size),
        "mae_tokens": float(np.mean(np.abs(pred - true))),
        "median_rel_error": float(np.median(np.abs(pred - true) / np.maximum(true, 1.0))),
        "spearman": None if constant else _rank_stat(spearmanr(pred, true)[0]),
        "kendall_tau": None if constant else _rank_stat(kendalltau(pred, true)[0]),
        "bucket_accuracy": float(np.mean(np.digitize(pred, BUCKET_EDGES, right=True)
                                         == np.digitize(true, BUCKET_EDGES, right=True))),
    }
    if p90 is not None:
        out["p90_coverage"] = float(np.mean(true <= np.asarray(p90)))
    return out


def evaluate_predictor(predictor: LengthPredictor, data: LengthData) -> dict[str, Any]:
    """Metrics of a trained predictor and its stored baselines on ``data``.

    Also reports ``train_prompt_overlap``: the share of ``data``'s prompts the predictor was
    trained on (from the model card's prompt hashes), which should be 0 for an honest number.
    """
    from lapsd.predict.persist import prompt_hashes

    p50, p90 = predictor.predict_lengths(data.prompts, data.categories)
    base = predictor.baseline_lengths(data.prompts)
    trained = set(predictor.card.get("train_prompt_hashes", []))
    hashes = prompt_hashes(data.prompts)
    return {
        "model": metrics(data.output_tokens, p50, p90),
        "mean": metrics(data.output_tokens, base["mean"]),
        "length": metrics(data.output_tokens, base["length"]),
        "train_prompt_overlap": float(np.mean([h in trained for h in hashes])) if trained
        else None,
    }


def _out_of_fold(train: LengthData, test: LengthData, **fit: Any,
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    predictor = fit_predictor(train.prompts, train.categories, train.output_tokens, **fit)
    p50, p90 = predictor.predict_lengths(test.prompts, test.categories)
    return p50, p90, predictor.baseline_lengths(test.prompts)


def _fold_average(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray,
                                     dict[str, np.ndarray]]],
                  ) -> dict[str, dict[str, float | None]]:
    """Metrics per fold, averaged with fold sizes as weights (``n`` is the total).

    Per fold rather than pooled: pooling would rank the mean baseline's per-fold constants
    against each other and give it a spurious, non-zero Kendall tau.
    """
    per_fold = [{"model": metrics(true, p50, p90), "mean": metrics(true, base["mean"]),
                 "length": metrics(true, base["length"])} for true, p50, p90, base in parts]
    weights = np.array([p[0].size for p in parts], dtype=np.float64)
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
    """K-fold evaluation by prompt; metrics per fold, averaged (see :func:`_fold_average`).

    ``fit`` is passed to :func:`lapsd.predict.model.fit_predictor` (``embeddings=``, regressor
    settings).
    """
    parts = []
    for train, test in prompt_folds(data.prompts, n_splits, seed):
        tr, te = data.subset(train), data.subset(test)
        parts.append((te.output_tokens, *_out_of_fold(tr, te, **fit)))
    return _fold_average(parts)


def cross_model(data: LengthData, held_out: str, n_splits: int = 5, seed: int = 0,
                **fit: Any) -> dict[str, dict[str, float | None]]:
    """Train on the other models' responses, evaluate on ``held_out``'s, split by prompt.

    For each fold, the training rows are the other models' answers to the training prompts and
    the test rows are ``held_out``'s answers to the test prompts, so neither the model nor the
    prompt was seen in training.
    """
    if held_out not in data.models:
        raise LapsdError(f"held-out model {held_out!r} is not in the data ({data.models})")
    others = [i for i, m in enumerate(data.target_models) if m != held_out]
    if not others:
        raise LapsdError("cross-model evaluation needs at least one other model in the data")
    target = data.for_model(held_out)
    parts = []
    for _, test in prompt_folds(target.prompts, n_splits, seed):
        test_prompts = {target.prompts[i].strip() for i in test}
        train_idx = [i for i in others if data.prompts[i].strip() not in test_prompts]
        tr, te = data.subset(train_idx), target.subset(test)
        parts.append((te.output_tokens, *_out_of_fold(tr, te, **fit)))
    return _fold_average(parts)

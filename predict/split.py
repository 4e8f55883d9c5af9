"""What counts as the same prompt, and splits that never put one prompt on both sides.

Two requests have the same prompt when their texts are equal after :func:`normalize_prompt`
(stripped, whitespace runs as one space): every split and fold here groups by that, also when
several target models answered one prompt, and :func:`seen_prompts` checks a model card's
training prompts the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from sklearn.model_selection import GroupKFold, GroupShuffleSplit

from lapsd.errors import LapsdError


class Carded(Protocol):
    """A trained predictor of either kind: it has a model card."""

    card: dict[str, Any]


def normalize_prompt(prompt: str) -> str:
    """The form prompts are compared in: stripped, whitespace runs as one space."""
    return " ".join(prompt.split())


def prompt_groups(prompts: Sequence[str]) -> np.ndarray:
    """Group ids by prompt text (:func:`normalize_prompt`), so equal prompts share a group."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(normalize_prompt(p), len(ids)) for p in prompts],
                    dtype=np.int64)


def prompt_split(prompts: Sequence[str], test_size: float = 0.2, seed: int = 0,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One train/test split with no prompt text on both sides."""
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train, test = next(splitter.split(prompts, groups=prompt_groups(prompts)))
    return train, test


def source_groups(prompts: Sequence[str], categories: Sequence[str | None],
                  n_splits: int) -> np.ndarray:
    """Group ids by prompt source (category) where that makes ``n_splits`` folds, else by prompt.

    Folds that hold out whole sources (alpaca_eval's five prompt collections, Spec-Bench's
    categories) measure errors on prompts unlike the training ones, which is what a predictor
    meets on another prompt set; equal prompts always share a source's group.
    """
    known = [c for c in categories if c]
    if len(known) < len(categories) or len(set(known)) < n_splits:
        return prompt_groups(prompts)
    by_prompt: dict[str, str] = {}
    for p, c in zip(prompts, categories, strict=True):
        by_prompt.setdefault(normalize_prompt(p), str(c))
    names = [by_prompt[normalize_prompt(p)] for p in prompts]
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(n, len(ids)) for n in names], dtype=np.int64)


def prompt_folds(prompts: Sequence[str], n_splits: int = 5, seed: int = 0,
                 groups: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds by prompt text (shuffled groups), or by the given ``groups``."""
    groups = prompt_groups(prompts) if groups is None else groups
    n_groups = int(groups.max()) + 1 if groups.size else 0
    if n_groups < n_splits:
        raise LapsdError(f"{n_groups} distinct prompts or sources cannot make {n_splits} folds: "
                         "use fewer folds (--cv-folds) or more data")
    kfold = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(kfold.split(prompts, groups=groups))


def check_training(n: int, least: int, folds: int, what: str) -> None:
    """Refuse to train on fewer than ``least`` ``what`` or with fewer than 2 ``folds``."""
    if n < least:
        raise LapsdError(f"only {n} {what}: a predictor needs at least {least} (a few hundred "
                         "for useful rankings)")
    if folds < 2:
        raise LapsdError(f"folds={folds}: calibration needs out-of-fold predictions, use at "
                         "least 2 folds (--cv-folds)")


def prompt_hashes(prompts: Sequence[str]) -> list[str]:
    """Short SHA-256 digests of the prompts' normalised texts (a model card's training prompts)."""
    return [hashlib.sha256(normalize_prompt(p).encode()).hexdigest()[:16] for p in prompts]


def seen_prompts(predictor: Carded, prompts: Sequence[str]) -> dict[str, Any]:
    """How many of ``prompts`` (distinct prompts) the predictor was trained on (model card)."""
    trained = set(predictor.card.get("train_prompt_hashes", []))
    distinct = sorted({normalize_prompt(p) for p in prompts})
    seen = sum(h in trained for h in prompt_hashes(distinct))
    return {"seen": seen, "distinct": len(distinct),
            "share": seen / len(distinct) if distinct else 0.0, "known": bool(trained)}

"""Evaluation: splits and cross-dataset training never leak prompts; metrics; seen prompts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lapsd.predict.cli import seen_warning
from lapsd.predict.data import LengthData
from lapsd.predict.evaluate import unseen_training
from lapsd.predict.metrics import metrics
from lapsd.predict.split import normalize_prompt, prompt_folds, prompt_split, source_groups

_POOL = [f"prompt {i}" for i in range(12)] + ["  prompt 1 ", "prompt\n2"]
prompt_lists = st.lists(st.sampled_from(_POOL), min_size=6, max_size=60)


@settings(max_examples=40, deadline=None)
@given(prompts=prompt_lists, seed=st.integers(0, 10))
def test_splits_never_share_a_prompt(prompts: list[str], seed: int) -> None:
    assume(len({normalize_prompt(p) for p in prompts}) >= 3)
    train, test = prompt_split(prompts, 0.3, seed)
    assert not ({normalize_prompt(prompts[i]) for i in train}
                & {normalize_prompt(prompts[i]) for i in test})
    for train, test in prompt_folds(prompts, 3, seed):
        assert not ({normalize_prompt(prompts[i]) for i in train}
                    & {normalize_prompt(prompts[i]) for i in test})
        assert len(train) + len(test) == len(prompts)


@settings(max_examples=60, deadline=None)
@given(train=prompt_lists, evaluated=st.lists(st.sampled_from(_POOL), min_size=1, max_size=20))
def test_cross_dataset_training_never_sees_an_evaluated_prompt(train: list[str],
                                                               evaluated: list[str]) -> None:
    data = LengthData(train, [None] * len(train), np.arange(1, len(train) + 1),
                      ["m"] * len(train))
    kept, dropped = unseen_training(data, evaluated)
    held = {normalize_prompt(p) for p in evaluated}
    assert not {normalize_prompt(p) for p in kept.prompts} & held
    assert dropped == sum(normalize_prompt(p) in held for p in train)
    assert len(kept) + dropped == len(train)


def test_source_folds_hold_out_whole_sources() -> None:
    prompts = [f"p{i}" for i in range(30)] + ["p0"]
    cats = [f"c{i % 5}" for i in range(30)] + ["c3"]  # a repeated prompt keeps its first source
    groups = source_groups(prompts, cats, 5)
    assert groups[-1] == groups[0] and len(set(groups.tolist())) == 5
    for train, test in prompt_folds(prompts, 5, 0, groups):
        assert not {cats[i] for i in train if i < 30} & {cats[i] for i in test if i < 30}
        assert not set(groups[train].tolist()) & set(groups[test].tolist())
    # too few sources, or unknown ones: folds by prompt
    assert len(set(source_groups(prompts, [None] * 31, 5).tolist())) == 30


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=3, max_size=50, unique=True))
def test_metrics_perfect_and_rank_invariant(lengths: list[int]) -> None:
    true = np.array(lengths, dtype=float)
    perfect = metrics(true, true, true, true)
    assert perfect["mae_tokens"] == 0 and perfect["kendall_tau"] == pytest.approx(1.0)
    assert perfect["bucket_accuracy"] == 1.0 and perfect["p90_coverage"] == 1.0
    assert perfect["coverage_80"] == 1.0
    assert metrics(true, true, true, true + 1)["coverage_80"] == 0.0
    # ranking metrics only see the order of the predictions
    assert metrics(true, np.sqrt(true))["kendall_tau"] == pytest.approx(1.0)
    assert metrics(true, np.full(true.size, 3.0))["kendall_tau"] is None


def test_seen_warning_shows_count_and_a_precise_share() -> None:
    text = seen_warning({"seen": 2, "distinct": 560, "share": 2 / 560, "known": True})
    assert text is not None and "2 of 560" in text and "0.36%" in text
    assert seen_warning({"seen": 0, "distinct": 560, "share": 0.0, "known": True}) is None

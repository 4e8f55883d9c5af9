"""The prompt-based split: every prompt on one side only, deterministic."""

from __future__ import annotations

import numpy as np

from lapsd.replay.arrays import TraceArrays
from lapsd.replay.trace import read_trace
from lapsd.tune.split import split_by_prompt

from .conftest import ROOT


def test_split_by_prompt_has_no_overlap() -> None:
    for name in ("specbench-vicuna7b-eagle", "specbench-llama3-8b-eagle2"):
        arrays = TraceArrays.from_trace(read_trace(ROOT / "examples" / name))
        tune_idx, held_idx = split_by_prompt(arrays, 0.3, seed=0)
        assert tune_idx.size + held_idx.size == arrays.n_requests
        assert not set(tune_idx) & set(held_idx)
        tune_prompts = {arrays.prompts[i] for i in tune_idx}
        held_prompts = {arrays.prompts[i] for i in held_idx}
        assert not tune_prompts & held_prompts
        assert 0.2 < held_idx.size / arrays.n_requests < 0.4
        again = split_by_prompt(arrays, 0.3, seed=0)
        assert np.array_equal(again[0], tune_idx)


def test_same_prompt_same_side_with_duplicates() -> None:
    arrays = TraceArrays.from_trace(read_trace(ROOT / "examples" / "specbench-vicuna7b-eagle"))
    doubled = arrays.subset(np.concatenate([np.arange(100), np.arange(100)]))
    tune_idx, held_idx = split_by_prompt(doubled, 0.5, seed=4)
    held = set(held_idx.tolist())
    assert all((i in held) == (i + 100 in held) for i in range(100))
    assert tune_idx.size and held_idx.size

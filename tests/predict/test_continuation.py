"""Re-prediction from the text so far, and the replay's update source."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lapsd.predict.apply import update_source
from lapsd.predict.continuation import TEXT_NAMES, text_row
from lapsd.predict.data import LengthData
from lapsd.predict.evaluate import remaining_metrics
from lapsd.predict.model import LengthPredictor
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.trace import Trace


def test_text_features_read_the_partial_answer() -> None:
    text = "Here are 5 tips:\n\n1. Sleep well.\n2. Eat well.\n3. Move"
    row = dict(zip(TEXT_NAMES, text_row(text, 20, 5.0), strict=True))
    assert row["largest_item"] == 3 and row["in_list"] == 1.0 and row["items_left"] == 2
    assert row["ends_sentence"] == 0.0 and row["open_code"] == 0.0
    done = dict(zip(TEXT_NAMES, text_row("```py\nx = 1\n```\nI hope this helps!", 12, 0.0),
                    strict=True))
    assert done["closing_phrase"] == 1.0 and done["code_blocks"] == 1.0
    assert math.isnan(done["items_left"])


def test_repredicting_beats_the_prompt_only_belief(predictor: LengthPredictor,
                                                   vicuna: LengthData) -> None:
    held = vicuna.subset(range(400, 805))  # prompts the fixture predictor never saw
    result = remaining_metrics(predictor, held, (0, 64, 128), "vicuna-7b-v1.3")
    assert result[0]["repredicted"] == result[0]["prompt_only"]
    for g in (64, 128):
        assert (result[g]["repredicted"]["mae_tokens"]
                < result[g]["prompt_only"]["mae_tokens"]), g


def test_update_source_updates_at_the_right_rounds(predictor: LengthPredictor,
                                                   eagle_trace: Trace) -> None:
    arrays = TraceArrays.from_trace(eagle_trace)
    index = np.array([3, 0, 3])
    updates = update_source(predictor, every=4)(arrays, index)
    assert len(updates) == 3 and updates[0] == updates[2]
    for j, i in enumerate(index):
        n_rounds = int(arrays.offsets[i + 1] - arrays.offsets[i])
        assert [r for r, _ in updates[j]] == list(range(4, n_rounds, 4))
        assert all(b.cap == arrays.max_new_tokens and b.median >= 1 and b.sigma > 0
                   for _, b in updates[j])
    # Without the text (an example trace keeps none), updates still come, from prompt and g.
    blind = TraceArrays.from_trace(eagle_trace.__class__(
        eagle_trace.requests.drop("response"), eagle_trace.rounds.drop("response_chars"),
        eagle_trace.manifest))
    assert [r for r, _ in update_source(predictor, 16)(blind, index[:1])[0]] == list(
        range(16, int(arrays.offsets[4] - arrays.offsets[3]), 16))
    with pytest.raises(ValueError, match="positive"):
        update_source(predictor, 0)

"""The pooled model, its per-target calibration and conformal coverage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lapsd.predict.calibrate import SHRINK, Calibration, conformal_sigma
from lapsd.predict.cues import CUE_NAMES, cue_row
from lapsd.predict.data import LengthData
from lapsd.predict.evaluate import score_predictor
from lapsd.predict.model import LengthPredictor
from lapsd.predict.split import prompt_split
from lapsd.predict.train import calibrate_predictor, fit_on_arrays, fit_predictor
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.trace import read_trace

from .conftest import FAST, POOLED


def test_cues_read_what_the_instruction_asks() -> None:
    row = dict(zip(CUE_NAMES, cue_row("List 10 ideas for a birthday party, briefly."),
                   strict=True))
    assert row["asked_items"] == pytest.approx(np.log1p(10))
    assert row["brief"] == 1.0 and row["list"] == 1.0 and row["translate"] == 0.0
    row = dict(zip(CUE_NAMES, cue_row("Translate German to English: " + "Das ist gut. " * 9),
                   strict=True))
    assert row["translate"] == 1.0 and row["payload_x_translate"] > 4.0
    row = dict(zip(CUE_NAMES, cue_row("Passage one.\nPassage two is long.\nWho wrote it?"),
                   strict=True))
    assert row["factoid"] == 1.0  # the question on the last line is part of the instruction
    assert dict(zip(CUE_NAMES, cue_row("Is the sky blue?"), strict=True))["yes_no"] == 1.0


def test_pooled_training_learns_each_models_verbosity(predictor: LengthPredictor) -> None:
    cal = predictor.calibration
    assert set(cal.offsets) == set(POOLED)
    # vicuna answers alpaca_eval about 2.8x longer than alpaca-7b (characters, README)
    assert cal.offsets["vicuna-7b-v1.3"] - cal.offsets["alpaca-7b"] > np.log(2.0)
    prompts = ["Write a long essay about the history of Rome.", "What is 2 + 2?"]
    terse, _ = predictor.predict_lengths(prompts, "alpaca-7b")
    verbose, _ = predictor.predict_lengths(prompts, "vicuna-7b-v1.3")
    np.testing.assert_allclose(verbose / terse, np.exp(cal.offsets["vicuna-7b-v1.3"]
                                                       - cal.offsets["alpaca-7b"]))
    assert predictor.default_target == "vicuna-7b-v1.3"
    assert predictor.card["models"] == sorted(POOLED)


def test_conformal_interval_covers_held_out_prompts(pooled: LengthData) -> None:
    # Exchangeable held-out prompts (a random prompt split of 2 x 400 answers): split-conformal
    # promises at least 80% coverage up to sampling noise. 264 held-out answers: the binomial
    # sd is 0.025, and each model's spread is estimated from ~270 residuals; the tolerance is
    # 0.08 (per model, measured 0.886 for alpaca-7b and 0.742 for vicuna-7b-v1.3: ~130 answers
    # each are too few for a per-model bound).
    train, test = prompt_split(pooled.prompts, 0.33, seed=1)
    predictor = fit_predictor(pooled.subset(train), folds=3, by_source=False,
                              continuation=False, **FAST)
    held = pooled.subset(test)
    covered = []
    for model in POOLED:
        part = held.for_model(model)
        cover = score_predictor(predictor, part, model)["model"]["coverage_80"]
        covered.append(cover * len(part))
    assert sum(covered) / len(held) == pytest.approx(0.80, abs=0.08)


def test_conformal_sigma_and_calibration_rules() -> None:
    rng = np.random.default_rng(0)
    r = rng.normal(0.0, 0.7, 20_000)
    assert conformal_sigma(r) == pytest.approx(0.7, rel=0.03)
    cal = Calibration.fit(np.r_[r[:100] + 1.0, r[100:110]], ["a"] * 100 + ["b"] * 10)
    assert cal.offsets["a"] == pytest.approx(1.0, abs=0.2)
    assert cal.sigmas["b"] == cal.pooled_sigma  # too few residuals for a spread of its own
    assert cal.resolve(None) == (cal.pooled_offset, cal.pooled_sigma)
    assert cal.resolve("unknown") == (cal.pooled_offset, cal.pooled_sigma)
    with pytest.raises(ValueError, match=r"no calibration.*lapsd predict calibrate"):
        cal.resolve("unknown", strict=True)
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_calibrating_a_new_model_adapts_its_offset(predictor: LengthPredictor,
                                                   pooled: LengthData) -> None:
    with pytest.raises(ValueError, match="no calibration"):
        predictor.predictions(["Hi"], "my-model", strict=True)
    mine = pooled.for_model("vicuna-7b-v1.3").with_models({"vicuna-7b-v1.3": "my-model"})
    longer = LengthData(mine.prompts, mine.categories, mine.output_tokens * 2,
                        mine.target_models)
    with pytest.warns(UserWarning, match="were in the training data"):
        same = calibrate_predictor(predictor, mine, "my-model")
        adapted = calibrate_predictor(predictor, longer, "my-model")
    assert adapted.default_target == "my-model"
    assert "my-model" not in predictor.calibration.offsets  # the original is unchanged
    # twice as verbose: the offset moves by log 2, shrunk by n / (n + SHRINK) toward the pool
    shift = adapted.calibration.offsets["my-model"] - same.calibration.offsets["my-model"]
    assert shift == pytest.approx(np.log(2.0) * len(mine) / (len(mine) + SHRINK))
    belief = adapted.predictions(["Hi"], cap=512.0)[0]
    assert isinstance(belief, LengthPrediction) and belief.cap == 512.0


def test_fit_on_arrays_trains_in_memory(examples_dir: Path) -> None:
    arrays = TraceArrays.from_trace(read_trace(examples_dir / "smollm2-layers-28"))
    half = np.arange(0, arrays.n_requests, 2)
    predictor = fit_on_arrays([arrays], indices=[half], **FAST)
    assert predictor.card["n_train"] == half.size
    assert predictor.continuation is None  # the example traces keep no text
    p50, p90 = predictor.predict_lengths([arrays.prompts[1] or ""])
    assert 1.0 <= p50[0] <= p90[0]
    with pytest.raises(ValueError, match="one per trace"):
        fit_on_arrays([arrays], indices=[half, half])

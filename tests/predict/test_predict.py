"""Persistence, trace integration and the ``lapsd predict`` command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from skops import io as sio

from lapsd.cli import main as run
from lapsd.predict.apply import apply_to_trace, predictor_source, update_source
from lapsd.predict.data import LengthData, load_data
from lapsd.predict.model import LengthPredictor
from lapsd.predict.persist import FORMAT, FORMAT_VERSION, load_predictor
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.trace import TraceError, read_trace, write_trace

from .conftest import ECOMMERCE, QUESTIONS, SPECBENCH


def test_save_load_round_trip(predictor: LengthPredictor, vicuna: LengthData,
                              model_file: Path) -> None:
    prompts = vicuna.prompts[400:440]
    p50, p90 = predictor.predict_lengths(prompts)
    again = load_predictor(model_file).predict_lengths(prompts)
    np.testing.assert_array_equal(p50, again[0])
    np.testing.assert_array_equal(p90, again[1])
    assert np.all(p50 >= 1) and np.all(p90 >= p50)
    card = predictor.card
    assert card["format"] == FORMAT and card["format_version"] == FORMAT_VERSION
    assert card["target_model"] == "vicuna-7b-v1.3"
    assert card["training_data"][0]["sha256"]
    assert {"scikit-learn", "skops", "numpy"} <= set(card["libraries"])
    assert card["continuation"]["cuts"].startswith("estimated")
    beliefs = predictor.predictions(prompts[:3], cap=1024.0)
    assert all(isinstance(b, LengthPrediction) and b.sigma > 0 and b.cap == 1024.0
               for b in beliefs)


class _OldRegressor:
    """Stands in for format 2's LengthRegressor (same module and name in the file)."""


_OldRegressor.__module__ = "lapsd.predict.model"
_OldRegressor.__qualname__ = _OldRegressor.__name__ = "LengthRegressor"


def test_bad_and_old_files_rejected(tmp_path: Path) -> None:
    cases = {"text.skops": None, "other.skops": {"weights": [1, 2]},
             "future.skops": {"format": FORMAT, "format_version": 99},
             "v2.skops": {"format": FORMAT, "format_version": 2},
             "old.skops": {"format": FORMAT, "format_version": 2, "pipeline": _OldRegressor()},
             "untrusted.skops": {"format": FORMAT, "payload": LengthData([], [], np.zeros(0), [])}}
    (tmp_path / "text.skops").write_text("not a model")
    for name, payload in cases.items():
        if payload is not None:
            sio.dump(payload, tmp_path / name)
    messages = {}
    for name in cases:
        with pytest.raises(ValueError) as info:
            load_predictor(tmp_path / name)
        messages[name] = str(info.value)
    assert "not a lapsd predictor" in messages["text.skops"]
    assert "not a lapsd predictor" in messages["other.skops"]
    assert "format version 99" in messages["future.skops"]
    for old in ("v2.skops", "old.skops"):
        assert "retrain it with `lapsd predict train" in messages[old]
    assert "older lapsd (format 2)" in messages["old.skops"]
    assert "refusing" in messages["untrusted.skops"]
    with pytest.raises(ValueError, match="not found"):
        load_predictor(tmp_path / "missing.skops")


def test_apply_writes_columns_and_sources(model_file: Path, predictor: LengthPredictor,
                                          trace_dir: Path, tmp_path: Path) -> None:
    out = apply_to_trace(model_file, trace_dir, tmp_path / "with_pred")
    trace = read_trace(out)
    req = trace.requests
    assert req["predicted_tokens"].min() >= 1
    assert (req["predicted_tokens_p90"] >= req["predicted_tokens"]).all()
    assert trace.manifest["predictions"]["target_model"] == "vicuna-7b-v1.3"
    assert "predicted_tokens" not in read_trace(trace_dir).requests.columns
    with pytest.raises(ValueError, match="no calibration"):
        apply_to_trace(model_file, trace_dir, tmp_path / "x", target_model="gpt-5")

    arrays = TraceArrays.from_trace(trace)
    index = np.array([0, 5, 0, 7])
    for source in (predictor_source(model_file), predictor_source(predictor)):
        beliefs = source(arrays, index)
        assert len(beliefs) == 4 and beliefs[0] == beliefs[2]
        assert beliefs[1].median == pytest.approx(float(req["predicted_tokens"][5]))
        assert all(b.cap == arrays.max_new_tokens for b in beliefs)


def test_apply_keeps_a_traces_hidden_states(model_file: Path, trace_dir: Path,
                                           tmp_path: Path) -> None:
    from tests.replay.test_states import with_states

    src = write_trace(with_states(read_trace(trace_dir)), tmp_path / "states")
    out = read_trace(apply_to_trace(model_file, src, tmp_path / "with_pred"))
    assert out.states is not None and out.states.equals(read_trace(src).states)
    assert out.manifest["states"] == read_trace(src).manifest["states"]
    assert "predicted_tokens" in out.requests.columns


def test_sources_refuse_a_predictor_without_text_and_traces_without_prompts(
        trace_dir: Path, tmp_path: Path, model_file: Path) -> None:
    from lapsd.predict.train import fit_predictor

    no_text = load_data([trace_dir])
    with pytest.raises(ValueError, match="no re-predictor"):
        update_source(fit_predictor(no_text, folds=2, max_iter=20), 4)
    trace = read_trace(trace_dir)
    trace.requests = trace.requests.with_columns(trace.requests["prompt"].set(
        trace.requests["request_id"] == trace.requests["request_id"][3], None))
    bad = write_trace(trace, tmp_path / "no_prompt")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(TraceError, match="no prompt text"):
        apply_to_trace(model_file, bad)
    with pytest.raises(TraceError, match="no prompt text"):
        load_data([bad])
    with pytest.raises(ValueError, match="no prompt text"):
        predictor_source(model_file)(TraceArrays.from_trace(trace), np.array([3]))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_train_eval_cv_calibrate_apply(trace_dir: Path, tmp_path: Path, shared_data: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "eagle.skops"
    assert run(["predict", "train", "--data", str(trace_dir), "--out", str(model),
                "--cv-folds", "2", "--no-embeddings"]) == 0
    report = tmp_path / "eval.json"
    assert run(["predict", "eval", "--model", str(model), "--data",
                str(shared_data / SPECBENCH), "--questions", str(shared_data / QUESTIONS),
                "--json", str(report)]) == 0
    result = json.loads(report.read_text())["result"]
    seen = result["seen_prompts"]
    assert seen["seen"] == 150 and seen["distinct"] == 560  # the trace's 150 turns were trained on
    assert result["train_prompt_overlap"] == pytest.approx(150 / 560)
    assert set(result) >= {"model", "mean", "length"}
    capsys.readouterr()
    assert run(["predict", "eval", "--model", str(model), "--data", str(trace_dir),
                "--json", "-"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["result"]["train_prompt_overlap"] == 1.0
    assert "train_prompt_hashes" not in printed["card"]
    assert not Path("-").exists()
    assert run(["predict", "eval", "--model", str(model), "--data", str(trace_dir),
                "--target-model", "nope"]) == 2
    assert "no calibration" in capsys.readouterr().err
    # cross-dataset: train on the example trace's Spec-Bench turns, evaluate on e-commerce
    assert run(["predict", "cv", "--data", str(trace_dir), "--eval-data",
                str(shared_data / ECOMMERCE), "--no-embeddings", "--json", "-"]) == 0
    cross = json.loads(capsys.readouterr().out)["cross_dataset"]
    assert cross["seen_prompts"]["seen"] == 0 and cross["dropped_seen"] == 0
    assert cross["per_model"]["vicuna-7b-v1.3"]["model"]["n"] == 50
    assert cross["eval_sets"] == ["sentiment_analysis"]
    # every training prompt is evaluated too: nothing unseen is left to train on
    assert run(["predict", "cv", "--data", str(trace_dir), "--eval-data",
                str(shared_data / SPECBENCH), "--eval-questions",
                str(shared_data / QUESTIONS), "--no-embeddings"]) == 2
    assert "nothing unseen" in capsys.readouterr().err
    calibrated = tmp_path / "calibrated.skops"
    assert run(["predict", "calibrate", "--model", str(model), "--data",
                str(shared_data / SPECBENCH), "--questions", str(shared_data / QUESTIONS),
                "--out", str(calibrated)]) == 0
    assert load_predictor(calibrated).calibration.counts["vicuna-7b-v1.3"] == 560
    copy = tmp_path / "trace"
    shutil.copytree(trace_dir, copy)
    assert run(["predict", "apply", "--model", str(calibrated), str(copy)]) == 0
    assert "predicted_tokens_p90" in read_trace(copy).requests.columns

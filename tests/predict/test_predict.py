"""Tests of the output-length predictor: data, evaluation, persistence, trace integration, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from skops import io as sio

from lapsd.cli import main as run
from lapsd.predict.apply import apply_to_trace, predictor_source
from lapsd.predict.data import LengthData, load_alpaca_eval, load_data, load_token_counter
from lapsd.predict.evaluate import cross_model, cross_validate, metrics, prompt_folds, prompt_split
from lapsd.predict.model import LengthPredictor
from lapsd.predict.persist import FORMAT, load_predictor
from lapsd.predict.train import select_target
from lapsd.replay.engine import TraceArrays
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.trace import TraceError, read_trace, write_trace

from .conftest import ALPACA, FAST, QUESTIONS, SPECBENCH

prompt_lists = st.lists(st.sampled_from([f"prompt {i}" for i in range(12)] + ["  prompt 1 "]),
                        min_size=6, max_size=60)


@settings(max_examples=40, deadline=None)
@given(prompts=prompt_lists, seed=st.integers(0, 10))
def test_splits_never_share_a_prompt(prompts: list[str], seed: int) -> None:
    assume(len({p.strip() for p in prompts}) >= 3)
    train, test = prompt_split(prompts, 0.3, seed)
    assert not {prompts[i].strip() for i in train} & {prompts[i].strip() for i in test}
    for train, test in prompt_folds(prompts, 3, seed):
        assert not {prompts[i].strip() for i in train} & {prompts[i].strip() for i in test}
        assert len(train) + len(test) == len(prompts)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=3, max_size=50, unique=True))
def test_metrics_perfect_and_rank_invariant(lengths: list[int]) -> None:
    true = np.array(lengths, dtype=float)
    perfect = metrics(true, true, true)
    assert perfect["mae_tokens"] == 0 and perfect["kendall_tau"] == pytest.approx(1.0)
    assert perfect["bucket_accuracy"] == 1.0 and perfect["p90_coverage"] == 1.0
    # ranking metrics only see the order of the predictions
    assert metrics(true, np.sqrt(true))["kendall_tau"] == pytest.approx(1.0)
    assert metrics(true, np.full(true.size, 3.0))["kendall_tau"] is None


def test_model_beats_mean_baseline(vicuna: LengthData) -> None:
    result = cross_validate(vicuna.subset(range(400)), n_splits=3, **FAST)
    model, mean = result["model"], result["mean"]
    assert model["kendall_tau"] > 0.1
    assert model["mae_tokens"] < mean["mae_tokens"]
    assert result["length"]["kendall_tau"] is not None
    assert 0.5 < model["p90_coverage"] <= 1.0


def test_cross_model_ranks_unseen_model(shared_data: Path) -> None:
    counter, how = load_token_counter(None)
    data = LengthData.concat([
        load_alpaca_eval(shared_data / ALPACA / f"{m}.json", counter, how).subset(range(240))
        for m in ("alpaca-7b", "vicuna-7b-v1.3")])
    result = cross_model(data, "vicuna-7b-v1.3", n_splits=3, **FAST)
    assert result["model"]["n"] == 240
    assert result["model"]["kendall_tau"] > 0.1


def test_save_load_round_trip(predictor: LengthPredictor, vicuna: LengthData,
                              model_file: Path) -> None:
    prompts = vicuna.prompts[300:340]
    p50, p90 = predictor.predict_lengths(prompts)
    again = load_predictor(model_file).predict_lengths(prompts)
    np.testing.assert_array_equal(p50, again[0])
    np.testing.assert_array_equal(p90, again[1])
    assert np.all(p50 >= 1) and np.all(p90 >= p50)
    card = predictor.card
    assert card["format"] == FORMAT and card["target_model"] == "vicuna-7b-v1.3"
    assert card["training_data"][0]["sha256"]
    assert {"scikit-learn", "skops", "numpy"} <= set(card["libraries"])
    beliefs = predictor.predictions(prompts[:3])
    assert all(isinstance(b, LengthPrediction) and b.sigma >= 0 for b in beliefs)


def test_bad_files_rejected(tmp_path: Path, model_file: Path) -> None:
    cases = {"text.skops": None, "other.skops": {"weights": [1, 2]},
             "future.skops": {"format": FORMAT, "format_version": 99},
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
    assert "refusing" in messages["untrusted.skops"]
    with pytest.raises(ValueError, match="not found"):
        load_predictor(tmp_path / "missing.skops")


def test_apply_writes_columns_and_source(model_file: Path, trace_dir: Path,
                                         tmp_path: Path) -> None:
    out = apply_to_trace(model_file, trace_dir, tmp_path / "with_pred")
    trace = read_trace(out)
    req = trace.requests
    assert req["predicted_tokens"].min() >= 1
    assert (req["predicted_tokens_p90"] >= req["predicted_tokens"]).all()
    assert trace.manifest["predictions"]["target_model"] == "vicuna-7b-v1.3"
    assert "predicted_tokens" not in read_trace(trace_dir).requests.columns

    arrays = TraceArrays.from_trace(trace)
    index = np.array([0, 5, 0, 7])
    beliefs = predictor_source(model_file)(arrays, index)
    assert len(beliefs) == 4 and beliefs[0] == beliefs[2]
    assert beliefs[1].median == pytest.approx(float(req["predicted_tokens"][5]))


def test_apply_refuses_trace_without_prompts(model_file: Path, trace_dir: Path,
                                             tmp_path: Path) -> None:
    trace = read_trace(trace_dir)
    trace.requests = trace.requests.with_columns(trace.requests["prompt"].set(
        trace.requests["request_id"] == trace.requests["request_id"][3], None))
    bad = write_trace(trace, tmp_path / "no_prompt")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(TraceError, match="no prompt text"):
        apply_to_trace(model_file, bad)
    with pytest.raises(TraceError, match="no prompt text"):
        load_data([bad])
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert "predicted_tokens" not in read_trace(bad).requests.columns


def test_bad_inputs_have_clear_errors(tmp_path: Path) -> None:
    f = tmp_path / "outputs.json"
    f.write_text(json.dumps([{"instruction": "Hi", "output": "Hello"},
                             {"instruction": "  ", "output": "x"}]))
    with pytest.raises(ValueError, match="example 1 has an empty"):
        load_data([f])
    f.write_text(json.dumps([{"instruction": "Hi"}]))
    with pytest.raises(ValueError, match=r"lacks the text field\(s\) \['output'\]"):
        load_data([f])
    answers = tmp_path / "answers.jsonl"
    answers.write_text("{}\n")
    with pytest.raises(ValueError, match="--questions"):
        load_data([answers])
    junk = tmp_path / "model.gguf"
    junk.write_bytes(b"not gguf")
    with pytest.raises(ValueError, match="cannot load a tokenizer"):
        load_token_counter(junk)
    with pytest.raises(ValueError, match="not found"):
        load_token_counter(tmp_path / "nothing")


def test_tokenizer_folder_counts_tokens(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path)
    count, how = load_token_counter(tmp_path)
    assert count(["hello world again", "hello"]).tolist() == [3, 1]
    assert how.startswith("tokenizer:")


def test_several_models_need_a_target(vicuna: LengthData) -> None:
    both = LengthData.concat([vicuna.subset(range(5)), LengthData(
        ["a"], [None], np.array([3]), ["other"])])
    with pytest.raises(ValueError, match="--target-model"):
        select_target(both, None)
    with pytest.raises(ValueError, match="not in the data"):
        select_target(both, "missing")
    assert len(select_target(both, "other")[0]) == 1


def test_cli_train_eval_apply(trace_dir: Path, tmp_path: Path, shared_data: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "eagle.skops"
    assert run(["predict", "train", "--data", str(trace_dir), "--out", str(model),
                "--cv-folds", "0"]) == 0
    report = tmp_path / "eval.json"
    assert run(["predict", "eval", "--model", str(model), "--data",
                str(shared_data / SPECBENCH), "--questions", str(shared_data / QUESTIONS),
                "--json", str(report)]) == 0
    result = json.loads(report.read_text())["result"]
    assert 0.0 < result["train_prompt_overlap"] < 1.0  # eval reads all 560 turns
    assert set(result) >= {"model", "mean", "length"}
    capsys.readouterr()
    assert run(["predict", "eval", "--model", str(model), "--data", str(trace_dir),
                "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["result"]["train_prompt_overlap"] == 1.0
    assert not Path("-").exists()
    copy = tmp_path / "trace"
    shutil.copytree(trace_dir, copy)
    assert run(["predict", "apply", "--model", str(model), str(copy)]) == 0
    assert "predicted_tokens_p90" in read_trace(copy).requests.columns

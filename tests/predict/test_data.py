"""Readers of every prompt/answer layout the predictor trains on, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lapsd.predict.data import (
    LengthData,
    canonical_model,
    from_arrays,
    load_answers,
    load_data,
    load_token_counter,
)
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.trace import Trace

from .conftest import ECOMMERCE, MTBENCH, QUESTIONS, SPECBENCH


def test_specbench_answers_with_questions(shared_data: Path) -> None:
    data = load_data([shared_data / SPECBENCH], questions=shared_data / QUESTIONS)
    assert len(data) == 560 and data.models == ["vicuna-7b-v1.3"]
    assert data.token_count == "recorded" and data.n_with_text == 560
    assert data.sets == ["specbench_questions"]
    first = json.loads((shared_data / SPECBENCH).read_text().splitlines()[0])
    assert data.output_tokens[0] == first["choices"][0]["new_tokens"][0]
    assert data.responses[0] == first["choices"][0]["turns"][0]


def test_mtbench_answers_without_accept_lengths_find_their_questions(
        shared_data: Path) -> None:
    data = load_answers([shared_data / MTBENCH])  # mt_bench_question.jsonl lies beside it
    assert len(data) == 160 and data.models == ["vicuna-7b-v1.3"]
    assert data.token_count == "recorded"
    assert data.output_tokens.min() >= 1 and data.categories[0] == "writing"


def test_ecommerce_layout_finds_question_above_model_answer(shared_data: Path) -> None:
    data = load_data([shared_data / ECOMMERCE])
    assert len(data) == 50 and data.sets == ["sentiment_analysis"]
    assert all("sentiment" in p.lower() for p in data.prompts)
    assert data.categories[0] == "Sentiment_Analysis"


def _arena(tmp_path: Path) -> tuple[Path, Path]:
    bench = tmp_path / "arena-hard-v0.1"
    (bench / "model_answer").mkdir(parents=True)
    questions = [{"question_id": "328c149ed45a41c0", "category": "arena-hard-v0.1",
                  "turns": [{"content": "Write a haiku about rain."}]},
                 {"question_id": "1f07cf6d146d4038", "category": "arena-hard-v0.1",
                  "turns": ["Explain quicksort step by step."]}]
    (bench / "question.jsonl").write_text("\n".join(json.dumps(q) for q in questions) + "\n")
    answers = [{"question_id": "328c149ed45a41c0", "model_id": "gpt-4-0314",
                "choices": [{"index": 0, "turns": [{"content": "Soft rain on the roof",
                                                    "token_len": 7}]}]},
               {"question_id": "1f07cf6d146d4038", "model_id": "gpt-4-0314",
                "choices": [{"index": 0, "turns": ["Pick a pivot, then partition. " * 8]}]}]
    path = bench / "model_answer" / "gpt-4-0314.jsonl"
    path.write_text("\n".join(json.dumps(a) for a in answers) + "\n")
    return path, bench / "question.jsonl"


def test_arena_style_hex_ids_and_dict_turns(tmp_path: Path) -> None:
    answers, questions = _arena(tmp_path)
    with pytest.warns(UserWarning, match="estimated as characters"):
        data = load_data([answers])  # questions found above model_answer/
    assert data.prompts == ["Write a haiku about rain.", "Explain quicksort step by step."]
    assert data.output_tokens[0] == 7  # the recorded token_len
    assert data.output_tokens[1] == int(np.ceil(len("Pick a pivot, then partition. " * 8)
                                                / 3.7))
    assert data.token_count == "recorded + chars/3.7 estimate"
    again = load_answers([answers], [questions])
    assert again.prompts == data.prompts


def test_canonical_model_names() -> None:
    assert canonical_model("vicuna-7b-v1.3-eagle-float16-temperature-0.0") == "vicuna-7b-v1.3"
    assert canonical_model("medusa-vicuna-7b-v1.3-temperature-0.0-posterior_threshold-0.09"
                           ) == "vicuna-7b-v1.3"
    assert canonical_model("llama-2-chat-70b-fp16-ea-in-temperature-0.0") == "llama-2-chat-70b"
    assert canonical_model("Qwen2.5-7B-Instruct-sps-68m-float16-temp-0.0"
                           ) == "Qwen2.5-7B-Instruct"
    assert canonical_model("gpt-4-0314") == "gpt-4-0314"


def test_trace_text_offsets_are_kept(eagle_trace: Trace) -> None:
    arrays = TraceArrays.from_trace(eagle_trace)
    data = from_arrays(arrays, "eagle", np.arange(5))
    assert len(data) == 5 and data.n_with_text == 5
    tokens, chars = data.offsets[0]
    assert tokens[-1] == data.output_tokens[0] and chars[-1] == len(data.responses[0])


def test_bad_inputs_have_clear_errors(tmp_path: Path) -> None:
    f = tmp_path / "outputs.json"
    f.write_text(json.dumps([{"instruction": "Hi", "output": "Hello"},
                             {"instruction": "  ", "output": "x"}]))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="example 1 has an empty"):
        load_data([f])
    f.write_text(json.dumps([{"instruction": "Hi"}]))
    with pytest.warns(UserWarning), pytest.raises(ValueError,
                                                  match=r"lacks the text field\(s\) \['output'\]"):
        load_data([f])
    answers = tmp_path / "answers.jsonl"
    answers.write_text("{}\n")
    with pytest.raises(ValueError, match="--questions"):
        load_data([answers])
    questions = tmp_path / "question.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "turns": [" "]}) + "\n")
    answers.write_text(json.dumps({"question_id": 1, "choices": [
        {"turns": ["an answer"], "new_tokens": [3]}]}) + "\n")
    with pytest.raises(ValueError, match="empty or missing prompt"):
        load_data([answers], questions=questions)
    answers.write_text(json.dumps({"question_id": 2, "choices": [
        {"turns": ["x"], "new_tokens": [3]}]}) + "\n")
    with pytest.warns(UserWarning, match="question_id not in"), pytest.raises(
            ValueError, match="no usable answer turns"):
        load_data([answers], questions=questions)
    junk = tmp_path / "model.gguf"
    junk.write_bytes(b"not gguf")
    with pytest.raises(ValueError, match="cannot load a tokenizer"):
        load_token_counter(junk)
    with pytest.raises(ValueError, match="not found"):
        load_token_counter(tmp_path / "nothing")
    with pytest.raises(ValueError, match="different lengths"):
        LengthData(["a", "b"], [None], np.array([1, 2]), ["m", "m"])


def test_tokenizer_folder_counts_tokens(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path)
    count, how = load_token_counter(tmp_path)
    assert count(["hello world again", "hello"]).tolist() == [3, 1]
    assert how.startswith("tokenizer:")

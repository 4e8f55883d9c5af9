"""Importers of Spec-Bench answers and arrival traces, on the real shared data."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from lapsd.replay.importers.arrivals import read_arrivals
from lapsd.replay.importers.specbench import import_specbench
from lapsd.replay.trace import TraceError


def test_specbench_eagle(shared_data) -> None:
    src = shared_data / "specdec_specbench_vicuna7b_yukiki"
    trace, report = import_specbench(
        [src / "vicuna-7b-v1.3-eagle-float16-temperature-0.0.jsonl"],
        shared_data / "specbench_questions" / "question.jsonl")
    assert (report.records, report.turns, report.skipped) == (480, 560, [])
    assert trace.n_rounds == 25525  # one round per verification step (data README)
    assert trace.rounds["emitted"].sum() == trace.requests["output_tokens"].sum()
    assert trace.requests["k"].unique().to_list() == [5]
    assert trace.requests["prompt"].null_count() == 0
    assert trace.manifest["timing"] == "per_turn_mean"
    # The answer text, and an estimate of how much of it each round added.
    assert trace.requests["response"].null_count() == 0
    last = trace.rounds.group_by("request_id").agg(pl.col("response_chars").last())
    lengths = trace.requests.select("request_id", n=pl.col("response").str.len_chars())
    assert last.join(lengths, on="request_id").filter(
        pl.col("response_chars") != pl.col("n")).height == 0
    # Round times spread the turn's wall time: they add back up to it.
    per = trace.rounds.group_by("request_id").agg(s=pl.col("round_s").sum())
    joined = trace.requests.join(per, on="request_id")
    np.testing.assert_allclose(joined["s"], joined["total_s"], rtol=1e-9)


def test_specbench_broken_records_are_reported_and_skipped(shared_data, tmp_path) -> None:
    recycling = (shared_data / "specdec_specbench_vicuna7b_cringebench"
                 / "vicuna-7b-v1.3-recycling.jsonl")
    # Every Token Recycling record has more accept lengths than decoding steps: none is kept.
    with pytest.raises(TraceError, match=r"no usable records.*len\(accept_lengths\)"):
        import_specbench([recycling], max_token_mismatch=2)

    errors = (shared_data / "specdec_ecommerce_bnukhkadiev" / "multiclass_product_classification"
              / "model_answer")
    vanilla13b = next(p for p in errors.iterdir() if "13b" in p.name)
    trace, report = import_specbench([vanilla13b])
    assert len(report.skipped) == 8  # the README's 8 ERROR records (one turn each)
    assert all("ERROR" in s["reason"] or "wall_time" in s["reason"] for s in report.skipped)
    assert trace.n_requests == 42


def test_a_bad_turn_drops_that_turn_only(shared_data, tmp_path) -> None:
    src = shared_data / "specdec_specbench_vicuna7b_yukiki" / (
        "vicuna-7b-v1.3-eagle-float16-temperature-0.0.jsonl")
    records = [json.loads(x) for x in src.read_text().splitlines()]
    two = [r for r in records if len(r["choices"][0]["new_tokens"]) == 2][:3]
    for r in two:
        r["choices"][0]["new_tokens"][1] += 7  # turn 1 no longer matches its accept lengths
    f = tmp_path / "a.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in two))
    trace, report = import_specbench([f])
    assert [s["reason"][:7] for s in report.skipped] == ["turn 1:"] * 3
    assert trace.requests["request_id"].to_list() == [f"a:{r['question_id']}:0" for r in two]


def test_adaptive_draft_length_is_recorded_as_variable(shared_data, tmp_path) -> None:
    """HF assisted generation drafts a variable number of tokens: k and drafted stay null, and
    every statistic (inspect, LAPS-SD's estimate) is still defined."""
    from lapsd.replay.arrays import TraceArrays
    from lapsd.replay.engine import simulate
    from lapsd.replay.policies import create
    from lapsd.replay.trace import summarize
    from lapsd.replay.workload import build_workload

    sps = shared_data / "specdec_specbench_vicuna7b_yukiki" / (
        "vicuna-7b-v1.3-sps-68m-float16-temp-0.0.jsonl")
    trace, report = import_specbench([sps])
    assert trace.requests["k"].null_count() == trace.n_requests
    assert trace.rounds["drafted"].null_count() == trace.n_rounds
    assert "variable" in report.notes[0] and trace.manifest["draft_length"].startswith("var")
    summary = summarize(trace)
    assert summary["acceptance_rate"] is None
    assert summary["accepted_per_round"] == pytest.approx(2.502 - 1, abs=1e-3)  # data README
    arrays = TraceArrays.from_trace(trace)
    workload = build_workload("poisson:load=0.9,n=200,seed=1", arrays, "oracle:sigma=0.0")
    result = simulate(arrays, workload, create("laps-sd", arrays.scale))
    est = np.array(list(result.estimates.values()))
    assert est.size > 0 and np.isfinite(est).all() and (est > 0).all()
    # Forcing a fixed k keeps the old reading.
    forced, _ = import_specbench([sps], k=20)
    assert forced.requests["k"].unique().to_list() == [20]


def test_specbench_bad_json_line_is_reported(tmp_path, shared_data) -> None:
    src = shared_data / "specdec_specbench_vicuna7b_yukiki" / (
        "vicuna-7b-v1.3-eagle-float16-temperature-0.0.jsonl")
    lines = src.read_text().splitlines()[:5]
    lines.insert(2, "{not json")
    f = tmp_path / "a.jsonl"
    f.write_text("\n".join(lines))
    trace, report = import_specbench([f])
    assert report.skipped[0]["line"] == 3 and "not JSON" in report.skipped[0]["reason"]
    assert trace.n_requests == sum(len(json.loads(x)["choices"][0]["new_tokens"])
                                   for x in lines if x.startswith('{"'))


def test_arrival_traces(shared_data) -> None:
    azure = shared_data / "arrivals_azure_llm_2023"
    code = read_arrivals(azure / "AzureLLMInferenceTrace_code.csv")
    assert code.size == 8819 and code[0] == 0 and np.all(np.diff(code) >= 0)
    assert 3400 < code[-1] < 3500  # about an hour (data README: 3435.9 s)
    moon = read_arrivals(shared_data / "arrivals_mooncake_synthetic" / "synthetic_trace.jsonl")
    assert moon.size == 3993 and 1000 < moon[-1] < 1030


def test_arrival_trace_errors(tmp_path) -> None:
    bad = tmp_path / "a.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                   "2023-11-16 18:17:03.97,1,1\nnope,1,1\n")
    with pytest.raises(TraceError, match="row 1"):
        read_arrivals(bad)
    other = tmp_path / "x.txt"
    other.write_text("x")
    with pytest.raises(TraceError, match="unknown arrival-trace format"):
        read_arrivals(other)

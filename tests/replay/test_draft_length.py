"""Rounds at a shorter draft length, derived from a trace's recorded rounds (issue 26)."""

from __future__ import annotations

import json

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lapsd.cli import main
from lapsd.errors import LapsdError
from lapsd.replay.draft_length import at_draft_length
from lapsd.replay.trace import make_trace, new_manifest, read_trace

ROUND_COLS = ["request_id", "round", "drafted", "accepted", "emitted", "context_tokens"]
#: A round profile: 1 ms of verify and 2 ms per drafted token, flat in context.
PROFILE = [{"batch": 1, "context": c, "drafted": d, "draft_s": 0.002 * d, "verify_s": 0.001,
            "round_s": 0.001 + 0.002 * d} for c in (64, 4096) for d in range(9)]


def _trace(requests: list[list[tuple[int, int]]], k: int, budget: int):
    """A fixed-length-drafting trace: each request a list of (accepted, emitted) rounds."""
    rq, rd = [], []
    for i, rounds in enumerate(requests):
        rid, pos = f"r{i}", 0
        for j, (a, e) in enumerate(rounds):
            rd.append({"request_id": rid, "round": j, "drafted": min(k, budget - pos - 1),
                       "accepted": a, "emitted": e, "round_s": 0.001, "context_tokens": 10 + pos})
            pos += e
        rq.append({"request_id": rid, "source": "test", "prompt_tokens": 10, "k": k,
                   "finish_reason": "length" if pos == budget else "stop", "prefill_s": 0.0})
    manifest = new_manifest(timing="profiled_per_round", round_profile=PROFILE,
                            collector={"max_new_tokens": budget, "k": k})
    return make_trace(pl.DataFrame(rq), pl.DataFrame(rd), manifest)


@st.composite
def fixed_length_traces(draw):
    """Random greedy fixed-length drafting: per round, the accepted run then one target token."""
    k = draw(st.integers(1, 6))
    budget = draw(st.integers(2, 60))
    requests = []
    for _ in range(draw(st.integers(1, 4))):
        stop_at = draw(st.integers(1, budget))
        rounds, pos = [], 0
        while pos < stop_at:
            a = min(draw(st.integers(0, min(k, budget - pos - 1))), stop_at - pos - 1)
            rounds.append((a, a + 1))
            pos += a + 1
        requests.append(rounds)
    return _trace(requests, k, budget), k


def test_the_recorded_draft_length_gives_the_recorded_rounds(examples_dir):
    trace = read_trace(examples_dir / "smollm2-layers-28")
    derived = at_draft_length(trace, 4)
    assert derived.modelled == 0
    assert derived.trace.rounds.select(ROUND_COLS).equals(trace.rounds.select(ROUND_COLS))
    # a profiled collection's round times are its profile's: derived the same way
    for col in ("draft_s", "verify_s", "round_s"):
        assert (derived.trace.rounds[col] - trace.rounds[col]).abs().max() < 1e-12


def test_a_shorter_draft_on_a_real_collection_keeps_every_output(examples_dir):
    trace = read_trace(examples_dir / "smollm2-layers-28")
    derived = at_draft_length(trace, 2, seed=3).trace
    assert derived.requests["output_tokens"].to_list() == trace.requests["output_tokens"].to_list()
    assert derived.n_rounds > trace.n_rounds  # at most 3 tokens a round, not 5
    assert derived.rounds["drafted"].max() == 2 and set(derived.requests["k"]) == {2}
    assert derived.manifest["derived_draft_length"]["from_k"] == 4


def test_a_hand_worked_request():
    # k = 2, budget 6: positions 0 agree, 1 not; 2 not; 3, 4 agree, 5 untested (the bonus)
    trace = _trace([[(1, 2), (0, 1), (2, 3)]], k=2, budget=6)
    derived = at_draft_length(trace, 1)
    rows = derived.trace.rounds.select("drafted", "accepted", "emitted").rows()
    # at k' = 1 the last round, at position 5, may draft nothing (the budget): no untested test
    assert rows == [(1, 1, 2), (1, 0, 1), (1, 1, 2), (0, 0, 1)]
    assert derived.modelled == 0
    assert derived.trace.rounds["round_s"].to_list() == pytest.approx([0.003] * 3 + [0.001])


@settings(max_examples=60, deadline=None)
@given(fixed_length_traces(), st.integers(0, 6), st.integers(0, 3))
def test_derived_rounds_are_well_formed(case, k_new, seed):
    trace, k = case
    k_new = min(k_new, k)
    derived = at_draft_length(trace, k_new, seed=seed)
    rnd = derived.trace.rounds.with_columns(
        pos=pl.col("emitted").cum_sum().over("request_id") - pl.col("emitted"))
    budget = trace.manifest["collector"]["max_new_tokens"]
    assert derived.trace.requests["output_tokens"].to_list() == \
        trace.requests["output_tokens"].to_list()
    for d, a, e, pos in rnd.select("drafted", "accepted", "emitted", "pos").rows():
        assert d == min(k_new, budget - pos - 1)
        assert 0 <= a <= d and 1 <= e <= a + 1
    assert derived.modelled <= derived.positions
    if k_new == k:
        assert derived.trace.rounds.select(ROUND_COLS).equals(trace.rounds.select(ROUND_COLS))
    if k_new == 0:
        assert derived.trace.n_rounds == int(trace.requests["output_tokens"].sum())
    again = at_draft_length(trace, k_new, seed=seed)
    assert again.trace.rounds.equals(derived.trace.rounds)


def test_adaptive_drafting_and_bad_lengths_are_refused(examples_dir):
    with pytest.raises(LapsdError, match="adaptively"):
        at_draft_length(read_trace(examples_dir / "smollm2-ngram4"), 2)
    with pytest.raises(LapsdError, match="adaptively"):
        at_draft_length(read_trace(examples_dir / "specbench-vicuna7b-sps68m"), 2)
    trace = read_trace(examples_dir / "smollm2-layers-28")
    with pytest.raises(LapsdError, match="between 0 and the trace's k = 4"):
        at_draft_length(trace, 5)
    trace.manifest.pop("round_profile")
    with pytest.raises(LapsdError, match="--cost-table"):
        at_draft_length(trace, 2)


def test_the_command(examples_dir, tmp_path, capsys):
    out, report = tmp_path / "k2", tmp_path / "k2.json"
    assert main(["draft-length", str(examples_dir / "smollm2-layers-28"), "--k", "2",
                 "--out", str(out), "--json", str(report)]) == 0
    got = json.loads(report.read_text())
    assert got["rounds"] == read_trace(out).n_rounds and got["from_k"] == 4
    assert "modelled" in capsys.readouterr().out
    assert main(["draft-length", str(examples_dir / "smollm2-ngram4"), "--k", "2",
                 "--out", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err
    assert "adaptively" in err and "Traceback" not in err and not (tmp_path / "n").exists()

"""Sessions (resumable requests, swaps), ``lapsd live`` and ``lapsd validate`` on CPU.

The live runs serve a tiny random model with arrivals compressed in time (``time_scale``); they
are shared by the tests of this module (module-scoped fixtures), so the whole file runs a few
live runs only.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")

from lapsd.collect import live  # noqa: E402
from lapsd.collect.engine import SpeculativeEngine  # noqa: E402
from lapsd.collect.live import LiveConfig, serve  # noqa: E402
from lapsd.collect.models import layers_draft  # noqa: E402
from lapsd.collect.run import CollectConfig, collect  # noqa: E402
from lapsd.collect.validate import SwitchModel, compare, validate  # noqa: E402
from lapsd.errors import LapsdError  # noqa: E402
from lapsd.replay.costs import fit_line  # noqa: E402
from lapsd.replay.live_run import LiveRun, read_live  # noqa: E402
from lapsd.replay.policies.base import Policy, RequestInfo  # noqa: E402
from lapsd.replay.trace import read_trace  # noqa: E402
from tests.collect.conftest import tiny_llama  # noqa: E402

K, MAX_NEW = 2, 8
WORKLOAD = "poisson:load=0.9,n=8,seed=3"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device (the static path's graphs)"))]


# ------------------------------------------------------------------------------- sessions
@pytest.fixture(scope="module")
def target():
    model = tiny_llama(0)
    model.generation_config.eos_token_id = None  # run to the token budget
    return model


def _engine(target, draft: str, static: bool, device: str = "cpu") -> SpeculativeEngine:
    if device != "cpu":
        target = copy.deepcopy(target).to(device)
    if draft == "ngram:3":
        return SpeculativeEngine(target, ngram=3, k=3, static=static, device=device)
    if draft == "model":
        return SpeculativeEngine(target, draft=tiny_llama(7, layers=2).to(device), k=3,
                                 static=static, device=device)
    return SpeculativeEngine(target, draft=layers_draft(target, 2), k=3, static=static,
                             device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("draft", "static"), [("layers:2", True), ("ngram:3", True),
                                               ("layers:2", False), ("ngram:3", False),
                                               ("model", False)])
def test_interleaved_sessions_equal_running_alone(target, draft: str, static: bool,
                                                  device: str) -> None:
    """Round by round, with swaps to host and back, each request makes its own tokens."""
    eng = _engine(target, draft, static, device)
    assert (eng.static_split is not None) == static
    gen = torch.Generator().manual_seed(11)
    prompts = [torch.randint(3, 64, (n,), generator=gen).tolist() * 3 for n in (7, 5, 9)]
    alone = [eng.generate(p, 24) for p in prompts]
    sessions = [eng.start(p, 24) for p in prompts]
    assert all(s.resident_tokens == 0 and not s.prefilled for s in sessions)
    step = 0
    while not all(s.done for s in sessions):
        for s in sessions:
            if s.done:
                continue
            record = s.step()
            step += 1
            assert record.context_tokens == len(s.tokens) - record.emitted
            if not s.done and step % 4 == 0:  # to host memory and back when it runs again
                assert s.offload() > 0 and s.offloaded and s.resident_tokens == 0
                assert s.offload() == 0  # already there
                assert s.activate() and s.resident_tokens == len(s.tokens) - 1
            elif not s.done and step % 3 == 0:
                s.offload()  # stays on the host while the others run
    for s, ref in zip(sessions, alone, strict=True):
        got = s.result()
        assert got.tokens == ref.tokens and len(got.tokens) == 24
        assert [(r.drafted, r.accepted, r.emitted, r.context_tokens) for r in got.rounds] == \
            [(r.drafted, r.accepted, r.emitted, r.context_tokens) for r in ref.rounds]
        assert s.done and s.resident_tokens == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("draft", ["layers:2", "ngram:3"])
def test_batched_rounds_equal_running_alone(target, draft: str, device: str) -> None:
    """Batches of changing membership (joins, leaves, parking, a swap to host, a batch-1 round
    in between) give every request its batch-1 tokens and rounds, in float32."""
    eng = _engine(target, draft, True, device)
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 40, (n,), generator=gen).tolist() * 2 for n in (6, 4, 9, 5, 7)]
    budgets = [20, 9, 26, 3, 14]  # ragged: rows reach their token budget at different steps
    alone = [eng.generate(p, m) for p, m in zip(prompts, budgets, strict=True)]
    assert eng.reserve(64, batch=3) == 512 and eng.runner is not None
    assert eng.runner.rows == 3
    sessions = [eng.start(p, m) for p, m in zip(prompts, budgets, strict=True)]
    step = 0
    while not all(s.done for s in sessions):
        live = [s for s in sessions[:2 + step // 2] if not s.done]  # requests join over time
        batch = live[step % 2:][:3] if len(live) > 3 else live  # and rotate: rows get parked
        records = eng.step_batch(batch)
        assert [r.context_tokens for r in records] == [len(s.tokens) - r.emitted
                                                       for s, r in zip(batch, records,
                                                                       strict=True)]
        assert {s.row for s in batch if not s.done} <= set(range(len(batch)))
        if step == 3 and not batch[0].done:
            assert batch[0].offload() > 0 and batch[0].row is None
        if step == 5:
            lone = next(s for s in sessions if not s.done)
            lone.step()  # batch size one: row 0
            assert lone.done or lone.row == 0
        step += 1
    assert step > 6
    for s, ref in zip(sessions, alone, strict=True):
        got = s.result()
        assert got.tokens == ref.tokens
        assert [(r.drafted, r.accepted, r.emitted, r.context_tokens) for r in got.rounds] == \
            [(r.drafted, r.accepted, r.emitted, r.context_tokens) for r in ref.rounds]
    with pytest.raises(ValueError, match="do not fit"):
        eng.step_batch([eng.start(p, 4) for p in prompts[:4]])


@pytest.mark.parametrize("device", DEVICES)
def test_static_working_cache_grows_without_losing_a_request(target, device: str) -> None:
    """The working cache grows (steps rebuilt) while a started request is in it."""
    short, long_ = [5, 6, 7, 8], list(range(3, 60)) * 9  # 513 tokens: more than 512 slots
    ref = _engine(target, "layers:2", True, device)
    refs = [ref.generate(short, 12).tokens, ref.generate(long_, 12).tokens]
    eng = _engine(target, "layers:2", True, device)
    a, b = eng.start(short, 12), eng.start(long_, 12)
    a.step()
    assert eng.runner is not None and eng.runner.capacity == 512
    b.step()  # grows the working cache with a in it, parks a, prefills b
    assert eng.runner.capacity == 1024
    for s in (a, b):
        while not s.done:
            s.step()
    assert [a.result().tokens, b.result().tokens] == refs


def test_probe_leaves_the_request_as_it_was(target) -> None:
    for draft, static in (("layers:2", True), ("model", False)):
        eng = _engine(target, draft, static)
        prompt = [4, 9, 16, 25, 36, 49, 4, 9]
        ref = eng.generate(prompt, 10).tokens
        s = eng.start(prompt, 10)
        for d in (0, 3, 1):
            r = s.probe(d)
            assert r.drafted == d and r.emitted == 0 and r.context_tokens == len(prompt)
        while not s.done:
            s.step()
        assert s.result().tokens == ref


def test_fit_line_keeps_costs_non_negative() -> None:
    assert fit_line([1, 2, 3], [3, 5, 7]) == pytest.approx({"c0": 1.0, "c1": 2.0})
    # a free fit would have a negative intercept: the line goes through the origin
    assert fit_line([10, 11, 12], [1, 5, 9])["c0"] == 0.0
    assert fit_line([10, 11, 12], [1, 5, 9])["c1"] == pytest.approx(
        (10 + 55 + 108) / (100 + 121 + 144))
    assert fit_line([1, 2, 3], [5, 3, 1]) == {"c0": 3.0, "c1": 0.0}  # falling: flat, the mean
    assert fit_line([], []) == {"c0": 0.0, "c1": 0.0}


# ------------------------------------------------------------------------------- live runs
def _live(tiny_dir: Path, prompts: Path, out: Path, **kw) -> LiveConfig:
    base = dict(target=tiny_dir, draft="layers:2", prompts=prompts, workload=WORKLOAD,
                out=out, k=K, max_new_tokens=MAX_NEW, device="cpu", dtype="float32",
                warmup=1, time_scale=20.0)
    base.update(kw)
    return LiveConfig(**base)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dir, prompts_file) -> dict[str, Path]:
    """An oracle collection and live runs: fcfs (CLI), laps-sd and a config on its arrivals."""
    from lapsd.cli import main
    from lapsd.replay.config import ACCEPTANCE_STATISTIC, write_config
    from lapsd.replay.policies.laps_sd import LapsSDParams

    base = tmp_path_factory.mktemp("live")
    oracle = collect(CollectConfig(target=tiny_dir, draft="layers:2", prompts=prompts_file,
                                   out=base / "oracle", k=K, max_new_tokens=MAX_NEW,
                                   device="cpu"), log=lambda *_: None)
    fcfs = base / "fcfs"
    assert main(["live", "--target", str(tiny_dir), "--draft", "layers:2", "--prompts",
                 str(prompts_file), "--workload", WORKLOAD, "--policy", "fcfs", "--k", str(K),
                 "--max-new-tokens", str(MAX_NEW), "--device", "cpu", "--warmup", "1",
                 "--time-scale", "20", "--out", str(fcfs), "--json",
                 str(base / "fcfs.json")]) == 0
    what_if = dict(predictions="oracle:sigma=0.5", oracle_trace=oracle, capacity_from=fcfs)
    serve(_live(tiny_dir, prompts_file, base / "laps", policy="laps-sd",
                params={"gamma": 2, "K": 3}, **what_if), log=lambda *_: None)
    params = LapsSDParams(K=3, sup1=0.01, M=2.0, gamma=2, delta=0.5, unit="seconds")
    config = {
        "version": 1,
        "policy": {"name": "laps-sd", "parameters": asdict(params), "units": params.units()},
        "acceptance_statistic": ACCEPTANCE_STATISTIC,
        "switch_cost": {"model": "c0 + c1 * context_tokens", "c0_s": 0.0,
                        "c1_s_per_token": 0.0},
        "predictor": None, "predictions": "oracle:sigma=0.5", "load_bands": None,
        "provenance": {"traces": [{"path": "t", "sha256": "0" * 64}], "workloads": [WORKLOAD],
                       "study": "test", "trial": 0, "lapsd_version": "0",
                       "created": "2026-12-02T00:00:00+00:00"},
        "heldout": {"workloads": [WORKLOAD], "policies": {}},
    }
    write_config(config, base / "lapsd-config.json")
    serve(_live(tiny_dir, prompts_file, base / "config", config=base / "lapsd-config.json",
                **what_if), log=lambda *_: None)
    serve(_live(tiny_dir, prompts_file, base / "srpt", policy="srpt-oracle", oracle_trace=oracle,
                capacity_from=fcfs), log=lambda *_: None)
    return {"base": base, "oracle": oracle, "fcfs": fcfs, "laps": base / "laps",
            "config": base / "config", "srpt": base / "srpt"}


def _check_schedule(run: LiveRun) -> None:
    """What any live run's files must satisfy."""
    n = run.info["workload"]["n"]
    sched, req, trace = run.schedule, run.requests, run.trace
    assert run.info["run"]["finished"] == n == req.height == trace.n_requests
    assert not run.info["run"]["interrupted"]
    # rounds never overlap and run in the order written
    start, end = sched["start_s"].to_numpy(), sched["end_s"].to_numpy()
    assert np.all(start <= end) and np.all(end[:-1] <= start[1:])
    # each request's rounds come numbered 0..n-1 in the order they ran, as in the trace
    per = sched.group_by("request_id", maintain_order=True).agg(pl.col("round"))
    assert all(r == list(range(len(r))) for r in per["round"].to_list())
    assert sched.height == trace.n_rounds
    # each request finishes once, after it arrived and first ran; its latency adds up
    arrival, first, finish = (req[c].to_numpy() for c in ("arrival_s", "first_run_s",
                                                          "finish_s"))
    assert np.all(arrival <= first) and np.all(first < finish)
    assert req["finish_ns"].n_unique() == n
    last_end = sched.group_by("request_id").agg(pl.col("end_s").last())
    ends = dict(zip(last_end["request_id"], last_end["end_s"], strict=True))
    assert [ends[r] for r in req["request_id"]] == pytest.approx(finish.tolist(), abs=1e-6)
    # the trace's round times are the schedule's, request by request
    joined = trace.rounds.join(sched, on=["request_id", "round"], suffix="_sched")
    assert joined.height == sched.height
    assert joined["round_s"].to_list() == joined["round_s_sched"].to_list()
    assert (sched["engine_s"] <= sched["round_s"] + 1e-9).all()
    assert (sched["scheduler_s"] > 0).all() and (sched["switch_s"] >= 0).all()
    # the time partition: each round ends where the previous one did plus idle, switch, round
    gap = start[1:] - end[:-1]
    assert np.all(gap >= 0)
    assert run.info["scheduler"]["overhead_ratio"] > 0
    assert read_trace(run.path / "trace").manifest["timing"] == "measured_per_round"


def _redrive(run: LiveRun) -> None:
    """A fresh policy fed what the run observed picks every round the run ran."""
    policy: Policy = run.policy_factory()()
    positions = {rid: i for i, rid in enumerate(run.requests["request_id"].to_list())}
    preds = run.predictions()
    arrival = run.requests["arrival_s"].to_list()
    prompt_tokens = run.requests["prompt_tokens"].to_list()
    truth = run.requests["oracle_service_s"].to_list()
    rounds_left = dict(zip(run.requests["request_id"], run.requests["rounds"], strict=True))
    admitted = 0
    for row in run.schedule.iter_rows(named=True):
        while admitted < row["admitted"]:
            if policy.needs_oracle:
                policy.reveal(admitted, truth[admitted])
            policy.admit(RequestInfo(admitted, arrival[admitted], prompt_tokens[admitted],
                                     None if preds is None else preds[admitted]))
            admitted += 1
        assert policy.pick() == positions[row["request_id"]]
        t = run.trace.rounds.filter((pl.col("request_id") == row["request_id"])
                                    & (pl.col("round") == row["round"])).row(0, named=True)
        policy.observe(positions[row["request_id"]], t["emitted"], t["drafted"], t["accepted"],
                       row["round_s"])
        rounds_left[row["request_id"]] -= 1
        if rounds_left[row["request_id"]] == 0:
            policy.finish(positions[row["request_id"]])


def test_fcfs_run(runs) -> None:
    from lapsd.cli import main

    run = read_live(runs["fcfs"])
    _check_schedule(run)
    _redrive(run)
    assert main(["inspect", str(runs["fcfs"] / "trace")]) == 0
    assert json.loads((runs["base"] / "fcfs.json").read_text()) == run.info
    # fcfs: arrival order, each request to completion, no preemption, no switch modelled
    first = run.requests["first_run_s"].to_numpy()
    assert np.all(np.diff(first) > 0)
    assert run.info["run"]["preemptions"] == 0 and not run.schedule["preempted"].any()
    assert run.requests["preemptions"].sum() == 0
    assert run.info["policy"] == {**run.info["policy"], "name": "fcfs", "parameters": {}}
    cap = run.info["capacity"]
    assert cap["source"] == "warm-up" and cap["mean_service_s"] > 0 and cap["rounds_per_s"] > 0
    # the same tokens as the plain collector made for the same prompts
    oracle = read_trace(runs["oracle"]).requests
    made = dict(zip(oracle["request_id"], oracle["response"], strict=True))
    live = run.trace.requests
    assert all(made[rid.split(":")[1]] == text
               for rid, text in zip(live["request_id"], live["response"], strict=True))


@pytest.mark.parametrize("name", ["laps", "config", "srpt"])
def test_runs_with_side_information(runs, name: str) -> None:
    """Length-aware policies (noisy-oracle what-if), a config, and the clairvoyant oracle."""
    run, fcfs = read_live(runs[name]), read_live(runs["fcfs"])
    _check_schedule(run)
    _redrive(run)
    # same arrivals and prompts as the fcfs run (--capacity-from): a comparable workload
    assert run.requests["arrival_ns"].to_list() == fcfs.requests["arrival_ns"].to_list()
    assert run.requests["prompt_id"].to_list() == fcfs.requests["prompt_id"].to_list()
    assert run.info["capacity"]["source"] == str(runs["fcfs"])
    if name == "srpt":  # the true service: the oracle collection's, prompt by prompt
        oracle = read_trace(runs["oracle"])
        service = oracle.rounds.group_by("request_id").agg(pl.col("round_s").sum()).join(
            oracle.requests.select("request_id", "prefill_s"), on="request_id")
        truth = dict(zip(service["request_id"], service["round_s"] + service["prefill_s"],
                         strict=True))
        assert run.requests["oracle_service_s"].to_list() == pytest.approx(
            [truth[p] for p in run.requests["prompt_id"]])
        assert run.predictions() is None and run.info["predictions"] is None
        return
    preds = run.predictions()
    assert preds is not None and len(preds) == run.requests.height
    assert run.info["predictions"]["what_if"] is True
    if name == "config":
        assert (runs[name] / "lapsd-config.json").read_bytes() == \
            (runs["base"] / "lapsd-config.json").read_bytes()
        assert run.info["policy"]["class"] == "LapsSD"
    else:
        assert run.info["policy"]["effective"]["K"] == 3


def test_validate_reproduces_an_fcfs_run(runs) -> None:
    """Under fcfs the replay runs the same schedule: only the switches are unmodelled.

    The replay uses the run's own round times (in integer nanoseconds, as the run told the
    policy), so CPU timing noise cannot make them differ; what the replay does not see is the
    time the run spent switching between requests (fcfs never preempts, so the model charges
    nothing). Every replayed completion is therefore earlier than the live one by at most the
    run's total switch time, and never later.
    """
    run = read_live(runs["fcfs"])
    c = compare(run)
    assert c.switch_model["c0"] == c.switch_model["c1"] == 0.0
    assert c.switches["live_preemptions"] == c.switches["replay_preemptions"] == 0
    gap = np.array(c.latency_live) - np.array(c.latency_replay)
    total_switch = run.info["run"]["switches_s"]
    assert np.all(gap >= -1e-9) and np.all(gap <= total_switch + 1e-6)
    assert c.order_agreement == 1.0
    assert abs(c.error["mean"]) <= total_switch / min(c.latency_live)


def test_validate_cli_and_ranking(runs, capsys, tmp_path) -> None:
    from lapsd.cli import main

    names = ["fcfs", "laps", "config", "srpt"]
    assert main(["validate", *(str(runs[n]) for n in names), "--json",
                 str(tmp_path / "v.json")]) == 0
    shown = capsys.readouterr().out
    assert "replay vs live" in shown and "ranking by mean latency" in shown
    result = json.loads((tmp_path / "v.json").read_text())
    assert [Path(r["run"]).name for r in result["runs"]] == names
    for r in result["runs"]:
        assert set(r["error"]) == {"mean", "p50", "p90", "p99"}
        assert r["switch_model"]["source"] == "measured"
        assert len(r["latency_live"]) == len(r["latency_replay"]) == r["requests"]
    ranking = result["ranking"]
    assert ranking["same_workload"] is True and len(ranking["live"]) == 4
    assert sorted(ranking["live"]) == sorted(ranking["replay"])
    assert ranking["same"] == (ranking["live"] == ranking["replay"])
    # a given switch model is used as given
    given = validate([runs["laps"]], SwitchModel("given", 0.001, 0.0))["runs"][0]
    assert given["switch_model"]["c0"] == 0.001
    assert given["switches"]["replay_s"] == pytest.approx(
        0.001 * given["switches"]["replay_preemptions"])


def test_a_config_with_a_real_predictor(runs, tiny_dir, prompts_file, tmp_path,
                                        examples_dir) -> None:
    """The deployment path: a version-2 config (Gittins) and a trained predictor (no oracle);
    the replay of the run reproduces its order of completion."""
    from lapsd.predict.persist import save_predictor
    from lapsd.predict.train import fit_on_arrays
    from lapsd.replay.arrays import TraceArrays
    from lapsd.replay.config import policy_section, write_config
    from lapsd.replay.policies.gittins import GittinsParams

    real = TraceArrays.from_trace(read_trace(examples_dir / "smollm2-layers-28"))
    predictor = fit_on_arrays([real], embeddings=False)
    save_predictor(predictor, tmp_path / "p.skops")
    config = {
        "version": 2, "policy": policy_section("gittins", GittinsParams(seconds_per_token=0.001)),
        "prediction": {"source": "predictor", "what_if": False},
        "switch_cost": {"model": "c0 + c1 * context_tokens", "c0_s": 0.0,
                        "c1_s_per_token": 0.0},
        "provenance": {"traces": [{"path": "t", "sha256": "0" * 64}], "workloads": [WORKLOAD],
                       "study": "test", "lapsd_version": "0",
                       "created": "2026-12-02T00:00:00+00:00"},
        "heldout": {"workloads": [WORKLOAD], "policies": {}},
    }
    write_config(config, tmp_path / "c.json")
    out = tmp_path / "gittins"
    serve(_live(tiny_dir, prompts_file, out, config=tmp_path / "c.json",
                predictor=tmp_path / "p.skops", capacity_from=runs["fcfs"]), log=lambda *_: None)
    run = read_live(out)
    _check_schedule(run)
    assert run.info["predictions"]["source"] == "predictor"
    assert run.requests["prediction_cap"].unique().to_list() == [MAX_NEW]
    assert run.requests["prediction_sigma"].min() > 0  # a calibrated spread, not a point
    assert compare(run).order_agreement >= 0.75


def test_capacity_from_a_collection(runs, tiny_dir, prompts_file, tmp_path) -> None:
    """--capacity-from a collection of the prompt file: the load is relative to the mean
    service of its prompts there (as a replay of it defines load), no warm-up estimate."""
    from lapsd.replay.arrays import TraceArrays
    from lapsd.replay.workload import draw_arrivals, parse_workload

    out = tmp_path / "from-collection"
    info = serve(_live(tiny_dir, prompts_file, out, policy="fcfs", capacity_from=runs["oracle"]),
                 log=lambda *_: None)
    oracle = TraceArrays.from_trace(read_trace(runs["oracle"]))
    mean = float(oracle.service_ns.mean()) / 1e9  # the prompt file is the collection's
    cap = info["capacity"]
    assert cap["source"] == f"collection {runs['oracle']}" and cap["requests"] == 6
    assert cap["mean_service_s"] == pytest.approx(mean)
    assert info["scale"] == asdict(oracle.scale)
    times, _ = draw_arrivals(parse_workload(WORKLOAD), mean, 6)
    run = read_live(out)
    assert run.requests["arrival_ns"].to_list() == np.rint(times / 20.0 * 1e9).astype(
        np.int64).tolist()
    # a prompt the collection lacks: one line naming it
    more = tmp_path / "more.jsonl"
    more.write_text(prompts_file.read_text() + json.dumps(
        {"question_id": 999, "category": "qa", "turns": ["a new one?"]}) + "\n")
    with pytest.raises(LapsdError, match="no request '999'"):
        serve(_live(tiny_dir, more, tmp_path / "bad", policy="fcfs",
                    capacity_from=runs["oracle"]), log=lambda *_: None)


@pytest.fixture(scope="module")
def probe_setup(tmp_path_factory, tiny_dir) -> dict[str, Path]:
    """A collection with states of 24 prompts (tiny model) and a probe trained on it."""
    from lapsd.predict.probe import fit_probe, from_trace, save_probe

    base = tmp_path_factory.mktemp("probe-live")
    prompts = base / "question.jsonl"
    prompts.write_text("".join(json.dumps({
        "question_id": i, "category": "qa" if i % 2 else "w",
        "turns": [f"say {i} things about {i * 7}" + " and more" * (i % 5) + "."]}) + "\n"
        for i in range(24)))
    trace = collect(CollectConfig(target=tiny_dir, draft="layers:2", prompts=prompts,
                                  out=base / "trace", k=K, max_new_tokens=16, device="cpu",
                                  dtype="float32", states="auto", states_every=2),
                    log=lambda *_: None)
    probe = fit_probe(from_trace(read_trace(trace), trace), folds=2)
    assert probe.repredictor is not None
    return {"prompts": prompts, "probe": save_probe(probe, base / "probe.skops")}


def test_a_probe_repredicts_live_and_the_replay_hears_the_same(probe_setup, tiny_dir, tmp_path,
                                                              monkeypatch) -> None:
    """Issue 22, section 4: the server prefills on arrival, predicts from the prompt states,
    re-predicts from the decode states; its trace records the re-predictions, the replay
    tells its policy the very same ones, and the probe applied offline to the run's trace
    gives the beliefs the run used."""
    from lapsd.predict.apply import apply_to_trace

    heard: list[tuple[int, float, float]] = []
    original = Policy.update_prediction

    def spy(self, request_id, prediction) -> None:
        heard.append((request_id, prediction.median, prediction.sigma))
        original(self, request_id, prediction)

    monkeypatch.setattr(Policy, "update_prediction", spy)
    out = tmp_path / "probe-run"
    serve(_live(tiny_dir, probe_setup["prompts"], out, policy="lp-srpt",
                predictor=probe_setup["probe"], max_new_tokens=16,
                workload="poisson:load=0.9,n=12,seed=2"), log=lambda *_: None)
    run = read_live(out)
    _check_schedule(run)
    # (less the throwaway policy's priming, live._prime: belief 80 tokens, sigma 0.4)
    live_heard, heard[:] = sorted(h for h in heard if h[1:] != (80.0, 0.4)), []
    info = run.info
    assert info["predictions"]["source"] == "probe" and not info["predictions"]["what_if"]
    assert info["predictions"]["states"] == {"layers": [1, 2, 3], "every": 2}
    rounds = run.trace.rounds
    made = rounds.filter(pl.col("belief_median").is_not_null())
    assert 0 < made.height == len(live_heard) == info["predictions"]["updates"]
    assert info["probe"]["calls"] == made.height + run.requests.height
    # every request was prefilled on arrival, as server time of the round in progress (host
    # clock: at least the engine's own prefill time)
    assert run.schedule["prefill_s"].sum() >= run.requests["prefill_s"].sum() > 0
    # the replay tells its policy the same beliefs after the same rounds
    compare(run)
    assert sorted(heard) == live_heard
    # the probe applied offline to the run's trace (its stored states) gives the same beliefs
    # (offline also on a request's last round, which no policy hears: the request is done)
    applied = read_trace(apply_to_trace(probe_setup["probe"], out / "trace", tmp_path / "a"))
    both = applied.rounds.join(rounds, on=["request_id", "round"], suffix="_live").filter(
        pl.col("round") < pl.col("round").max().over("request_id"))
    np.testing.assert_allclose(both["belief_median"].fill_null(-1).to_numpy(),
                               both["belief_median_live"].fill_null(-1).to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(applied.requests["predicted_tokens"].to_numpy(),
                               run.requests["prediction_median"].to_numpy(), rtol=1e-9)
    # what cannot run says so in one line
    for bad, says in ((dict(batch_size=2), "--batch-size 1"),
                      (dict(states="1,2"), "layers")):
        with pytest.raises(LapsdError, match=says):
            serve(_live(tiny_dir, probe_setup["prompts"], tmp_path / "bad", policy="lp-srpt",
                        predictor=probe_setup["probe"], **bad), log=lambda *_: None)


def test_kv_budget_forces_swaps_and_keeps_tokens(runs, tiny_dir, prompts_file,
                                                 tmp_path) -> None:
    """A budget of one request's peak swaps every other started request to host memory."""
    oracle = read_trace(runs["oracle"]).requests
    peak = int(oracle["prompt_tokens"].max()) + MAX_NEW + K + 1
    out = tmp_path / "budget"
    info = serve(_live(tiny_dir, prompts_file, out, policy="las", workload="burst:n=4,seed=2",
                       kv_budget_tokens=peak, capacity_from=runs["fcfs"]),
                 log=lambda *_: None)
    run = read_live(out)
    _check_schedule(run)
    assert info["run"]["swaps"] > 0 and run.schedule["swapped"].any()
    assert run.schedule["evicted"].sum() == info["run"]["swaps"]
    assert info["switches"]["swapped"]["count"] > 0
    made = dict(zip(oracle["request_id"], oracle["response"], strict=True))
    live = run.trace.requests
    assert all(made[rid.split(":")[1]] == text
               for rid, text in zip(live["request_id"], live["response"], strict=True))
    c = compare(run)
    assert c.switches["live_swapped"] > 0 and c.order_agreement is not None


def test_interrupt_writes_what_finished(runs, tiny_dir, prompts_file, tmp_path,
                                        monkeypatch) -> None:
    calls = {"n": 0, "priming": False}
    real, real_prime = Policy.advance, live._prime

    def advance(self, *a, **kw):  # the driver reports each round here; Ctrl-C on the 12th
        calls["n"] += not calls["priming"]
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    def prime(*a):  # the warm-up of the policy's kernels is not a served round
        calls["priming"] = True
        real_prime(*a)
        calls["priming"] = False

    monkeypatch.setattr(Policy, "advance", advance)
    monkeypatch.setattr(live, "_prime", prime)
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        serve(_live(tiny_dir, prompts_file, out, policy="fcfs", capacity_from=runs["fcfs"]),
              log=lambda *_: None)
    run = read_live(out)
    assert run.info["run"]["interrupted"] is True
    finished = run.info["run"]["finished"]
    assert 0 < finished < run.requests.height == 8
    assert run.trace.n_requests == finished == run.requests["finish_s"].is_not_null().sum()
    assert run.schedule.height == 12
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no staging left
    with pytest.raises(LapsdError, match="interrupted"):
        compare(run)


@pytest.mark.parametrize(("extra", "message"), [
    (["--policy", "srpt-oracle"], "--oracle-trace"),
    (["--policy", "laps-sd"], "needs length predictions"),
    (["--policy", "fcfs", "--config", "c.json"], "one of --policy"),
    ([], "one of --policy"),
    (["--policy", "nope"], "unknown policy"),
    (["--policy", "las", "--set", "mlfq.K=3"], "not 'mlfq'"),
    (["--policy", "las", "--set", "las.nope=3"], "nope"),
    (["--policy", "lp-sjf", "--predictions", "oracle:sigma=1"], "--oracle-trace"),
    (["--policy", "fcfs", "--time-scale", "0"], "--time-scale"),
    (["--policy", "fcfs", "--kv-budget-tokens", "20"], "cannot hold one request"),
])
def test_bad_options_exit_2_with_one_line(tiny_dir, prompts_file, tmp_path, capsys,
                                          extra: list[str], message: str) -> None:
    from lapsd.cli import main

    rc = main(["live", "--target", str(tiny_dir), "--draft", "layers:2", "--prompts",
               str(prompts_file), "--workload", WORKLOAD, "--device", "cpu", "--out",
               str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "o").exists()


def test_bad_workload_and_existing_output(tiny_dir, prompts_file, tmp_path) -> None:
    cfg = _live(tiny_dir, prompts_file, tmp_path / "o", policy="fcfs")
    with pytest.raises(LapsdError, match="unknown kind"):
        serve(replace(cfg, workload="steady:n=3"))
    (tmp_path / "o").mkdir()
    with pytest.raises(LapsdError, match="--force"):
        serve(cfg)
    with pytest.raises(LapsdError, match="not a live run"):
        read_live(tmp_path / "o")


# ------------------------------------------------------------------------ batched live runs
@pytest.fixture(scope="module")
def batched(runs, tiny_dir, prompts_file) -> dict[str, Path]:
    """Runs at batch sizes 2 (fcfs, through the CLI) and 3 (las), on fcfs's arrivals."""
    from lapsd.cli import main

    base = runs["base"]
    assert main(["live", "--target", str(tiny_dir), "--draft", "ngram:3", "--prompts",
                 str(prompts_file), "--workload", WORKLOAD, "--policy", "fcfs", "--k", str(K),
                 "--max-new-tokens", str(MAX_NEW), "--device", "cpu", "--time-scale", "20",
                 "--capacity-from", str(runs["fcfs"]), "--batch-size", "2",
                 "--out", str(base / "fcfs-b2")]) == 0
    serve(_live(tiny_dir, prompts_file, base / "las-b3", policy="las",
                capacity_from=runs["fcfs"], batch_size=3), log=lambda *_: None)
    return {"fcfs": base / "fcfs-b2", "las": base / "las-b3"}


def _check_batched(run: LiveRun) -> None:
    """A batched run's files: steps in order, members sharing the step's time."""
    b = run.info["batch_size"]
    n = run.info["workload"]["n"]
    sched, req, trace = run.schedule, run.requests, run.trace
    assert run.info["run"]["finished"] == n == trace.n_requests
    steps = sched.group_by("step", maintain_order=True).agg(
        pl.len().alias("rows"), pl.col("batch").first(), pl.col("start_s").n_unique(),
        pl.col("end_s").n_unique(), pl.col("round_s").n_unique(), pl.col("request_id"),
        pl.col("start_s").first().alias("start"), pl.col("end_s").first().alias("end"))
    assert steps["step"].to_list() == list(range(steps.height)) == list(
        range(run.info["run"]["steps"]))
    assert (steps["rows"] == steps["batch"]).all() and steps["batch"].max() <= b
    assert steps["batch"].max() > 1  # it did batch
    assert (steps["start_s"] == 1).all() and (steps["end_s"] == 1).all()
    assert (steps["round_s"] == 1).all()  # every member's round lasts the step
    assert all(len(set(r)) == len(r) for r in steps["request_id"].to_list())
    start, end = steps["start"].to_numpy(), steps["end"].to_numpy()
    assert np.all(start <= end) and np.all(end[:-1] <= start[1:])
    per = sched.group_by("request_id", maintain_order=True).agg(pl.col("round"))
    assert all(r == list(range(len(r))) for r in per["round"].to_list())
    joined = trace.rounds.join(sched, on=["request_id", "round"], suffix="_sched")
    assert joined.height == sched.height == trace.n_rounds
    assert joined["round_s"].to_list() == joined["round_s_sched"].to_list()
    # the step's own times are on its first row only, so sums are the run's
    others = sched.filter(pl.col("step").is_first_distinct().not_())
    assert (others["switch_s"] == 0).all() and (others["scheduler_s"] == 0).all()
    assert run.info["run"]["rounds_s"] == pytest.approx(steps["round_s"].len() and float(
        sched.filter(pl.col("step").is_first_distinct())["round_s"].sum()))
    assert req["finish_ns"].is_not_null().all()
    # a fresh policy fed what ran names every step's members, best first
    policy: Policy = run.policy_factory()()
    positions = {rid: i for i, rid in enumerate(req["request_id"].to_list())}
    preds = run.predictions()
    rounds_left = dict(zip(req["request_id"], req["rounds"], strict=True))
    by_round = {(r["request_id"], r["round"]): r for r in trace.rounds.iter_rows(named=True)}
    admitted = 0
    for step in sched.partition_by("step", maintain_order=True):
        while admitted < step["admitted"][0]:
            if policy.needs_oracle:
                policy.reveal(admitted, req["oracle_service_s"][admitted])
            policy.admit(RequestInfo(admitted, req["arrival_s"][admitted],
                                     req["prompt_tokens"][admitted],
                                     None if preds is None else preds[admitted]))
            admitted += 1
        ids = step["request_id"].to_list()
        assert policy.step(b) == [positions[r] for r in ids]
        for rid, rnd, took in zip(ids, step["round"], step["round_s"], strict=True):
            t = by_round[(rid, rnd)]
            policy.observe(positions[rid], t["emitted"], t["drafted"], t["accepted"], took)
        for rid in ids:
            rounds_left[rid] -= 1
            if rounds_left[rid] == 0:
                policy.finish(positions[rid])


def test_batched_runs_keep_tokens_and_schedule(runs, batched) -> None:
    fcfs, las = read_live(batched["fcfs"]), read_live(batched["las"])
    for run in (fcfs, las):
        _check_batched(run)
    assert las.info["run"]["preemptions"] > 0  # the least attained service runs
    # batching changes neither tokens nor rounds: the greedy output of the batch-1 collection
    oracle = read_trace(runs["oracle"])
    made = dict(zip(oracle.requests["request_id"], oracle.requests["output_tokens"],
                    strict=True))
    assert all(made[rid.split(":")[1]] == n for rid, n in
               zip(las.trace.requests["request_id"], las.trace.requests["output_tokens"],
                   strict=True))
    # fcfs at batch size 2 serves in pairs: a request never starts before an earlier one
    first = fcfs.requests["first_run_s"].to_numpy()
    assert np.all(np.diff(first) >= 0) and fcfs.info["run"]["preemptions"] == 0


def test_validate_reproduces_a_batched_fcfs_run(batched) -> None:
    """As at batch size one: the replay (batched, steps lasting their members' recorded rounds)
    forms the same batches, so it is early by at most the unmodelled switch time."""
    run = read_live(batched["fcfs"])
    c = compare(run)
    assert c.batch_size == 2
    gap = np.array(c.latency_live) - np.array(c.latency_replay)
    total_switch = run.info["run"]["switches_s"]
    assert np.all(gap >= -1e-9) and np.all(gap <= total_switch + 1e-6)
    assert c.order_agreement == 1.0
    las = compare(read_live(batched["las"]))
    assert las.switches["live_preemptions"] == read_live(batched["las"]).info["run"][
        "preemptions"] > 0
    assert las.order_agreement is not None and las.order_agreement >= 0.75


def test_validate_predicts_a_batched_run_from_a_collection(runs, batched, capsys,
                                                           tmp_path) -> None:
    """--rounds-from: the batch-1 collection's rounds (same prompts and draft) with a batch
    cost; the greedy rounds are the run's, only their times differ."""
    from lapsd.cli import main
    from lapsd.replay.costs import BatchCost

    run = read_live(batched["las"])
    flat = compare(run, rounds_from=runs["oracle"])
    slow = compare(run, rounds_from=runs["oracle"], cost=BatchCost((1, 3), (1.0, 2.0), "x2"))
    assert flat.rounds == str(runs["oracle"]) and slow.batch_cost == "x2"
    assert flat.same_output == 1.0  # greedy: the collection decoded what the run did
    assert slow.replay["mean"] > flat.replay["mean"]  # the slowdown reaches the latencies
    assert main(["validate", str(batched["las"]), "--rounds-from", str(runs["oracle"])]) == 0
    assert "rounds from" in capsys.readouterr().out
    # another live run's trace ("position:prompt id" ids) predicts it too, matched by prompt
    other = compare(run, rounds_from=batched["fcfs"] / "trace")
    assert other.requests == run.requests.height and other.rounds.endswith("trace")
    from lapsd.replay.trace import make_trace, write_trace

    full = read_trace(runs["oracle"])
    gone = run.requests["prompt_id"][0]
    short = write_trace(make_trace(full.requests.filter(pl.col("request_id") != gone),
                                   full.rounds.filter(pl.col("request_id") != gone),
                                   full.manifest), tmp_path / "short")
    with pytest.raises(LapsdError, match=f"no request '{gone}'"):
        compare(run, rounds_from=short)
    # a collection that decoded one prompt differently: its share falls by that prompt's
    # requests (a workload may draw a prompt twice)
    rounds = full.rounds.filter((pl.col("request_id") != gone) | (pl.col("round") == 0))
    emitted = rounds.filter(pl.col("request_id") == gone)["emitted"].sum()
    requests = full.requests.with_columns(
        pl.when(pl.col("request_id") == gone).then(pl.lit(emitted))
        .otherwise(pl.col("output_tokens")).alias("output_tokens"),
        pl.when(pl.col("request_id") == gone).then(pl.lit(1))
        .otherwise(pl.col("n_rounds")).alias("n_rounds"))
    other_output = write_trace(make_trace(requests, rounds, full.manifest), tmp_path / "other")
    differs = compare(run, rounds_from=other_output)
    drawn = int((run.requests["prompt_id"] == gone).sum())
    assert differs.same_output == pytest.approx(1 - drawn / run.requests.height)


def test_fit_batch_cost_to_a_batched_run(runs, batched, tmp_path) -> None:
    """The slowdown at b is the run's time in steps of b over the collection's prediction."""
    from lapsd.cli import main
    from lapsd.collect.validate import fit_batch_cost
    from lapsd.replay.costs import BatchCost

    run = read_live(batched["las"])
    assert main(["fit-batch-cost", str(batched["las"]), "--rounds-from", str(runs["oracle"]),
                 "--out", str(tmp_path / "fit.json")]) == 0
    table = json.loads((tmp_path / "fit.json").read_text())
    assert table == fit_batch_cost([run], runs["oracle"])
    steps = run.schedule.group_by("step").agg(pl.len().alias("b"), pl.col("round_s").first())
    by_b = steps.group_by("b").agg(pl.len().alias("n"), pl.col("round_s").sum()).sort("b")
    rows = table["batch"]
    assert table["fitted_from"]["skipped_steps"] == 0  # the same engine, the same tokens
    assert [(r["batch"], r["steps"]) for r in rows] == list(zip(by_b["b"], by_b["n"],
                                                                strict=True))
    for r, live_s in zip(rows, by_b["round_s"], strict=True):
        assert r["live_s"] == pytest.approx(live_s)
        assert r["slowdown"] == pytest.approx(r["live_s"] / r["predicted_s"])
    cost = BatchCost.from_profile(tmp_path / "fit.json")
    assert cost.batch_sizes == tuple(r["batch"] for r in rows)
    assert cost.slowdown == pytest.approx([r["slowdown"] for r in rows])
    fitted = compare(run, rounds_from=runs["oracle"], cost=cost)
    assert fitted.batch_cost.startswith("fit.json")
    only_batches = replace(run, schedule=run.schedule.filter(pl.col("batch") > 1))
    with pytest.raises(LapsdError, match="no step of one request"):
        fit_batch_cost([only_batches], runs["oracle"])


@pytest.mark.parametrize("batch", [1, 2])
def test_the_live_server_runs_its_policy_through_the_driver(runs, tiny_dir, prompts_file,
                                                             tmp_path, monkeypatch, batch):
    from lifecycle import lifecycle_callers

    with lifecycle_callers(monkeypatch) as callers:
        serve(_live(tiny_dir, prompts_file, tmp_path / "o", policy="las",
                    capacity_from=runs["fcfs"], batch_size=batch), log=lambda *_: None)
    assert callers == {"lapsd.replay.driver"}
    assert read_live(tmp_path / "o").info["run"]["finished"] == 8


def test_batch_size_options(tiny_dir, prompts_file, tmp_path) -> None:
    cfg = _live(tiny_dir, prompts_file, tmp_path / "o", policy="fcfs", batch_size=2)
    with pytest.raises(LapsdError, match="applies to --batch-size 1"):
        serve(replace(cfg, kv_budget_tokens=10_000))
    with pytest.raises(LapsdError, match="--batch-size must be >= 1"):
        serve(replace(cfg, batch_size=0))
    with pytest.raises(LapsdError, match="need the static path"):
        serve(replace(cfg, temperature=0.7))
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_live_on_cuda_swaps_and_keeps_tokens(tiny_dir, prompts_file, tmp_path) -> None:
    """On a GPU: CUDA graphs, CUDA-event clocks, pinned swaps; the tokens the collector makes."""
    oracle = read_trace(collect(CollectConfig(
        target=tiny_dir, draft="layers:2", prompts=prompts_file, out=tmp_path / "oracle", k=K,
        max_new_tokens=MAX_NEW, device="cuda", dtype="float32"), log=lambda *_: None))
    peak = int(oracle.requests["prompt_tokens"].max()) + MAX_NEW + K + 1
    info = serve(_live(tiny_dir, prompts_file, tmp_path / "live", device="cuda", policy="las",
                       workload="burst:n=4,seed=2", kv_budget_tokens=peak),
                 log=lambda *_: None)
    run = read_live(tmp_path / "live")
    _check_schedule(run)
    assert info["collector"]["timer"] == "cuda_events" and info["run"]["swaps"] > 0
    made = dict(zip(oracle.requests["request_id"], oracle.requests["response"], strict=True))
    assert all(made[rid.split(":")[1]] == text for rid, text in
               zip(run.trace.requests["request_id"], run.trace.requests["response"],
                   strict=True))
    assert compare(run).order_agreement is not None

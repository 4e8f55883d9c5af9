"""Bad numbers and strings in replay's inputs, through the real command line.

Every case must end as one line on stderr, exit status 2, no traceback, and no file that
existed before changed (bytes and modification times compared). Tables hold the cases named
in the issue and their kin; hypothesis builds malformed traces, workload strings, prediction
sources, ``--set`` values, configs, cost tables and Spec-Bench records.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from one_line import one_line_error
from sim_reference import synthetic_trace

from lapsd.replay.config import ACCEPTANCE_STATISTIC
from lapsd.replay.policies.laps_sd import LapsSDParams
from lapsd.replay.trace import MANIFEST_FILE, REQUESTS_FILE, ROUNDS_FILE, write_trace

#: Hypothesis examples share the function's tmp_path and capsys (each resets what it uses).
EXAMPLES = settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def good_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_trace(synthetic_trace(1), tmp_path_factory.mktemp("good") / "trace")


def bad_copy(good: Path, dest: Path, table: str, column: str, value: Any,
             row: int | None = 0) -> Path:
    """``good`` copied to ``dest``, ``column`` of ``table`` set to ``value`` (one row or all)."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(good, dest)
    df = pl.read_parquet(dest / table)
    dtype = df.schema.get(column, pl.Float64())
    lit = pl.lit(value, dtype=dtype)
    new = lit if row is None else pl.when(pl.int_range(pl.len()) == row).then(lit).otherwise(
        pl.col(column) if column in df.columns else pl.lit(1.0))
    df.with_columns(new.alias(column)).write_parquet(dest / table)
    return dest


def edit_manifest(good: Path, dest: Path, edit: Callable[[dict[str, Any]], Any]) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(good, dest)
    manifest = json.loads((dest / MANIFEST_FILE).read_text())
    (dest / MANIFEST_FILE).write_text(json.dumps(edit(manifest)))
    return dest


REPLAY = ["--policies", "fcfs", "--workload", "burst:n=3"]
NAN, INF = math.nan, math.inf

# ------------------------------------------------------------------ traces
TRACE_CASES = [
    (ROUNDS_FILE, "round_s", INF, "round_s must be a finite number"),
    (ROUNDS_FILE, "round_s", NAN, "round_s must be a finite number"),
    (ROUNDS_FILE, "round_s", -1.0, "round_s must be a finite number"),
    (ROUNDS_FILE, "round_s", 1e300, "round_s must be a finite number"),
    (ROUNDS_FILE, "draft_s", NAN, "draft_s must be a finite number"),
    (ROUNDS_FILE, "verify_s", -INF, "verify_s must be a finite number"),
    (ROUNDS_FILE, "context_tokens", -1, "context_tokens must be >= 0"),
    (ROUNDS_FILE, "drafted", -1, "drafted must be >= 0"),
    (ROUNDS_FILE, "accepted", -1, "accepted must be >= 0"),
    (ROUNDS_FILE, "emitted", 0, "emitted must be >= 1"),
    (REQUESTS_FILE, "total_s", NAN, "total_s must be a finite number"),
    (REQUESTS_FILE, "total_s", -1.0, "total_s must be a finite number"),
    (REQUESTS_FILE, "total_s", INF, "total_s must be a finite number"),
    (REQUESTS_FILE, "prefill_s", INF, "prefill_s must be a finite number"),
    (REQUESTS_FILE, "prefill_s", 1e300, "prefill_s must be a finite number"),
    (REQUESTS_FILE, "total_s", 1e10, "total_s must be a finite number"),
    (REQUESTS_FILE, "prompt_tokens", -1, "prompt_tokens must be >= 0"),
    (REQUESTS_FILE, "k", -1, "k must be >= 0"),
    (REQUESTS_FILE, "predicted_tokens", NAN, "predicted_tokens must be a finite number"),
    (REQUESTS_FILE, "predicted_tokens", -3.0, "predicted_tokens must be a finite number"),
    (REQUESTS_FILE, "predicted_tokens_p90", INF, "predicted_tokens_p90 must be a finite"),
]
MANIFEST_CASES = [
    (lambda m: [m], "must be a JSON object, got a list"),
    (lambda m: "trace", "must be a JSON object, got a str"),
    (lambda m: {**m, "collector": {"max_new_tokens": "abc"}}, "max_new_tokens must be an integer"),
    (lambda m: {**m, "collector": {"max_new_tokens": -5}}, "max_new_tokens must be an integer"),
    (lambda m: {**m, "collector": {"max_new_tokens": True}}, "max_new_tokens must be an integer"),
    (lambda m: {**m, "collector": ["x"]}, "collector must be a JSON object"),
]
COMMANDS = [["inspect"], ["replay", *REPLAY]]


@pytest.mark.parametrize("command", COMMANDS, ids=["inspect", "replay"])
@pytest.mark.parametrize(("table", "column", "value", "message"), TRACE_CASES)
def test_bad_trace_numbers(good_trace, tmp_path, capsys, command, table, column, value,
                           message):
    bad = bad_copy(good_trace, tmp_path / "t", table, column, value)
    line = one_line_error([command[0], str(bad), *command[1:]], capsys, bad)
    assert message in line and column in line and table in line


@pytest.mark.parametrize("command", COMMANDS, ids=["inspect", "replay"])
@pytest.mark.parametrize(("table", "column", "value", "message"), [
    (ROUNDS_FILE, "round_s", 0.0, "every round takes 0 s"),
    (ROUNDS_FILE, "round_s", 5e9, "the trace's rounds spans"),
    (REQUESTS_FILE, "prefill_s", 5e9, "the trace's rounds and prefills spans"),
])
def test_trace_times_in_all(good_trace, tmp_path, capsys, command, table, column, value,
                            message):
    # no timing at all, or each time representable but their sum past the replay clock
    bad = bad_copy(good_trace, tmp_path / "t", table, column, value, row=None)
    line = one_line_error([command[0], str(bad), *command[1:]], capsys, bad)
    assert message in line and column in line and table in line


@pytest.mark.parametrize("command", COMMANDS, ids=["inspect", "replay"])
@pytest.mark.parametrize(("edit", "message"), MANIFEST_CASES)
def test_bad_manifests(good_trace, tmp_path, capsys, command, edit, message):
    bad = edit_manifest(good_trace, tmp_path / "t", edit)
    line = one_line_error([command[0], str(bad), *command[1:]], capsys, bad)
    assert message in line and MANIFEST_FILE in line


BAD_FLOATS = st.sampled_from([NAN, INF, -INF, -1.0, -1e-9, 1e300])
TIME_COLUMNS = st.sampled_from([(ROUNDS_FILE, c) for c in ("round_s", "draft_s", "verify_s")]
                               + [(REQUESTS_FILE, c) for c in ("total_s", "prefill_s")])
COUNT_COLUMNS = st.sampled_from([(ROUNDS_FILE, c) for c in ("context_tokens", "drafted",
                                                            "accepted")]
                                + [(REQUESTS_FILE, c) for c in ("prompt_tokens", "k")])


@EXAMPLES
@given(where=TIME_COLUMNS, value=BAD_FLOATS, row=st.integers(0, 11))
def test_any_bad_time_in_a_trace(good_trace, tmp_path, capsys, where, value, row):
    bad = bad_copy(good_trace, tmp_path / "t", *where, value, row=row)
    one_line_error(["inspect", str(bad)], capsys, bad)


@EXAMPLES
@given(where=COUNT_COLUMNS, value=st.integers(-(2**62), -1), row=st.integers(0, 11))
def test_any_negative_count_in_a_trace(good_trace, tmp_path, capsys, where, value, row):
    bad = bad_copy(good_trace, tmp_path / "t", *where, value, row=row)
    one_line_error(["inspect", str(bad)], capsys, bad)


# ------------------------------------------------------------------ replay's options
REPLAY_CASES = [
    (["--c0", "nan"], "switch costs must be finite"),
    (["--c0", "inf"], "switch costs must be finite"),
    (["--c1", "inf"], "switch costs must be finite"),
    (["--c1=-1e-6"], "switch costs must be finite"),
    (["--c1", "1e300"], "more than a replay's clock holds"),
    (["--workload", "poisson:load=1e-9,n=20"], "more than a replay's clock holds"),
    (["--workload", "poisson:load=0.5,n=20,seed=-1"], "seed must be >= 0"),
    (["--workload", "gamma:load=0.5,n=20,cv=inf"], "cv must be a finite number > 0"),
    (["--workload", "gamma:load=0.5,n=20,cv=nan"], "cv must be a finite number > 0"),
    (["--workload", "gamma:load=0.5,n=20,cv=0"], "cv must be a finite number > 0"),
    (["--workload", "poisson:load=nan,n=20"], "load must be a finite number > 0"),
    (["--workload", "poisson:load=inf,n=20"], "load must be a finite number > 0"),
    (["--workload", "poisson:load=-1,n=20"], "load must be a finite number > 0"),
    (["--workload", "burst:n=0"], "n must be > 0"),
    (["--workload", "burst:n=100000000"], "n must be > 0 and <= 10000000"),
    (["--workload", "burst:n=1e3"], "is not a int"),
    (["--workload", "burst:n=3,seed=abc"], "is not a int"),
    (["--predictions", "oracle:sigma=abc"], "not a number"),
    (["--predictions", "oracle:sigma=nan"], "sigma=nan"),
    (["--predictions", "oracle:sigma=inf"], "sigma=inf"),
    (["--predictions", "oracle:sigma=-1"], "sigma=-1"),
    (["--predictions", "oracle:sigma=0.5,seed=x"], "not a number"),
    (["--predictions", "oracle:sigma=0.5,seed=-2"], "seed=-2"),
    (["--predictions", "oracle:sigma=0.5,foo=1"], "unknown option 'foo'"),
    (["--predictions", "oracle:0.5"], "unknown option '0.5'"),
    (["--set", "nosuch.K=3"], "'nosuch' is not a policy being run; these are: fcfs"),
    (["--set", "laps-sd.K=3"], "'laps-sd' is not a policy being run"),
    (["--set", "K=3"], "expected POLICY.PARAM=VALUE"),
    (["--set", "fcfs.K=3"], "takes no parameters"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--batch-size", "2", "--kv-tokens=-1"], "--kv-tokens"),
    (["--batch-size", "2", "--kv-tokens", "0"], "--kv-tokens"),
    (["--repredict-every", "0"], "--repredict-every must be >= 1"),
]
#: ``--set`` values for policies that need predictions (the noisy oracle gives them).
SET_CASES = [
    ("laps-sd", "laps-sd.sup1=1e308", "sup1: Input should be less than or equal to"),
    ("laps-sd", "laps-sd.M=1e9", "M: Input should be less than or equal to"),
    ("laps-sd", "laps-sd.K=true", "K: Input should be a valid integer"),
    ("laps-sd", "laps-sd.K=4.5", "K: Input should be a valid integer"),
    ("laps-sd", "laps-sd.nosuch=1", "nosuch: unknown field"),
    ("gittins", "gittins.prior_tokens=Infinity", "Infinity is not a number standard JSON"),
    ("gittins", "gittins.prior_tokens=NaN", "NaN is not a number standard JSON"),
    ("gittins", "gittins.prior_tokens=1e999", "1e999 is beyond a float's range"),
    ("gittins", "gittins.switch_weight=true", "switch_weight: Input should be a valid number"),
    ("gittins", 'gittins.switch_weight="1"', "switch_weight: Input should be a valid number"),
    ("gittins", "gittins.switch_weight=nan", "switch_weight: Input should be a valid number"),
    ("gittins", "gittins.prior_tokens=1e308", "prior_tokens: Input should be at most 1e+15"),
    ("gittins", "gittins.c0=1e300", "c0: Input should be less than or equal to"),
    ("mlfq", "mlfq.q1=1e308", "q1: Input should be less than or equal to"),
]


@pytest.mark.parametrize(("extra", "message"), REPLAY_CASES)
def test_bad_replay_options(good_trace, tmp_path, capsys, extra, message):
    out = tmp_path / "r.json"
    argv = ["replay", str(good_trace), "--policies", "fcfs", "--json", str(out)]
    if "--workload" not in extra:
        argv += ["--workload", "burst:n=3"]
    if extra[0] == "--predictions":
        argv[3] = "lp-sjf"
    line = one_line_error([*argv, *extra], capsys, good_trace)
    assert message in line
    assert not out.exists()


@pytest.mark.parametrize(("policy", "item", "message"), SET_CASES)
def test_bad_set_values(good_trace, capsys, policy, item, message):
    line = one_line_error(["replay", str(good_trace), "--policies", policy, "--workload",
                           "burst:n=3", "--predictions", "oracle:sigma=0.5", "--set", item],
                          capsys, good_trace)
    assert message in line


BAD_NUMBER_TEXT = st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1",
                                   "abc", "", "true", "0x10", "1,5"])


@EXAMPLES
@given(kind=st.sampled_from(["poisson", "gamma"]), key=st.sampled_from(["load", "cv", "seed"]),
       value=BAD_NUMBER_TEXT)
def test_any_bad_workload_number(good_trace, capsys, kind, key, value):
    options = {"load": "0.5", "n": "5", "cv": "2", "seed": "1"}
    if kind == "poisson":
        options.pop("cv")
    options[key] = value
    text = f"{kind}:" + ",".join(f"{k}={v}" for k, v in options.items())
    one_line_error(["replay", str(good_trace), "--policies", "fcfs", "--workload", text],
                   capsys, good_trace)


@EXAMPLES
@given(key=st.sampled_from(["sigma", "seed"]), value=BAD_NUMBER_TEXT)
def test_any_bad_oracle_option(good_trace, capsys, key, value):
    options = {"sigma": "0.5", "seed": "1", key: value}
    source = "oracle:" + ",".join(f"{k}={v}" for k, v in options.items())
    one_line_error(["replay", str(good_trace), "--policies", "lp-sjf", "--workload", "burst:n=3",
                    "--predictions", source], capsys, good_trace)


@EXAMPLES
@given(item=st.sampled_from(["laps-sd.sup1", "laps-sd.M", "laps-sd.gamma", "laps-sd.K",
                             "gittins.switch_weight", "gittins.prior_tokens", "gittins.c0",
                             "gittins.seconds_per_token", "mlfq.q1", "mlfq.M"]),
       value=st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1", "true", "false",
                              '"0.5"', "[1]", "{}", "1e308"]))
def test_any_bad_set_value(good_trace, capsys, item, value):
    policy = item.partition(".")[0]
    one_line_error(["replay", str(good_trace), "--policies", policy, "--workload", "burst:n=3",
                    "--predictions", "oracle:sigma=0.5", "--set", f"{item}={value}"],
                   capsys, good_trace)


def test_mooncake_arrivals_with_bad_timestamps(good_trace, tmp_path, capsys):
    for stamp in ("NaN", "Infinity", '"abc"', "true"):
        arrivals = tmp_path / "a.jsonl"
        arrivals.write_text(f'{{"timestamp": 0}}\n{{"timestamp": {stamp}}}\n')
        line = one_line_error(["replay", str(good_trace), "--policies", "fcfs", "--workload",
                               f"trace:{arrivals},load=0.5"], capsys, good_trace, arrivals)
        assert "'timestamp'" in line and "row 1" in line


# ------------------------------------------------------------------ cost tables
def cost_table(rows: list[dict[str, Any]], **extra: Any) -> str:
    return json.dumps({"kind": "lapsd-cost-table", "version": 2, "gpu": "X", "target": "t",
                       "draft": "d", "batch": rows, **extra})


COST_CASES = [
    ([{"batch": 1, "context": 8, "round_s": 0.0}, {"batch": 2, "context": 8, "round_s": 0.1}],
     "round_s must be a finite number > 0"),
    ([{"batch": 1, "context": 8, "round_s": NAN}], "round_s must be a finite number > 0"),
    ([{"batch": 1, "context": 8, "round_s": 0.1}, {"batch": 2, "context": 8, "round_s": INF}],
     "round_s must be a finite number > 0"),
    ([{"batch": 1, "context": 8, "round_s": 0.1}, {"batch": 2, "context": 8, "round_s": "x"}],
     "round_s must be a finite number > 0"),
    ([{"batch": 2, "context": 8, "round_s": 0.1}], "batch sizes must start at 1"),
    ([{"batch": 1, "context": 8, "round_s": 0.1}, {"batch": 0, "context": 8, "round_s": 0.1}],
     "batch sizes must start at 1"),
]


@pytest.mark.parametrize(("rows", "message"), COST_CASES)
def test_bad_cost_tables(good_trace, tmp_path, capsys, rows, message):
    table = tmp_path / "cost.json"
    table.write_text(cost_table(rows))
    line = one_line_error(["replay", str(good_trace), *REPLAY, "--batch-size", "2",
                           "--cost-table", str(table)], capsys, good_trace, table)
    assert message in line and str(table) in line


@pytest.mark.parametrize("slowdown", [NAN, INF, 0.0, -1.0, True, None, "2"])
def test_bad_fitted_slowdowns(good_trace, tmp_path, capsys, slowdown):
    table = tmp_path / "cost.json"
    table.write_text(cost_table([{"batch": 1, "slowdown": 1.0}, {"batch": 2,
                                                                  "slowdown": slowdown}],
                                batch_unit="collected_round"))
    line = one_line_error(["replay", str(good_trace), *REPLAY, "--batch-size", "2",
                           "--cost-table", str(table)], capsys, good_trace, table)
    assert "slowdown must be a finite number > 0" in line


@EXAMPLES
@given(value=st.one_of(st.sampled_from([NAN, INF, -INF, 0.0, True, False, None, "0.1", [0.1]]),
                       st.floats(max_value=0.0)), row=st.integers(0, 2))
def test_any_bad_cost_table_entry(good_trace, tmp_path, capsys, value, row):
    rows = [{"batch": b, "context": 8, "round_s": 0.01 * b} for b in (1, 2, 4)]
    rows[row]["round_s"] = value
    table = tmp_path / "cost.json"
    table.write_text(cost_table(rows))
    one_line_error(["replay", str(good_trace), *REPLAY, "--batch-size", "2", "--cost-table",
                    str(table)], capsys, good_trace, table)


# ------------------------------------------------------------------ configs
def config(**parameters: Any) -> dict[str, Any]:
    """A valid laps-sd config, with ``parameters`` changed."""
    params = {**asdict(LapsSDParams()), **parameters}
    return {
        "version": 2,
        "policy": {"name": "laps-sd", "parameters": params, "units": LapsSDParams().units()},
        "acceptance_statistic": ACCEPTANCE_STATISTIC,
        "switch_cost": {"model": "c0 + c1 * context_tokens", "c0_s": 0.0, "c1_s_per_token": 0.0},
        "prediction": {"source": "column", "what_if": False, "predictor": None,
                       "repredict_every": None},
        "provenance": {"traces": [{"path": "t", "sha256": "0" * 64}], "workloads": [],
                       "study": "s", "lapsd_version": "0", "created": "2026-12-02"},
        "heldout": {"workloads": [], "policies": {}},
    }


def gittins_config(**parameters: Any) -> dict[str, Any]:
    cfg = config()
    params = {"seconds_per_token": 0.01, "prior_tokens": 16.0, "c0": 0.0, "c1": 0.0,
              "switch_weight": 1.0, **parameters}
    cfg["policy"] = {"name": "gittins", "parameters": params,
                     "units": {k: "-" for k in params}}
    return cfg


CONFIG_CASES = [
    (json.dumps(config(sup1=1e308)), "policy.parameters.sup1: "),
    (json.dumps(config(K=True)), "policy.parameters.K: "),
    (json.dumps(config(K=4.5)), "policy.parameters.K: "),
    (json.dumps(config(M="2")), "policy.parameters.M: "),
    (json.dumps(gittins_config(prior_tokens=math.inf)), "not standard JSON: Infinity"),
    (json.dumps(gittins_config(prior_tokens=1e999)), "not standard JSON: Infinity"),
    (json.dumps(gittins_config()).replace('"prior_tokens": 16.0', '"prior_tokens": 1e999'),
     "not standard JSON: 1e999"),
    (json.dumps(gittins_config(switch_weight=True)), "policy.parameters.switch_weight: "),
    (json.dumps(gittins_config(c0=math.nan)), "not standard JSON: NaN"),
    (json.dumps({**config(), "heldout": {"workloads": [], "policies": {
        "x": {"mean_s": math.nan, "p99_s": 1, "norm_mean": 1}}}}), "not standard JSON: NaN"),
    (json.dumps([config()]), "a config is a JSON object, got list"),
]


@pytest.mark.parametrize(("text", "message"), CONFIG_CASES)
def test_bad_config_values(good_trace, tmp_path, capsys, text, message):
    path = tmp_path / "lapsd-config.json"
    path.write_text(text)
    line = one_line_error(["replay", str(good_trace), *REPLAY, "--config", str(path)], capsys,
                          good_trace, path)
    assert message in line


def test_set_on_the_configs_policy_is_refused(good_trace, tmp_path, capsys):
    path = tmp_path / "lapsd-config.json"
    path.write_text(json.dumps(config()))
    line = one_line_error(["replay", str(good_trace), "--policies", "laps-sd", "--workload",
                           "burst:n=3", "--config", str(path), "--set", "laps-sd.K=3"],
                          capsys, good_trace, path)
    assert "runs with the parameters of --config" in line


@EXAMPLES
@given(name=st.sampled_from(["K", "sup1", "M", "gamma", "delta", "quantile", "max_spread"]),
       value=st.sampled_from([NAN, INF, -INF, 1e308, -1, True, "1", [1], {"a": 1}]))
def test_any_bad_config_parameter(good_trace, tmp_path, capsys, name, value):
    path = tmp_path / "lapsd-config.json"
    path.write_text(json.dumps(config(**{name: value})))
    one_line_error(["replay", str(good_trace), *REPLAY, "--config", str(path)], capsys,
                   good_trace, path)


# ------------------------------------------------------------------ Spec-Bench answers
def answer(accepts: list[Any], tokens: Any = None, wall: Any = 1.0) -> str:
    tokens = sum(accepts) if tokens is None else tokens
    return json.dumps({"question_id": 1, "model_id": "m", "choices": [{
        "index": 0, "turns": ["x"], "decoding_steps": [len(accepts)], "new_tokens": [tokens],
        "wall_time": [wall], "accept_lengths": accepts}]})


SPECBENCH_CASES = [
    (answer([1, 10**20], tokens=3), [], "accept_lengths: 100000000000000000000 is not a whole"),
    (answer([1, 2], tokens=3).replace("[1, 2]", "[1, 1e400]"), [], "accept_lengths: inf"),
    (answer([1, 2]).replace("[1, 2]", "[1, 2.5]"), [], "accept_lengths: 2.5"),
    (answer([True, 2], tokens=3), [], "accept_lengths: True"),
    (answer([1, 2], tokens=10**20), [], "new_tokens: 100000000000000000000"),
    (answer([1, 2], wall=math.nan), [], "wall_time nan is not a positive number"),
    (answer([1, 2], wall=True), [], "wall_time: True is not a number"),
    (answer([1, 2], wall="1.0"), [], "wall_time: '1.0' is not a number"),
    (answer([1, 2]), ["--k", "abc"], "--k abc: expected 'variable' or a draft length"),
    (answer([1, 2]), ["--k", "-1"], "--k -1: expected"),
    (answer([1, 2]), ["--k", "1e3"], "--k 1e3: expected"),
    (answer([1, 2]), ["--max-token-mismatch", "-1"], "--max-token-mismatch must be >= 0"),
]


@pytest.mark.parametrize(("record", "extra", "message"), SPECBENCH_CASES)
def test_bad_specbench_numbers(tmp_path, capsys, record, extra, message):
    src, out = tmp_path / "answers.jsonl", tmp_path / "out"
    src.write_text(record + "\n")
    line = one_line_error(["import", "specbench", str(src), "--out", str(out), *extra], capsys,
                          src)
    assert message in line
    assert not out.exists()


@EXAMPLES
@given(bad=st.one_of(st.integers(min_value=10**9 + 1), st.integers(max_value=-1),
                     st.sampled_from([True, False, None, "2", 2.5, [2]])),
       at=st.integers(0, 2))
def test_any_bad_accept_length(tmp_path, capsys, bad, at):
    accepts: list[Any] = [2, 3, 1]
    accepts[at] = bad
    src, out = tmp_path / "answers.jsonl", tmp_path / "out"
    src.write_text(answer(accepts, tokens=6) + "\n")
    one_line_error(["import", "specbench", str(src), "--out", str(out)], capsys, src)
    assert not out.exists()

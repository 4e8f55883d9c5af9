"""The lapsd CLI for inspect, import and replay, called as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lapsd.cli import main
from lapsd.replay.trace import read_trace


def test_inspect_json(examples_dir, tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["inspect", str(examples_dir / "specbench-vicuna7b-eagle"), "--json",
                 str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["requests"] == 560 and summary["rounds"] == 25525
    assert "tokens_per_round" in capsys.readouterr().out


def test_inspect_bad_trace_is_one_clear_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing manifest" in err and "Traceback" not in err


def test_import_then_replay(shared_data, tmp_path):
    src = (shared_data / "specdec_specbench_vicuna7b_cringebench"
           / "vicuna-7b-v1.3-medusa-float16-temperature-0.0.jsonl")
    trace = tmp_path / "medusa"
    assert main(["import", "specbench", str(src), "--questions",
                 str(shared_data / "specbench_questions" / "question.jsonl"),
                 "--out", str(trace), "--k", "4"]) == 0
    out = tmp_path / "r.json"
    assert main(["replay", str(trace), "--policies", "fcfs,lp-sjf,srpt-oracle,laps-sd",
                 "--workload", "burst:n=30,seed=1", "--workload",
                 "poisson:load=0.7,n=200,seed=2", "--set", "laps-sd.K=3",
                 "--predictions", "oracle:sigma=0.5", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert len(results) == 8
    for r in results:
        assert r["norm_mean"] >= 1.0 - 1e-9  # nothing beats the oracle at B=1, free switches
        assert r["p50"] <= r["p90"] <= r["p99"]
    # The trace folder is complete and re-importing refuses to overwrite it.
    assert main(["import", "specbench", str(src), "--out", str(trace)]) == 2


def test_replay_rejects_bad_options(examples_dir, capsys):
    trace = str(examples_dir / "specbench-vicuna7b-eagle")
    # No silent oracle: length-aware policies without a predictor or a predictions column.
    assert main(["replay", trace, "--policies", "fcfs,lp-srpt"]) == 2
    err = capsys.readouterr().err
    assert "lp-srpt need length predictions" in err and "--predictor" in err
    assert main(["replay", trace, "--workload", "poisson:n=3"]) == 2
    assert "load= is required" in capsys.readouterr().err
    assert main(["replay", trace, "--set", "laps-sd.K"]) == 2
    assert main(["replay", trace, "--set", "laps-sd.K=0"]) == 2
    assert "K: Input should be greater than or equal to 1 (got 0)" in capsys.readouterr().err


def test_console_script_help():
    """The installed `lapsd` script (beside this interpreter), as a user runs it."""
    script = Path(sys.executable).with_name("lapsd")
    assert script.is_file(), f"{script}: the lapsd console script is not installed"
    out = subprocess.run([str(script), "replay", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--workload" in out and "laps-sd" in out
    bad = subprocess.run([str(script), "inspect", "/nonexistent"], capture_output=True,
                         text=True, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "not a trace folder" in bad.stderr


def test_json_dash_goes_to_stdout(examples_dir, capsys):
    assert main(["inspect", str(examples_dir / "smollm2-ngram4"), "--json", "-"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed)["requests"] == read_trace(examples_dir / "smollm2-ngram4").n_requests
    assert not Path("-").exists()

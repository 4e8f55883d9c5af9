"""Bad input through every subcommand, as a new user would type it.

Each case is a command line (and, where it needs one, a damaged file made for it). Every case
must end the way a user error ends: exit status 2, one line saying what is wrong, no traceback,
and no file changed or left behind. The packages' own tests cover each check in depth (hypothesis
over malformed values); this table is the product-wide sweep, one line per kind of mistake.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from one_line import snapshot

from lapsd.cli import main

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "examples" / "specbench-vicuna7b-eagle"
SMALL = "poisson:load=0.7,n=20,seed=1"
ORACLE = "oracle:sigma=0.5"


def _damage(table: str, column: str, value: float, first: bool = False) -> Callable[[Path], None]:
    """A copy of TRACE at tmp/bad whose ``table`` has ``column`` set to ``value``."""
    def make(tmp: Path) -> None:
        bad = tmp / "bad"
        shutil.copytree(TRACE, bad)
        path = bad / f"{table}.parquet"
        frame = pl.read_parquet(path)
        dtype = frame.schema[column]
        if first:
            new = pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(value)).otherwise(pl.col(column))
        else:
            new = pl.lit(value)
        frame.with_columns(new.cast(dtype).alias(column)).write_parquet(path)
    return make


def _manifest(text: str) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        shutil.copytree(TRACE, tmp / "bad")
        (tmp / "bad" / "manifest.json").write_text(text)
    return make


def _file(name: str, text: str) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / name).write_text(text)
    return make


def _config(**edits: object) -> Callable[[Path], None]:
    """A valid Gittins config at tmp/config.json with ``edits`` to its parameters."""
    params: dict[str, object] = {"seconds_per_token": 0.01, "prior_tokens": 200.0, "c0": 0.0,
                                 "c1": 0.0, "switch_weight": 1.0}
    params.update(edits)

    def make(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps({
            "version": 2,
            "policy": {"name": "gittins", "parameters": params},
            "switch_cost": {"model": "c0 + c1 * context_tokens", "c0_s": 0.0,
                            "c1_s_per_token": 0.0},
            "prediction": {"source": "oracle:sigma=0.5", "what_if": True, "predictor": None,
                           "repredict_every": None},
            "load_bands": None,
            "provenance": {"traces": [{"path": "t", "sha256": "0" * 64}],
                           "workloads": ["burst:n=3"], "study": "lapsd", "trial": 3,
                           "lapsd_version": "0", "n_trials": 10,
                           "created": "2026-12-02T00:00:00+00:00", "holdout_fraction": 0.3},
        }).replace('"__INF__"', "Infinity"))
    return make


def _specbench(tmp: Path) -> None:
    record = {"question_id": 81, "category": "writing", "answer_id": "a", "model_id": "m",
              "choices": [{"index": 0, "turns": ["hello there"], "decoding_steps": [2],
                           "new_tokens": [3], "wall_time": [0.5],
                           "accept_lengths": [1e20, 1]}]}
    (tmp / "answers.jsonl").write_text(json.dumps(record) + "\n")


def _a_file(tmp: Path) -> None:
    (tmp / "afile").write_text("x")


@dataclass(frozen=True)
class Case:
    """One bad command line; ``{t}`` is the case's folder, ``{trace}`` the example trace."""

    id: str
    argv: str
    make: Callable[[Path], None] | None = None


REPLAY = f"replay {{trace}} --policies fcfs,lp-srpt --predictions {ORACLE} --workload {SMALL}"
#: ``replay --config`` with the config file named after it.
CONFIG = f"replay {{trace}} --workload {SMALL} --config {{t}}/"
CASES = [
    # Traces: values no real run has.
    Case("inspect-round-s-inf", "inspect {t}/bad",
         _damage("rounds", "round_s", float("inf"), True)),
    Case("inspect-round-s-all-zero", "inspect {t}/bad", _damage("rounds", "round_s", 0.0)),
    Case("inspect-round-s-nan", "inspect {t}/bad",
         _damage("rounds", "round_s", float("nan"), True)),
    Case("inspect-round-s-negative", "inspect {t}/bad", _damage("rounds", "round_s", -1.0, True)),
    Case("inspect-total-s-nan", "inspect {t}/bad",
         _damage("requests", "total_s", float("nan"), True)),
    Case("inspect-total-s-negative", "inspect {t}/bad", _damage("requests", "total_s", -3.0, True)),
    Case("inspect-prompt-tokens-negative", "inspect {t}/bad",
         _damage("requests", "prompt_tokens", -5, True)),
    Case("inspect-context-tokens-negative", "inspect {t}/bad",
         _damage("rounds", "context_tokens", -5, True)),
    Case("inspect-k-negative", "inspect {t}/bad", _damage("requests", "k", -1, True)),
    Case("inspect-accepted-negative", "inspect {t}/bad", _damage("rounds", "accepted", -1, True)),
    Case("inspect-manifest-list", "inspect {t}/bad", _manifest("[1, 2]")),
    Case("inspect-manifest-not-json", "inspect {t}/bad", _manifest("{oops")),
    Case("inspect-missing-folder", "inspect {t}/nothing-here"),
    Case("inspect-a-file", "inspect {t}/afile", _a_file),
    Case("replay-round-s-inf", REPLAY.replace("{trace}", "{t}/bad"),
         _damage("rounds", "round_s", float("inf"), True)),
    Case("replay-total-s-nan", REPLAY.replace("{trace}", "{t}/bad"),
         _damage("requests", "total_s", float("nan"), True)),
    # Replay's numbers and strings.
    Case("replay-c0-nan", REPLAY + " --c0 nan"),
    Case("replay-c1-inf", REPLAY + " --c1 inf"),
    Case("replay-c0-negative", REPLAY + " --c0 -1"),
    Case("replay-c0-not-a-number", REPLAY + " --c0 abc"),
    Case("replay-unknown-option", REPLAY + " --colour red"),
    Case("replay-workload-seed-negative", REPLAY.replace(SMALL, "poisson:load=0.7,n=20,seed=-1")),
    Case("replay-workload-cv-inf", REPLAY.replace(SMALL, "gamma:load=0.7,cv=inf,n=20,seed=1")),
    Case("replay-workload-load-tiny", REPLAY.replace(SMALL, "poisson:load=1e-9,n=20")),
    Case("replay-workload-load-nan", REPLAY.replace(SMALL, "poisson:load=nan,n=20")),
    Case("replay-workload-n-zero", REPLAY.replace(SMALL, "poisson:load=0.7,n=0")),
    Case("replay-workload-n-negative", REPLAY.replace(SMALL, "burst:n=-4")),
    Case("replay-workload-unknown-kind", REPLAY.replace(SMALL, "wave:n=4")),
    Case("replay-workload-unknown-key", REPLAY.replace(SMALL, "burst:n=4,colour=red")),
    Case("replay-oracle-sigma-abc", REPLAY.replace(ORACLE, "oracle:sigma=abc")),
    Case("replay-oracle-sigma-negative", REPLAY.replace(ORACLE, "oracle:sigma=-1")),
    Case("replay-oracle-sigma-nan", REPLAY.replace(ORACLE, "oracle:sigma=nan")),
    Case("replay-predictions-unknown", REPLAY.replace(ORACLE, "crystal-ball")),
    Case("replay-set-unknown-policy", REPLAY + " --set nosuch.K=3"),
    Case("replay-set-unknown-param", REPLAY + " --set lp-srpt.nosuch=3"),
    Case("replay-set-not-a-number", REPLAY.replace("lp-srpt", "laps-sd") + " --set laps-sd.K=abc"),
    Case("replay-set-nan", REPLAY.replace("lp-srpt", "laps-sd") + " --set laps-sd.sup1=nan"),
    Case("replay-set-no-equals", REPLAY + " --set laps-sd.K"),
    Case("replay-policy-unknown", REPLAY.replace("fcfs,lp-srpt", "fcfs,nosuch")),
    Case("replay-batch-size-zero", REPLAY + " --batch-size 0"),
    Case("replay-kv-tokens-negative", REPLAY + " --batch-size 2 --kv-tokens -1"),
    Case("replay-repredict-zero", REPLAY + " --repredict-every 0"),
    Case("replay-cost-table-missing", REPLAY + " --batch-size 2 --cost-table {t}/none.json"),
    Case("replay-cost-table-nan", REPLAY + " --batch-size 2 --cost-table {t}/c.json",
         _file("c.json", '{"batch_slowdown": {"1": 1.0, "2": NaN}}')),
    Case("replay-cost-table-zero", REPLAY + " --batch-size 2 --cost-table {t}/c.json",
         _file("c.json", '{"batch_slowdown": {"1": 1.0, "2": 0}}')),
    Case("replay-cost-table-list", REPLAY + " --batch-size 2 --cost-table {t}/c.json",
         _file("c.json", "[1, 2]")),
    Case("replay-json-is-a-folder", REPLAY + " --json {t}"),
    Case("replay-json-under-a-file", REPLAY + " --json {t}/afile/out.json", _a_file),
    # Configs a server or replay loads.
    Case("config-prior-tokens-huge", CONFIG + "config.json", _config(prior_tokens=1e308)),
    Case("config-prior-inf", CONFIG + "config.json", _config(prior_tokens="__INF__")),
    Case("config-switch-weight-bool", CONFIG + "config.json", _config(switch_weight=True)),
    Case("config-unknown-param", CONFIG + "config.json", _config(nosuch=1.0)),
    Case("config-not-json", CONFIG + "c.json", _file("c.json", "{")),
    Case("config-missing", CONFIG + "none.json"),
    # Import.
    Case("import-accept-lengths-huge", "import specbench {t}/answers.jsonl --out {t}/trace",
         _specbench),
    Case("import-not-json", "import specbench {t}/a.jsonl --out {t}/trace", _file("a.jsonl", "{")),
    Case("import-missing", "import specbench {t}/none.jsonl --out {t}/trace"),
    Case("import-out-under-a-file", "import specbench {t}/answers.jsonl --out {t}/afile/x",
         lambda t: (_specbench(t), _a_file(t))),
    # Tune: everything checked before anything is trained or written.
    Case("tune-loads-abc", "tune {trace} --out {t}/run --loads abc"),
    Case("tune-loads-negative", "tune {trace} --out {t}/run --loads -0.5"),
    Case("tune-loads-nan", "tune {trace} --out {t}/run --loads nan"),
    Case("tune-seeds-abc", "tune {trace} --out {t}/run --seeds x"),
    Case("tune-seeds-negative", "tune {trace} --out {t}/run --seeds -1"),
    Case("tune-bursts-zero", "tune {trace} --out {t}/run --bursts 0"),
    Case("tune-storage-scheme", "tune {trace} --out {t}/run --storage bogus://x"),
    Case("tune-trials-zero", "tune {trace} --out {t}/run --trials 0"),
    Case("tune-workers-zero", "tune {trace} --out {t}/run --workers 0"),
    Case("tune-holdout-one", "tune {trace} --out {t}/run --holdout 1.5"),
    Case("tune-c0-nan", "tune {trace} --out {t}/run --c0 nan"),
    Case("tune-out-under-a-file", "tune {trace} --out {t}/afile/run", _a_file),
    Case("tune-policy-unknown", "tune {trace} --out {t}/run --policies nosuch"),
    Case("tune-trace-missing", "tune {t}/none --out {t}/run"),
    # Export.
    Case("export-max-new-tokens-nan", "export-priorities --config {t}/config.json --server vllm "
         "--max-new-tokens nan --out {t}/exp", _config()),
    Case("export-max-new-tokens-negative", "export-priorities --config {t}/config.json "
         "--server vllm --max-new-tokens -1 --out {t}/exp", _config()),
    Case("export-max-new-tokens-abc", "export-priorities --config {t}/config.json --server vllm "
         "--max-new-tokens abc --out {t}/exp", _config()),
    Case("export-levels-zero", "export-priorities --config {t}/config.json --server vllm "
         "--levels 0 --out {t}/exp", _config()),
    Case("export-config-missing", "export-priorities --config {t}/none.json --server vllm "
         "--out {t}/exp"),
    # Other subcommands' missing or wrong inputs.
    Case("report-missing", "report {t}/none"),
    Case("merge-missing", "merge {t}/none --out {t}/merged"),
    Case("merge-out-under-a-file", "merge {trace} --out {t}/afile/m", _a_file),
    Case("validate-missing", "validate {t}/none"),
    Case("validate-c0-nan", "validate {t}/none --c0 nan"),
    Case("fit-batch-cost-missing",
         "fit-batch-cost {t}/none --rounds-from {trace} --out {t}/c.json"),
    Case("predict-apply-missing-model", "predict apply {trace} --model {t}/none.skops"),
    Case("predict-train-missing-data", "predict train --data {t}/none.json --out {t}/p.skops"),
    Case("predict-train-cv-folds-one", "predict train --data {t}/none.json --out {t}/p.skops "
         "--cv-folds 1"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case: Case, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    if case.make is not None:
        case.make(tmp_path)
    before = snapshot(tmp_path)
    argv = case.argv.format(t=tmp_path, trace=TRACE).split()
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's errors
        status = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "warning:" not in line]
    assert status == 2, f"exit {status}: {err[-400:]}"
    assert len(lines) == 1 and "error" in lines[0], err
    assert snapshot(tmp_path) == before, "a file was changed or left behind"

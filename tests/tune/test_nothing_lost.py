"""A tuning run keeps what earlier runs wrote, and its config works from anywhere.

A rerun is checked before it trains or writes anything: when it is refused, every byte of the
run folder stays as it was. The config records its predictor and traces relative to itself, and
every consumer (``replay --config``, ``export-priorities``) finds them from any working
directory and refuses a predictor whose sha256 is not the recorded one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from one_line import one_line_error, snapshot

from lapsd.cli import main

from .conftest import COST_TABLE, TINY_ARGS, TRACE

RUN_ARGS = [*TINY_ARGS, "--trials", "2", "--bands", "none", "--policies", "lp-srpt"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``traces/eagle`` and a finished run ``runs/r`` tuned on it (with a trained predictor)."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(TRACE, root / "traces" / "eagle")
    assert main(["tune", str(root / "traces" / "eagle"), "--out", str(root / "runs" / "r"),
                 *RUN_ARGS]) == 0
    return root


@pytest.fixture
def moved(project: Path, tmp_path: Path) -> Path:
    """The project copied to another place (the module's original stays untouched)."""
    dest = tmp_path / "moved" / "project"
    shutil.copytree(project, dest)
    return dest


def _tune(root: Path, *args: str) -> list[str]:
    return ["tune", str(root / "traces" / "eagle"), "--out", str(root / "runs" / "r"),
            *RUN_ARGS, *args]


def test_the_config_records_its_files_relative_to_itself(project: Path) -> None:
    data = json.loads((project / "runs" / "r" / "lapsd-config.json").read_text())
    assert data["prediction"]["predictor"]["path"] == "predictor.skops"
    assert [t["path"] for t in data["provenance"]["traces"]] == ["../../traces/eagle"]


@pytest.mark.parametrize("args, differ", [(["--seed", "5"], "seed differ"),
                                          (["--holdout", "0.4"], "holdout differ"),
                                          (["--c0", "0.01"], "c0 differ"),
                                          (["--batch-size", "2"], "batch_size differ")])
def test_a_refused_rerun_changes_no_byte(moved: Path, args: list[str], differ: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    run = moved / "runs" / "r"
    before = snapshot(run)
    one_line_error(_tune(moved, *args), capsys, differ, "use another --out")
    assert snapshot(run) == before


def test_a_predictor_of_other_settings_is_never_replaced(moved: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         ) -> None:
    # Without the journal only the predictor's card knows the settings it was trained for.
    run = moved / "runs" / "r"
    (run / "study.journal").unlink()
    before = snapshot(run)
    one_line_error(_tune(moved, "--seed", "5"), capsys, "predictor.skops was trained for a run "
                   "with other settings (seed differ)")
    assert snapshot(run) == before


BAD_TUNE = [
    (["--storage", "nosuch://x"], "--storage 'nosuch://x' is not a usable database URL"),
    (["--storage", "sqlite:////nonexistent-folder/x.db"], "--storage 'sqlite:"),
    (["--storage", "postgresql://u:secret@127.0.0.1:1/db"],
     "--storage 'postgresql://127.0.0.1:1/db': cannot use the database"),
    (["--loads", "-1"], "--loads: -1.0 is not usable"),
    (["--loads", "0"], "--loads: 0.0"),
    (["--loads", "nan"], "--loads: nan"),
    (["--loads", "inf"], "--loads: inf"),
    (["--seeds", "-1"], "--seeds: -1"),
    (["--seeds", "none"], "--seeds: none"),
    (["--bursts", "0"], "--bursts: 0"),
    (["--batch-size", "4", "--batch-cost", "no-such-table.json"],
     "--batch-cost: cost table no-such-table.json not found"),
    (["--batch-cost", str(COST_TABLE)], "pass --batch-size above 1"),
    (["--bursts", "none", "--loads", "0.5", "--poisson-n", "1", "--seeds", "none"], "--seeds"),
]


@pytest.mark.parametrize("args, expected", BAD_TUNE)
def test_bad_arguments_stop_before_training_or_writing(
        moved: Path, args: list[str], expected: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    fresh = moved / "runs" / "fresh"
    line = one_line_error(["tune", str(moved / "traces" / "eagle"), "--out", str(fresh),
                           *RUN_ARGS, *args], capsys, expected)
    assert "secret" not in line
    assert not fresh.exists()
    # And on an existing run: nothing of it changes.
    run = moved / "runs" / "r"
    before = snapshot(run)
    one_line_error(_tune(moved, *args), capsys, expected)
    assert snapshot(run) == before


# one_line_error drains capsys before each run, so sharing it between examples is safe.
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(load=st.one_of(st.floats(max_value=0.0), st.sampled_from([math.nan, math.inf])))
def test_any_unusable_load_is_one_line(load: float, tmp_path_factory: pytest.TempPathFactory,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path_factory.mktemp("loads") / "run"
    one_line_error(["tune", str(TRACE), "--out", str(out), *RUN_ARGS, f"--loads={load!r}"],
                   capsys, "--loads:")
    assert not out.exists()


def test_consumers_refuse_a_predictor_the_config_does_not_name(
        moved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, trace = moved / "runs" / "r", str(moved / "traces" / "eagle")
    config = str(run / "lapsd-config.json")
    replay = ["replay", trace, "--config", config, "--policies", "fcfs", "--workload",
              "burst:n=5"]
    export = ["export-priorities", "--config", config, "--server", "vllm", "--out",
              str(tmp_path / "exp")]
    other = tmp_path / "other.skops"
    other.write_bytes((run / "predictor.skops").read_bytes() + b"\0")
    # Given explicitly: refused, since the config was tuned with another predictor.
    one_line_error([*replay, "--predictor", str(other)], capsys, "--predictor", "not the "
                   "predictor", "leave --predictor out")
    one_line_error([*export, "--predictor", str(other)], capsys, "--predictor")
    # Replaced beside the config (what a retrain in place did): refused.
    shutil.copyfile(other, run / "predictor.skops")
    for argv in (replay, export):
        one_line_error(argv, capsys, "predictor.skops is not the one", "sha256")
    # Gone: refused, saying where it was looked for.
    (run / "predictor.skops").unlink()
    for argv in (replay, export):
        one_line_error(argv, capsys, "predictor predictor.skops", "not found")
    assert not (tmp_path / "exp").exists()


def test_a_moved_project_works_from_another_folder(moved: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = os.path.relpath(moved / "runs" / "r" / "lapsd-config.json")
    # replay --config needs no --predictor: the config's own is used.
    assert main(["replay", os.path.relpath(moved / "traces" / "eagle"), "--config", config,
                 "--policies", "fcfs", "--workload", "burst:n=5", "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["predictions"] == f"predictor {Path(config).parent / 'predictor.skops'}"
    assert main(["export-priorities", "--config", config, "--server", "vllm", "--out",
                 "exp"]) == 0
    assert (elsewhere / "exp" / "predictor.skops").read_bytes() == (
        moved / "runs" / "r" / "predictor.skops").read_bytes()


def test_a_run_folder_moved_alone_needs_its_traces_named(moved: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         ) -> None:
    run = tmp_path / "alone"
    shutil.move(moved / "runs" / "r", run)
    trace = str(moved / "traces" / "eagle")
    config = str(run / "lapsd-config.json")
    assert main(["replay", trace, "--config", config, "--policies", "fcfs", "--workload",
                 "burst:n=5"]) == 0
    export = ["export-priorities", "--config", config, "--server", "vllm", "--out",
              str(tmp_path / "exp")]
    one_line_error(export, capsys, "trace ../../traces/eagle", "not found",
                   "--calibration TRACE_DIR")
    assert main([*export, "--calibration", trace]) == 0


def test_configs_with_working_directory_paths_still_load(moved: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str],
                                                         ) -> None:
    """Earlier lapsd recorded paths relative to where it ran; from there they still resolve."""
    path = moved / "runs" / "r" / "lapsd-config.json"
    data = json.loads(path.read_text())
    data["prediction"]["predictor"]["path"] = "runs/r/predictor.skops"
    data["provenance"]["traces"][0]["path"] = "traces/eagle"
    path.write_text(json.dumps(data))
    monkeypatch.chdir(moved)
    assert main(["export-priorities", "--config", "runs/r/lapsd-config.json", "--server",
                 "sglang", "--out", "exp"]) == 0
    monkeypatch.chdir(moved / "runs")
    one_line_error(["replay", "../traces/eagle", "--config", "r/lapsd-config.json",
                    "--policies", "fcfs"], capsys, "predictor runs/r/predictor.skops",
                   "not found")


def test_predict_apply_replaces_an_existing_output_only_with_force(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "with-predictions"
    target.write_text("an old file\n")
    argv = ["predict", "apply", "--model", str(project / "runs" / "r" / "predictor.skops"),
            str(project / "traces" / "eagle"), "--out", str(target)]
    one_line_error(argv, capsys, f"--out {target} exists; pass --force to replace it")
    assert target.read_text() == "an old file\n"
    assert main([*argv, "--force"]) == 0
    assert (target / "requests.parquet").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["with-predictions"]

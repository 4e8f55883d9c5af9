"""Resumable journal: kill a run, re-run the same command, and no trial is lost or repeated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from lapsd.tune.defaults import JOURNAL_FILE
from lapsd.tune.study import FINISHED, StorageSpec

from .conftest import TINY_ARGS, TRACE, WHAT_IF, check_accounted

TARGET = 8
HELD = 3

#: Loaded by every Python process of the interrupted run (through PYTHONPATH): the objective
#: lets HELD trials finish, then holds the next one until the test interrupts the run. So the
#: interruption lands at a point the test controls, not in a race with fast trials.
HOLD = f"""
import os, time
from pathlib import Path

from lapsd.tune.objective import Evaluator

_score = Evaluator.score
_calls = Path(os.environ["LAPSD_TEST_HOLD_DIR"])


def score(self, *args, **kwargs):
    done = len(list(_calls.glob("trial-*")))
    if done >= {HELD}:
        (_calls / "holding").touch()
        while True:
            time.sleep(1)
    result = _score(self, *args, **kwargs)
    (_calls / f"trial-{{os.getpid()}}-{{time.monotonic_ns()}}").touch()
    return result


Evaluator.score = score
"""


def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "lapsd", "tune", str(TRACE), "--out", str(out),
            "--trials", str(TARGET), "--bands", "none", "--policies", "laps-sd",
            "--predictions", WHAT_IF, *TINY_ARGS]


def _study(out: Path) -> optuna.Study:
    storage = StorageSpec(str(out / JOURNAL_FILE)).open()
    return optuna.load_study(study_name="lapsd-laps-sd", storage=storage)


def _finished(out: Path) -> int:
    if not (out / JOURNAL_FILE).exists():
        return 0
    try:
        return len(_study(out).get_trials(states=FINISHED))
    except KeyError:  # the study is not created yet
        return 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_resumes_to_exact_count(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "run"
    hook, hold = tmp_path / "hook", tmp_path / "hold"
    hook.mkdir()
    hold.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD)
    env = {**os.environ, "PYTHONPATH": str(hook), "LAPSD_TEST_HOLD_DIR": str(hold)}
    proc = subprocess.Popen(_command(out), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 180
    while not (hold / "holding").exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the first run made no progress"
        time.sleep(0.05)
    os.killpg(proc.pid, sig)  # the whole group: the command and its worker process
    proc.wait(timeout=60)
    assert _finished(out) == HELD

    rerun = subprocess.run(_command(out), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = _study(out)
    check_accounted(study, TARGET)
    assert study.trials[0].params["K"] == 4  # the design defaults were the first trial
    total = len(study.trials)

    # A completed run re-run does nothing more.
    subprocess.run(_command(out), check=True, capture_output=True, timeout=300)
    assert len(_study(out).trials) == total

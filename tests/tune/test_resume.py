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

#: Loaded by every Python process of a run (through PYTHONPATH): the objective marks each
#: score it computes with a ``trial-*`` file; once LAPSD_TEST_HOLD_AFTER have been computed, it
#: marks ``holding-<pid>`` and holds its trial until the test interrupts the run. So the
#: interruption lands at a point the test controls, not in a race with fast trials.
HOLD = """
import os, time
from pathlib import Path

from lapsd.tune.objective import Evaluator

_score = Evaluator.score
_calls = Path(os.environ["LAPSD_TEST_HOLD_DIR"])
_after = int(os.environ["LAPSD_TEST_HOLD_AFTER"])


def score(self, *args, **kwargs):
    if len(list(_calls.glob("trial-*"))) >= _after:
        (_calls / f"holding-{os.getpid()}").touch()
        while True:
            time.sleep(1)
    result = _score(self, *args, **kwargs)
    (_calls / f"trial-{os.getpid()}-{time.monotonic_ns()}").touch()
    return result


Evaluator.score = score
"""


def hooked(tmp_path: Path, name: str, hold_after: int) -> tuple[dict[str, str], Path]:
    """The environment of a run with :data:`HOLD`, and the folder of its marks."""
    hook, marks = tmp_path / "hook", tmp_path / name
    hook.mkdir(exist_ok=True)
    marks.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD)
    return ({**os.environ, "PYTHONPATH": str(hook), "LAPSD_TEST_HOLD_DIR": str(marks),
             "LAPSD_TEST_HOLD_AFTER": str(hold_after)}, marks)


def start_held(command: list[str], env: dict[str, str], marks: Path, holding: int = 1,
               ) -> subprocess.Popen[bytes]:
    """Start ``command`` in a session of its own; return once ``holding`` processes hold."""
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 180
    while len(list(marks.glob("holding-*"))) < holding:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the first run made no progress"
        time.sleep(0.05)
    return proc


def tune_command(out: Path, *extra: str) -> list[str]:
    """``lapsd tune`` of LAPS-SD alone to TARGET trials on the tiny suite."""
    return [sys.executable, "-m", "lapsd", "tune", str(TRACE), "--out", str(out),
            "--trials", str(TARGET), "--bands", "none", "--policies", "laps-sd",
            "--predictions", WHAT_IF, *TINY_ARGS, *extra]


def study_of(out: Path) -> optuna.Study:
    """The LAPS-SD study of the run in ``out``."""
    storage = StorageSpec(str(out / JOURNAL_FILE)).open()
    return optuna.load_study(study_name="lapsd-laps-sd", storage=storage)


def finished(out: Path) -> int:
    """Finished trials of the study in ``out`` (0 before it exists)."""
    if not (out / JOURNAL_FILE).exists():
        return 0
    try:
        return len(study_of(out).get_trials(states=FINISHED))
    except KeyError:  # the study is not created yet
        return 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_resumes_to_exact_count(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "run"
    env, marks = hooked(tmp_path, "marks", HELD)
    proc = start_held(tune_command(out), env, marks)
    os.killpg(proc.pid, sig)  # the whole group: the command and its worker process
    proc.wait(timeout=60)
    assert finished(out) == HELD

    rerun = subprocess.run(tune_command(out), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = study_of(out)
    check_accounted(study, TARGET)
    assert study.trials[0].params["K"] == 4  # the design defaults were the first trial
    total = len(study.trials)

    # A completed run re-run does nothing more.
    subprocess.run(tune_command(out), check=True, capture_output=True, timeout=300)
    assert len(study_of(out).trials) == total

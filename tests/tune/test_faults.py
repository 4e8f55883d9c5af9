"""Faults: a killed run leaves no lock to wait on and no worker behind, the next run resumes to
the exact count with no trial computed twice, and an unusable ``--storage`` is one line."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from lapsd.tune.context import TuneSpec
from lapsd.tune.defaults import JOURNAL_FILE
from lapsd.tune.study import StorageSpec, StudyJob, prepare_study

from .conftest import check_accounted
from .test_resume import HELD, TARGET, hooked, start_held, study_of, tune_command

#: Optuna's own lock of a journal (what lapsd used before it locked with flock).
OPTUNA_LOCK = JOURNAL_FILE + ".lock"
#: Optuna's warnings while it waits on a journal lock: the first after 10 s.
LOCK_WAIT_WARNINGS = ("taking longer", "Forcibly releasing")

#: Holds ``sys.argv[2]``'s lock (``flock``: lapsd's; ``optuna``: Optuna's own), then sleeps.
HOLDER = """
import sys, time
from pathlib import Path

from optuna.storages.journal import JournalFileSymlinkLock

from lapsd.tune.journal import JournalFlock

journal = sys.argv[1]
lock = JournalFlock(journal) if sys.argv[2] == "flock" else JournalFileSymlinkLock(journal)
lock.acquire()
Path(sys.argv[3]).touch()
time.sleep(600)
"""


def _killed_while_holding(tmp_path: Path, journal: Path, kind: str) -> None:
    """Run a process that takes ``kind`` of lock on ``journal``; SIGKILL it while it holds it."""
    script, held = tmp_path / "holder.py", tmp_path / f"held-{kind}"
    script.write_text(HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), str(journal), kind, str(held)])
    try:
        deadline = time.monotonic() + 60
        while not held.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no lock taken"
            time.sleep(0.02)
        if kind == "flock":
            with open(journal, "rb") as f, pytest.raises(BlockingIOError):
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # really held
    finally:
        proc.kill()
        proc.wait()


def _stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_a_writer_killed_holding_the_journal_lock_leaves_it_free(tmp_path: Path) -> None:
    journal = tmp_path / JOURNAL_FILE
    journal.touch()
    _killed_while_holding(tmp_path, journal, "flock")
    with open(journal, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free at once: the kernel released it
    assert not (tmp_path / OPTUNA_LOCK).exists()


def test_a_stale_optuna_lock_and_a_torn_record_are_repaired(tmp_path: Path,
                                                            tiny_spec: TuneSpec) -> None:
    journal = tmp_path / JOURNAL_FILE
    job = StudyJob(tiny_spec, StorageSpec(str(journal)), "s", 3)
    prepare_study(job)
    _killed_while_holding(tmp_path, journal, "optuna")
    assert os.path.lexists(tmp_path / OPTUNA_LOCK)
    whole = journal.read_bytes()
    with open(journal, "ab") as f:
        f.write(b'{"op_code": 5, "worker_id": "x", "study_')  # a writer killed mid-append

    with pytest.warns(UserWarning) as caught:
        study = prepare_study(job)
    lock, record = (str(w.message) for w in caught)
    assert OPTUNA_LOCK in lock and "killed" in lock
    assert "incomplete last record" in record and "40 bytes" in record
    assert not os.path.lexists(tmp_path / OPTUNA_LOCK)
    after = journal.read_bytes()
    assert after.startswith(whole) and b'"worker_id": "x"' not in after

    # Still a plain Optuna journal, readable after more records with Optuna's own backend.
    study.set_user_attr("after", 1)
    plain = JournalStorage(JournalFileBackend(str(journal)))
    assert optuna.load_study(study_name="s", storage=plain).user_attrs["after"] == 1


def test_a_killed_run_that_left_optunas_lock_resumes_at_once_with_one_line(
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    env, marks = hooked(tmp_path, "marks", HELD)
    proc = start_held(tune_command(out), env, marks)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    # What a run of an older lapsd, killed while it appended, left behind.
    _killed_while_holding(tmp_path, out / JOURNAL_FILE, "optuna")

    rerun = subprocess.run(tune_command(out), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    about_lock = [line for line in _stderr_lines(rerun.stderr) if OPTUNA_LOCK in line]
    assert len(about_lock) == 1 and "lapsd: warning:" in about_lock[0], rerun.stderr
    # No lock wait of 10 s or more (Optuna warns then; it breaks a lock after 30 s).
    assert not any(w in rerun.stderr for w in LOCK_WAIT_WARNINGS), rerun.stderr
    assert "Traceback" not in rerun.stderr
    assert not os.path.lexists(out / OPTUNA_LOCK)
    check_accounted(study_of(out), TARGET)

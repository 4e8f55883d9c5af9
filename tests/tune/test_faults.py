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
from hypothesis import given
from hypothesis import strategies as st
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from lapsd.cli import main
from lapsd.errors import LapsdError
from lapsd.tune.context import TuneSpec
from lapsd.tune.defaults import JOURNAL_FILE
from lapsd.tune.study import StorageSpec, StudyJob, check_storage, prepare_study

from .conftest import TINY_ARGS, TRACE, WHAT_IF, check_accounted
from .test_resume import HELD, TARGET, finished, hooked, start_held, study_of, tune_command

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


#: The process tests find a command's processes in /proc.
PROC = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                          reason="finds a command's processes in Linux's /proc")


def _stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent's pid (/proc), or ``None`` once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1])


def _descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = stat[1]
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = [c for c, p in parents.items() if p == parent]
        found += children
        todo += children
    return found


def _assert_gone(pids: list[int], within_s: float) -> None:
    """Every process of ``pids`` ends (or is a zombie no one reaped) within ``within_s``."""

    def alive(pid: int) -> bool:
        stat = _stat(pid)
        return stat is not None and stat[0] != "Z"

    deadline = time.monotonic() + within_s
    while survivors := [pid for pid in pids if alive(pid)]:
        if time.monotonic() > deadline:
            for pid in survivors:
                os.kill(pid, signal.SIGKILL)
            pytest.fail(f"processes {survivors} survived their killed parent")
        time.sleep(0.05)


@PROC
@pytest.mark.parametrize("platform", ["linux", "other"])
def test_a_worker_dies_with_its_killed_parent(tmp_path: Path, platform: str) -> None:
    if platform == "linux" and sys.platform != "linux":
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    script, ready = tmp_path / "parent.py", tmp_path / "ready"
    script.write_text(f"""
import multiprocessing as mp, sys, time
from pathlib import Path

from lapsd.tune.study import die_with_parent


def child():
    if {platform!r} != "linux":
        sys.platform = "other"  # the watchdog thread, as on macOS
    die_with_parent()
    Path({str(ready)!r}).touch()
    time.sleep(600)


if __name__ == "__main__":
    mp.get_context("spawn").Process(target=child).start()
    time.sleep(600)
""")
    parent = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert parent.poll() is None and time.monotonic() < deadline, "no child started"
            time.sleep(0.02)
        children = _descendants(parent.pid)
    finally:
        parent.kill()
        parent.wait()
    assert children
    _assert_gone(children, within_s=10)


def _complete(out: Path) -> int:
    return len(study_of(out).get_trials(states=(TrialState.COMPLETE,)))


@PROC
def test_killed_run_with_workers_leaves_none_and_resumes_to_the_exact_count(
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    env, first = hooked(tmp_path, "first", HELD)
    proc = start_held(tune_command(out, "--workers", "2"), env, first, holding=2)
    workers = _descendants(proc.pid)
    proc.kill()  # the parent alone, as an OOM killer or `kill -9 PID` would
    proc.wait(timeout=60)
    _assert_gone(workers, within_s=10)
    # Each trial the first run computed was recorded, and nothing writes the journal any more.
    computed_first = len(list(first.glob("trial-*")))
    assert computed_first == _complete(out) == finished(out) >= HELD
    size = (out / JOURNAL_FILE).stat().st_size
    time.sleep(1)
    assert (out / JOURNAL_FILE).stat().st_size == size

    env, second = hooked(tmp_path, "second", 10**6)
    rerun = subprocess.run(tune_command(out, "--workers", "2"), capture_output=True, text=True,
                           env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    notes = [line for line in _stderr_lines(rerun.stderr) if "warning" in line]
    assert len(notes) == 1 and "left running by an earlier run" in notes[0], rerun.stderr
    study = study_of(out)
    check_accounted(study, TARGET)
    # No trial computed twice: each score computed by either run is one complete trial.
    assert computed_first + len(list(second.glob("trial-*"))) == _complete(out)


_PSYCOPG2 = "postgresql://lapsd:secret@db.example:5432/lapsd"

#: (--storage, what the one line says, psycopg2 importable).
BAD_STORAGE = [
    ("nonsense", "not a usable database URL", True),
    ("", "not a usable database URL", True),
    ("postgres://lapsd:secret@host/db", "not a usable database URL", True),
    ("postgresql://lapsd:secret@host:port/db", "not a usable database URL", True),
    ("nosuchdb+x://lapsd:secret@host/db", "not a usable database URL", True),
    ("postgresql+psycopg://lapsd:secret@host/db", "driver of postgresql is not installed",
     True),
    ("mysql+nosuchdriver://lapsd:secret@host/db", "not a usable database URL", True),
    (_PSYCOPG2, "pip install 'lapsd[postgres]'", False),
    ("postgresql+psycopg2://lapsd:secret@host/db", "pip install 'lapsd[postgres]'", False),
    ("postgresql://lapsd:secret@127.0.0.1:1/lapsd", "cannot use the database", True),
]


@pytest.mark.parametrize(("url", "says", "psycopg2"), BAD_STORAGE)
def test_an_unusable_storage_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch, url: str, says: str,
                                         psycopg2: bool) -> None:
    if psycopg2:
        pytest.importorskip("psycopg2", reason="the postgres extra is not installed")
    else:
        monkeypatch.setitem(sys.modules, "psycopg2", None)  # import psycopg2 fails
    out = tmp_path / "run"
    out.mkdir()
    kept = out / "kept.txt"
    kept.write_text("before")
    before = kept.stat().st_mtime_ns

    code = main(["tune", str(TRACE), "--out", str(out), "--storage", url, "--trials", "2",
                 "--bands", "none", "--policies", "laps-sd", "--predictions", WHAT_IF,
                 *TINY_ARGS])
    err = capsys.readouterr().err
    assert code == 2, err
    # The what-if notice is printed first, as in every run with --predictions oracle.
    lines = [line for line in _stderr_lines(err) if not line.startswith(f"predictions {WHAT_IF}")]
    assert len(lines) == 1 and "--storage" in lines[0] and says in lines[0], err
    assert "Traceback" not in err and "secret" not in err
    assert kept.read_text() == "before" and kept.stat().st_mtime_ns == before


def test_check_storage_needs_no_connection() -> None:
    check_storage(_PSYCOPG2)  # db.example does not resolve; nothing connects
    check_storage("sqlite:///study.db")


_SCHEMES = st.sampled_from(["postgresql", "postgresql+psycopg2", "postgres", "sqlite",
                            "mysql", "", "http", "postgresql+"])


@given(st.one_of(st.text(), st.builds("{}://{}".format, _SCHEMES, st.text())))
def test_check_storage_accepts_or_says_one_line(url: str) -> None:
    try:
        check_storage(url)
    except LapsdError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("--storage ")

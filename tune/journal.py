"""The study journal's lock, and the repair of what a killed writer can leave behind.

Optuna's journal locks (``JournalFileSymlinkLock``, ``JournalFileOpenLock``) are files: a writer
killed while it holds one leaves the file behind, and the next writer waits 30 s printing
warnings before it breaks the lock; it breaks a slow live writer's lock the same way. lapsd's
writers instead take ``flock(2)`` on the journal file itself (:class:`JournalFlock`): the kernel
releases it when the holder ends, however it ends, so a kill leaves no lock behind and no
liveness is guessed. Readers take no lock, so the journal stays a plain Optuna journal that
``optuna.load_study`` and the dashboard read as before. The lock is local to one machine, like
the journal itself.

:func:`recover_journal` runs before a tuning run's studies start (the run holds its output
folder's lock, so no other lapsd process writes the journal) and repairs two leftovers of
writers killed while writing: Optuna's lock file, which lapsd no longer makes (a run of an older
lapsd, or a plain Optuna process, killed while it held it), and an incomplete last record, which
would make the next appended record unreadable.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import BinaryIO

# Optuna exports no lock base class; JournalFileBackend only calls acquire() and release().
from optuna.storages.journal._file import LOCK_FILE_SUFFIX, BaseJournalFileLock


class JournalFlock(BaseJournalFileLock):
    """An exclusive ``flock(2)`` on the journal file, held while one record is appended.

    Each acquisition opens the file anew (close-on-exec): a lock is owned by one open file, so
    no other process or object can share it by inheriting the descriptor.
    """

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Wait for the lock (its holder is alive: the kernel drops a dead holder's lock)."""
        fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """Release the lock (closing the file releases it)."""
        fd, self._fd = self._fd, None
        if fd is None:
            raise RuntimeError(f"the lock of {self._path} is not held")
        os.close(fd)


def recover_journal(path: Path | str) -> list[str]:
    """Repair what writers killed while writing left in the journal; one message per repair.

    Call it only while no other process writes the journal (a tuning run holds its output
    folder's lock for this). A missing journal needs no repair.
    """
    journal = Path(path)
    if not journal.exists():
        return []
    done = []
    stale = Path(f"{journal}{LOCK_FILE_SUFFIX}")
    if os.path.lexists(stale):
        stale.unlink()
        done.append(f"removed {stale}: Optuna's journal lock, left by a writer killed while "
                    "holding it (lapsd now locks the journal with flock, which no kill leaves "
                    "behind)")
    with open(journal, "rb+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # JournalFlock's lock; closing the file releases it
        size = f.seek(0, os.SEEK_END)
        keep = _complete_size(f, size)
        if keep < size:
            f.truncate(keep)
            done.append(f"removed the incomplete last record of {journal} ({size - keep} "
                        "bytes), left by a writer killed while appending it")
    return done


def _complete_size(f: BinaryIO, size: int, chunk: int = 1 << 16) -> int:
    """The journal's size up to and including its last newline (0 without one)."""
    end = size
    while end > 0:
        start = max(0, end - chunk)
        f.seek(start)
        newline = f.read(end - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0

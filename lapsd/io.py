"""File helpers every package shares: atomic writes, JSON output, JSON Lines input, hashes.

Writers never leave a half-written file or folder behind: content goes to a temporary name in
the destination's folder and is renamed into place, so a reader sees the old version or the new
one, and a crash keeps the old one. Files get the permissions a plain ``open()`` would give.

An output path that cannot be written (a folder where a file goes, a path under a file, a
read-only folder) is a :class:`~lapsd.errors.LapsdError` naming the path and why:
:func:`check_output` says so before a command starts its work, and the writers say so should
the path change meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lapsd.errors import LapsdError

#: The ``--json`` target that means standard output.
STDOUT = "-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _blocked(dest: Path) -> str | None:
    """Why nothing can be created at ``dest`` (an ancestor is a file, or read-only), or ``None``.

    Looks at the nearest existing ancestor: the folders below it would be created.
    """
    folder = dest.absolute().parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"folder {folder} is not writable"
    return None


def _special(dest: Path) -> bool:
    """Whether ``dest`` is neither a regular file nor a folder: a device, a pipe, a socket.

    Such a path (``/dev/null``, ``/dev/stdout``, a shell's ``>(...)``) is written into, never
    renamed over or moved aside: replacing ``/dev/null`` with a file breaks the whole machine.
    """
    try:
        mode = dest.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _unwritable(dest: Path, exc: OSError) -> LapsdError:
    """The one-line error of an output that failed with ``exc``."""
    why = _blocked(dest) or ("it is a folder" if dest.is_dir() else exc.strerror or str(exc))
    return LapsdError(f"cannot write {dest}: {why}; choose another path")


def check_output(path: Path | str, flag: str, *, folder: bool = False,
                 force: bool = True) -> None:
    """Refuse, before any work, an output path that cannot be written.

    Parameters
    ----------
    path
        Where the command will write (``-`` is standard output, always writable).
    flag
        The option that named it (``--out``, ``--json``), for the message.
    folder
        Whether a folder is written there (else a file, which an existing folder blocks).
    force
        Whether an existing ``path`` may be replaced (``--force``).

    Raises
    ------
    LapsdError
        With ``flag``, the path, why, and what to do.
    """
    if str(path) == STDOUT and not folder:
        return
    dest = Path(path)
    if folder and _special(dest):
        raise LapsdError(f"{flag} {dest} is a device or a pipe, not a folder; name a folder")
    if os.path.lexists(dest) and not _special(dest):
        if not force:
            raise LapsdError(f"{flag} {dest} exists; pass --force to replace it")
        if not folder and dest.is_dir():
            raise LapsdError(f"{flag} {dest} is a folder; name a file to write")
    why = _blocked(dest)
    if why is not None:
        raise LapsdError(f"{flag} {dest}: {why}; choose another path")


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary file path beside ``path``; renamed to ``path`` when the block succeeds.

    For writers that need a path of their own (Parquet, skops). On an exception the temporary
    file is removed and ``path`` is left as it was.

    Raises
    ------
    LapsdError
        When ``path`` cannot be written (see :func:`check_output`), or is a device or a pipe
        (:func:`atomic_write_text` writes text into those).
    """
    dest = Path(path)
    if _special(dest):
        raise LapsdError(f"cannot write {dest}: it is a device or a pipe, and this output must "
                         "be a file; choose a file path")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise _unwritable(dest, exc) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        try:
            # mkstemp makes the file private; give it the permissions a plain open() would.
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, dest)
        except OSError as exc:
            raise _unwritable(dest, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write a text file atomically; into a device or a pipe (``/dev/null``), directly."""
    dest = Path(path)
    if _special(dest):
        try:
            with dest.open("w") as f:
                f.write(text)
        except OSError as exc:
            raise _unwritable(dest, exc) from None
        return
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def _remove(path: Path) -> None:
    """Delete a file, a link or a folder tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextmanager
def atomic_dir(path: Path | str, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``path``; it replaces ``path`` when the block succeeds.

    With ``overwrite``, whatever is at ``path`` (a folder or a file) is moved aside just before
    the rename and deleted after it.

    Raises
    ------
    LapsdError
        When ``path`` exists and ``overwrite`` is false, or it cannot be written.
    """
    dest = Path(path)
    if _special(dest):
        raise LapsdError(f"cannot write a folder at {dest}: it is a device or a pipe; choose "
                         "another path")
    if os.path.lexists(dest) and not overwrite:
        raise LapsdError(f"{dest} exists; pass --force (overwrite=True) to replace it")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    except OSError as exc:
        raise _unwritable(dest, exc) from None
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    try:
        yield tmp
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            if os.path.lexists(dest):
                os.replace(dest, old)
                try:
                    os.replace(tmp, dest)
                except OSError:
                    os.replace(old, dest)
                    raise
            else:
                os.replace(tmp, dest)
        except OSError as exc:
            raise _unwritable(dest, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.lexists(old):
        try:
            _remove(old)
        except OSError as exc:
            raise LapsdError(f"wrote {dest}, but could not delete the replaced copy {old} "
                             f"({exc.strerror}); delete it by hand") from None


def dumps(payload: Any) -> str:
    """The JSON text lapsd writes: indented, non-JSON values as strings, a final newline.

    Standard JSON only: a NaN or infinite number raises :class:`ValueError` (a bug upstream:
    whatever computed it must refuse its input or write ``null``).
    """
    return json.dumps(payload, indent=2, default=str, allow_nan=False) + "\n"


def write_json(target: Path | str, payload: Any) -> None:
    """Write ``payload`` as JSON to a file (atomically), or to standard output for ``-``."""
    if str(target) == STDOUT:
        sys.stdout.write(dumps(payload))
        sys.stdout.flush()
    else:
        atomic_write_text(target, dumps(payload))


def read_json(path: Path | str, *, missing: str, what: str = "") -> Any:
    """The JSON document in ``path``.

    Raises
    ------
    LapsdError
        ``missing`` when the file does not exist; ``"{what}{path} is not JSON (...)"`` when it
        does not hold a JSON document.
    """
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise LapsdError(missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LapsdError(f"{what}{p} is not JSON ({exc})") from None


def read_jsonl(path: Path | str, *, what: str = "record",
               on_error: Callable[[int, str], None] | None = None) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line of a JSON Lines file.

    Parameters
    ----------
    path
        The file.
    what
        What a line holds, for error messages ("Spec-Bench question").
    on_error
        Called with ``(line number, message)`` for a line that is not JSON, which is then
        skipped; without it such a line raises.

    Raises
    ------
    LapsdError
        When the file is missing or unreadable, or (without ``on_error``) a line is not JSON.
    """
    p = Path(path)
    if not p.is_file():
        raise LapsdError(f"{p}: no such file (expected a JSON Lines file of {what}s)")
    try:
        with p.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    message = f"not JSON ({exc.msg} at column {exc.colno})"
                    if on_error is None:
                        raise LapsdError(f"{p}:{lineno}: {message}; expected one {what} per "
                                         "line") from None
                    on_error(lineno, message)
                    continue
                yield lineno, value
    except UnicodeDecodeError as exc:
        raise LapsdError(f"{p}: not UTF-8 text ({exc.reason}); expected a JSON Lines file of "
                         f"{what}s") from None


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()

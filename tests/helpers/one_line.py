"""Checks of the project's rule for bad input: one line on stderr, exit 2, nothing changed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from lapsd.cli import main


def snapshot(*paths: Path) -> dict[Path, tuple[bytes, int]]:
    """Bytes and modification time of every file at or under ``paths`` (files or folders)."""
    files: list[Path] = []
    for path in paths:
        files += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}


def one_line_error(argv: Sequence[str], capsys: pytest.CaptureFixture[str],
                   *checks: str | Path) -> str:
    """Run ``lapsd argv`` in-process; assert exit 2 and one error line, and return it.

    Each text in ``checks`` must be in the line; each path (a file or a folder) must be left
    as it was, every byte and modification time.
    """
    expected = [c for c in checks if isinstance(c, str)]
    watched = [c for c in checks if isinstance(c, Path)]
    capsys.readouterr()
    before = snapshot(*watched)
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, f"exit {code} for {list(argv)}; stderr: {err!r}"
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    assert snapshot(*watched) == before, "a file was changed"
    return lines[0]

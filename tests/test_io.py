"""lapsd.io: reading JSON documents with errors that say what and where."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lapsd.errors import LapsdError
from lapsd.io import read_json


def test_read_json_reads_and_names_what_is_wrong(tmp_path: Path) -> None:
    good = tmp_path / "a.json"
    good.write_text('{"kind": "x", "n": [1, 2]}')
    assert read_json(good, missing="unused") == {"kind": "x", "n": [1, 2]}
    with pytest.raises(LapsdError, match=r"^no table here; write one$"):
        read_json(tmp_path / "absent.json", missing="no table here; write one")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LapsdError, match=r"^cost table .*bad\.json is not JSON \("):
        read_json(bad, missing="unused", what="cost table ")
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(LapsdError, match="is not JSON"):
        read_json(binary, missing="unused")


def test_a_folder_replaces_a_file_and_leaves_no_copy(tmp_path: Path) -> None:
    from lapsd.io import atomic_dir

    target = tmp_path / "out"
    target.write_text("an old file")
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .out.old-PID left
    with atomic_dir(target, overwrite=True) as tmp:  # and a folder replaces a folder
        (tmp / "b.txt").write_text("newer")
    assert [p.name for p in target.iterdir()] == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_writers_say_in_one_line_why_a_path_cannot_be_written(tmp_path: Path,
                                                              where: str) -> None:
    from lapsd.io import atomic_dir, check_output, write_json

    blocker = tmp_path / "file"
    blocker.write_text("kept")
    folder = tmp_path / "folder"
    folder.mkdir()
    target = folder if where == "a folder" else blocker / "sub" / "x.json"
    for write in (lambda: write_json(target, {"a": 1}),
                  lambda: check_output(target, "--json")):
        with pytest.raises(LapsdError) as exc:
            write()
        assert str(target) in str(exc.value) and "\n" not in str(exc.value)
    if where == "under a file":
        with (pytest.raises(LapsdError, match="is a file, not a folder"),
              atomic_dir(target, overwrite=True)):
            pass
    assert blocker.read_text() == "kept" and list(folder.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]


def test_check_output_refuses_an_existing_folder_output_without_force(tmp_path: Path) -> None:
    from lapsd.io import check_output

    check_output(tmp_path / "new" / "deeper", "--out", folder=True, force=False)
    check_output(tmp_path, "--out", folder=True, force=True)
    check_output("-", "--json")
    with pytest.raises(LapsdError, match=r"^--out .* exists; pass --force to replace it$"):
        check_output(tmp_path, "--out", folder=True, force=False)


def test_a_pipe_or_device_output_is_written_into_never_replaced(tmp_path: Path) -> None:
    """``--json /dev/null`` as root once replaced the machine's /dev/null with a file."""
    import stat
    import threading

    from lapsd.io import atomic_dir, atomic_path, check_output, write_json

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    check_output(fifo, "--json", force=False)  # a pipe is written into, not "replaced"
    write_json(fifo, {"a": 1})
    reader.join(timeout=10)
    assert json.loads(got[0]) == {"a": 1}
    with pytest.raises(LapsdError, match="device or a pipe"):
        check_output(fifo, "--out", folder=True)
    with pytest.raises(LapsdError, match="device or a pipe"), atomic_path(fifo):
        pass
    with pytest.raises(LapsdError, match="device or a pipe"), atomic_dir(fifo, overwrite=True):
        pass
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]

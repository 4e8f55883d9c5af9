"""lapsd.io: reading JSON documents with errors that say what and where."""

from __future__ import annotations

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

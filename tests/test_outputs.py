"""Every output path a subcommand cannot write is one line, exit 2, before any work.

An existing folder where a file goes, a path under a regular file, an existing output without
``--force``: each subcommand that writes says so naming the option and the path, and changes
nothing. (Tests run as root, where a read-only folder does not stop a write; a path under a
file does.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from one_line import one_line_error, snapshot

from lapsd.cli import main

TRACE = str(Path(__file__).resolve().parents[1] / "examples" / "specbench-vicuna7b-eagle")
ANSWER = {"question_id": 1, "model_id": "m", "choices": [{
    "index": 0, "turns": ["hello there"], "new_tokens": [6], "decoding_steps": [2],
    "wall_time": [0.1], "accept_lengths": [3, 3]}]}

Paths = dict[str, Path]
#: (command line, what the one line names), built from the test's paths: ``dir`` an existing
#: folder, ``file`` an existing file, ``under`` a path below that file.
CASES: list[tuple[str, Callable[[Paths], list[str]], str]] = [
    ("inspect --json DIR", lambda p: ["inspect", TRACE, "--json", str(p["dir"])], "--json"),
    ("inspect --json UNDER", lambda p: ["inspect", TRACE, "--json", str(p["under"])], "--json"),
    ("replay --json DIR", lambda p: ["replay", TRACE, "--policies", "fcfs", "--json",
                                     str(p["dir"])], "--json"),
    ("replay --json UNDER", lambda p: ["replay", TRACE, "--policies", "fcfs", "--json",
                                       str(p["under"])], "--json"),
    ("import --out UNDER", lambda p: ["import", "specbench", str(p["answers"]), "--out",
                                      str(p["under"])], "--out"),
    ("import --out FILE", lambda p: ["import", "specbench", str(p["answers"]), "--out",
                                     str(p["file"])], "exists; pass --force"),
    ("import --json DIR", lambda p: ["import", "specbench", str(p["answers"]), "--out",
                                     str(p["dir"].parent / "new"), "--json", str(p["dir"])],
     "--json"),
    ("predict train --out DIR", lambda p: ["predict", "train", "--data", TRACE, "--out",
                                           str(p["dir"])], "--out"),
    ("predict train --out UNDER", lambda p: ["predict", "train", "--data", TRACE, "--out",
                                             str(p["under"])], "--out"),
    ("predict calibrate --out DIR", lambda p: ["predict", "calibrate", "--model", "m.skops",
                                               "--data", TRACE, "--out", str(p["dir"])],
     "--out"),
    ("predict apply --out UNDER", lambda p: ["predict", "apply", "--model", "m.skops", TRACE,
                                             "--out", str(p["under"])], "--out"),
    ("predict apply --out FILE", lambda p: ["predict", "apply", "--model", "m.skops", TRACE,
                                            "--out", str(p["file"])], "exists; pass --force"),
    ("predict eval --json DIR", lambda p: ["predict", "eval", "--model", "m.skops", "--data",
                                           TRACE, "--json", str(p["dir"])], "--json"),
    ("predict cv --json UNDER", lambda p: ["predict", "cv", "--data", TRACE, "--json",
                                           str(p["under"])], "--json"),
    ("tune --out FILE", lambda p: ["tune", TRACE, "--out", str(p["file"])], "--out"),
    ("tune --out UNDER", lambda p: ["tune", TRACE, "--out", str(p["under"])], "--out"),
    ("tune --json DIR", lambda p: ["tune", TRACE, "--out", str(p["dir"].parent / "run"),
                                   "--json", str(p["dir"])], "--json"),
    ("export-priorities --out UNDER", lambda p: ["export-priorities", "--config", "c.json",
                                                 "--server", "vllm", "--out", str(p["under"])],
     "--out"),
    ("export-priorities --out FILE", lambda p: ["export-priorities", "--config", "c.json",
                                                "--server", "vllm", "--out", str(p["file"])],
     "exists; pass --force"),
    ("export-priorities --json UNDER", lambda p: ["export-priorities", "--config", "c.json",
                                                  "--server", "vllm", "--out",
                                                  str(p["dir"].parent / "e"), "--json",
                                                  str(p["under"])], "--json"),
]


@pytest.mark.parametrize("build, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_an_unwritable_output_is_one_line_and_changes_nothing(
        tmp_path: Path, build: Callable[[Paths], list[str]], expected: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    paths = {"dir": tmp_path / "folder", "file": tmp_path / "file",
             "under": tmp_path / "file" / "sub" / "x", "answers": tmp_path / "a.jsonl"}
    paths["dir"].mkdir()
    paths["file"].write_text("kept\n")
    paths["answers"].write_text(json.dumps(ANSWER) + "\n")
    before = snapshot(tmp_path)
    argv = build(paths)
    line = one_line_error(argv, capsys, expected)
    assert any(str(paths[k]) in line for k in ("dir", "file", "under"))
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "file", "folder"]


def test_import_force_onto_a_file_leaves_no_hidden_copy(tmp_path: Path) -> None:
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps(ANSWER) + "\n")
    target = tmp_path / "trace"
    target.write_text("an old file\n")
    assert main(["import", "specbench", str(answers), "--out", str(target), "--force"]) == 0
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "requests.parquet",
                                                        "rounds.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "trace"]

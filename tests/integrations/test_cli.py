"""`lapsd export-priorities`: what it writes, its JSON summary, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from one_line import snapshot

from lapsd.cli import main
from lapsd.integrations.priorities import PriorityMapper


def test_export_for_tensorrt_llm(srpt_config: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "trt"
    assert main(["export-priorities", "--config", str(srpt_config), "--server", "trtllm",
                 "--levels", "50", "--out", str(out), "--json", "-"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["server_args"] == ["--extra_llm_api_options", "trtllm-priority.yaml"]
    assert (out / "trtllm-priority.yaml").read_text() == (
        "scheduler_config:\n  waiting_queue_policy: priority\n")
    assert (out / "server-args.txt").read_text().split() == summary["server_args"]
    assert summary["priority"] == {"field": "priority", "integer": False, "higher_first": True,
                                   "range": [0.0, 1.0], "levels": 50}
    # Shorter predicted requests (lower quantile) get higher TensorRT-LLM priorities.
    q = summary["calibration"]["quantiles"]
    assert q["p10"]["priority"] >= q["p50"]["priority"] >= q["p90"]["priority"]
    assert PriorityMapper.load(out).levels == 50


def test_an_existing_folder_needs_force(srpt_config: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "v"
    out.mkdir()
    args = ["export-priorities", "--config", str(srpt_config), "--server", "vllm", "--out",
            str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "exists; pass --force" in err and "Traceback" not in err
    assert main([*args, "--force"]) == 0
    assert "--scheduling-policy priority" in capsys.readouterr().out
    assert (out / "server-args.txt").read_text() == "--scheduling-policy priority\n"


def test_bad_levels_and_servers_are_one_line(srpt_config: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export-priorities", "--config", str(srpt_config), "--server", "vllm",
                 "--levels", "0", "--out", str(tmp_path / "x")]) == 2
    assert "levels must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        main(["export-priorities", "--config", str(srpt_config), "--server", "tgi",
              "--out", str(tmp_path / "y")])


@pytest.mark.parametrize("value", ["nan", "-1", "0", "0.5", "inf", "-inf", "1e400"])
def test_a_bad_max_new_tokens_is_one_line_and_changes_nothing(
        value: str, srpt_config: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "v"
    out.mkdir()
    (out / "keep.txt").write_text("before")
    before = snapshot(out)
    assert main(["export-priorities", "--config", str(srpt_config), "--server", "vllm",
                 f"--max-new-tokens={value}", "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"--max-new-tokens {float(value)!r}: expected" in err and "finite number >= 1" in err
    assert snapshot(out) == before


def test_force_onto_a_file_leaves_no_hidden_copy(srpt_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "map"
    out.write_text("an old file\n")
    assert main(["export-priorities", "--config", str(srpt_config), "--server", "vllm",
                 "--out", str(out), "--force"]) == 0
    assert (out / "priority-map.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["map"]  # no .map.old-PID beside it

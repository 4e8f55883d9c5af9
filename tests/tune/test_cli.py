"""`lapsd tune` options: bad values are rejected before anything starts or is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from lapsd.cli import main

from .conftest import TRACE


@pytest.mark.parametrize("args", [["--trials", "0"], ["--trials", "-3"], ["--workers", "0"],
                                  ["--band-trials", "0"], ["--loads", "0.5,x"],
                                  ["--bursts", "1.5"], ["--batch-size", "0"]])
def test_bad_options_are_rejected_up_front(tmp_path: Path, args: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["tune", str(TRACE), "--out", str(out), *args])
    assert exc.value.code == 2
    assert args[0] in capsys.readouterr().err
    assert not out.exists()


def test_holdout_out_of_range_is_one_line(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", str(TRACE), "--out", str(tmp_path / "r"), "--holdout", "1.5",
                 "--trials", "1", "--bands", "none"]) == 2
    err = capsys.readouterr().err
    assert "holdout must be in (0, 1)" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_repredict_without_response_text_is_rejected_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The example traces keep no generated text: a predictor trained on them cannot re-predict.
    assert main(["tune", str(TRACE), "--out", str(tmp_path / "r"), "--repredict-every", "8",
                 "--trials", "1", "--bands", "none"]) == 2
    err = capsys.readouterr().err
    assert "--repredict-every" in err and "response text" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("args", "says"), [
    (["--recorded-updates"], "pass --predictions column"),
    (["--recorded-updates", "--predictions", "column"], "records no re-predictions"),
])
def test_recorded_updates_need_a_probes_beliefs(tmp_path: Path, args: list[str], says: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", str(TRACE), "--out", str(tmp_path / "r"), *args,
                 "--trials", "1", "--bands", "none"]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()

"""The HTML report, loaded in a real headless Chromium: no console errors, plots rendered."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lapsd.tune.report import write_report
from lapsd.tune.run import TuneResult

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


def _chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000", "--window-size=1200,3000", *extra, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )


def read_png(path: Path) -> np.ndarray:
    """A PNG as an RGB array (rows, cols, 3), decoded by Pillow."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_report_is_self_contained(tiny_run: TuneResult) -> None:
    page = Path(tiny_run.report).read_text()
    assert page.count("window.PlotlyConfig") == 1  # plotly.js inline, once
    assert "<script src=" not in page and "<link " not in page  # nothing fetched
    assert len(re.findall(r'class="plotly-graph-div"', page)) >= 5


@pytest.mark.skipif(CHROMIUM is None,
                    reason="Chromium is not installed (Debian package `chromium`; CI installs it)")
def test_report_renders_in_chromium(tiny_run: TuneResult, tmp_path: Path) -> None:
    page = write_report(tiny_run.out)
    n_plots = len(re.findall(r'class="plotly-graph-div"', page.read_text()))

    dom = _chromium(page, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or ":ERROR:" in line], console
    assert "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    # Plotly draws each plot as <svg class="main-svg"> inside its div once it has rendered.
    assert dom.stdout.count('class="main-svg"') >= n_plots >= 5

    shot = tmp_path / "shot.png"
    res = _chromium(page, tmp_path / "profile-shot", f"--screenshot={shot}")
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    pixels = read_png(shot).astype(np.float64)
    assert pixels.std() > 10, "the screenshot is blank"
    # Plot traces are coloured; a page of text only would be grey levels.
    colour = np.abs(pixels[..., 0] - pixels[..., 2]) > 40
    assert colour.mean() > 0.001

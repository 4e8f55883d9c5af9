"""optuna-dashboard reads the study a tuning run leaves in its output folder."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lapsd.tune.run import TuneResult

DASHBOARD = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(DASHBOARD is None, reason="optuna-dashboard is not installed (dev extra)")
def test_dashboard_lists_the_study(tiny_run: TuneResult) -> None:
    journal = Path(tiny_run.out) / "study.journal"
    port = _free_port()
    proc = subprocess.Popen([DASHBOARD, str(journal), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=2) as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    names = {s["study_name"] for s in studies}
    assert {"lapsd-laps-sd", "lapsd-gittins", "lapsd-lp-srpt"} <= names

"""Fixtures for the replay tests."""

from __future__ import annotations

import pytest

from lapsd.replay.arrays import TraceArrays
from lapsd.replay.trace import read_trace


@pytest.fixture(scope="session")
def eagle_arrays(examples_dir) -> TraceArrays:
    return TraceArrays.from_trace(read_trace(examples_dir / "specbench-vicuna7b-eagle"))

"""Shared test fixtures: where the shared real data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Machines are noisy and numba compiles kernels on first use: no per-example deadlines.
settings.register_profile("lapsd", deadline=None)
settings.load_profile("lapsd")

ROOT = Path(__file__).resolve().parents[1]
#: The real public data beside the checkout (LAPSD_SHARED_DATA overrides it, e.g. to check
#: that the tests needing it skip cleanly when it is missing).
SHARED_DATA = Path(os.environ.get("LAPSD_SHARED_DATA", ROOT.parent / "shared" / "data"))
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared data folder {SHARED_DATA} is not beside the checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return EXAMPLES

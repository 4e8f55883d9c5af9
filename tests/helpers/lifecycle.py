"""Test helper: which modules call a policy's lifecycle methods."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import pytest

from lapsd.replay.policies.base import Policy

#: The methods a server calls on a policy (the online contract, plus the replay's advance,
#: horizon and share).
LIFECYCLE = ("admit", "reveal", "step", "pick", "observe", "advance", "horizon", "share",
             "update_prediction", "finish")


@contextlib.contextmanager
def lifecycle_callers(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Record the module of every caller of a :data:`LIFECYCLE` method, policies left out.

    A policy's own calls (``observe`` through ``advance``, a wrapper through ``super()``) are
    inside the policies package and are not counted.
    """
    seen: set[str] = set()
    for name in LIFECYCLE:
        real = getattr(Policy, name)

        def wrapped(self, *a, _real=real, **kw):
            caller = sys._getframe(1).f_globals.get("__name__", "?")
            if not caller.startswith("lapsd.replay.policies"):
                seen.add(caller)
            return _real(self, *a, **kw)

        monkeypatch.setattr(Policy, name, wrapped)
    yield seen

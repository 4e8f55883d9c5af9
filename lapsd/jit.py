"""numba for lapsd's compiled loops, with an on-disk cache that follows their sources.

numba's cache (``cache=True``) re-compiles a function when *its own* file changes, not when a
function it calls from another file does, which it compiled into it. After an edit or a ``git
pull`` of an editable install that changes only ``lognormal.py``, ``timeshare.py``'s cached
loops would go on running the old arithmetic. So every compiled module of lapsd takes ``njit``
from here: on first import, this module compares a digest of all those modules' sources with the
one their ``__pycache__`` folders last saw, and when it differs removes their cached
compilations (only theirs), so that numba compiles them afresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from numba import njit

#: The modules with compiled functions, relative to the lapsd source root (its package folders).
COMPILED = ("replay/kernels.py", "replay/lognormal.py", "replay/timeshare.py",
            "predict/compiled.py", "predict/probe.py")
#: The file in each ``__pycache__`` folder that records the digest its compilations belong to.
STAMP = "lapsd-numba.sha256"


def refresh_cache(sources: Sequence[Path]) -> bool:
    """Remove the cached compilations of ``sources`` unless they belong to these sources.

    Returns whether any folder's compilations were out of date. A folder that cannot be read
    or written is left alone (numba then caches elsewhere, per file, as it always does).
    """
    digest = hashlib.sha256(b"".join(Path(p).read_bytes() for p in sources)).hexdigest()
    stale = False
    for folder in sorted({Path(p).parent / "__pycache__" for p in sources}):
        stamp = folder / STAMP
        try:
            if stamp.read_text() == digest:
                continue
        except OSError:
            pass
        stale = True
        try:
            for p in sources:
                if Path(p).parent / "__pycache__" == folder:
                    for kind in ("nbi", "nbc"):
                        for cached in folder.glob(f"{Path(p).stem}.*.{kind}"):
                            cached.unlink(missing_ok=True)
            folder.mkdir(exist_ok=True)
            stamp.write_text(digest)
        except OSError:
            continue
    return stale


def _sources() -> list[Path]:
    # The installed layout maps lapsd.replay to replay/ and so on (pyproject's package-dir); a
    # wheel keeps the same relative paths under lapsd/.
    here = Path(__file__).resolve().parent
    for root in (here.parent, here):
        found = [root / rel for rel in COMPILED]
        if all(p.is_file() for p in found):
            return found
    return []


_found = _sources()
if _found:
    refresh_cache(_found)

__all__ = ["COMPILED", "STAMP", "njit", "refresh_cache"]

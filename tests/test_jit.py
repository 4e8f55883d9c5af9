"""numba's cache of lapsd's compiled loops follows their sources, callees' files included."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from lapsd.jit import COMPILED, STAMP, refresh_cache

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_that_compiles_is_listed() -> None:
    compiling = {str(p.relative_to(ROOT)) for folder in ("replay", "predict", "collect", "tune")
                 for p in (ROOT / folder).rglob("*.py") if "@njit" in p.read_text()}
    assert compiling == set(COMPILED)
    for rel in COMPILED:
        text = (ROOT / rel).read_text()
        assert "from lapsd.jit import njit" in text and "from numba import njit" not in text


def test_only_stale_compilations_of_the_sources_are_removed(tmp_path: Path) -> None:
    src = tmp_path / "kernels.py"
    src.write_text("x = 1\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    mine = [cache / "kernels.f-3.py311.nbi", cache / "kernels.f-3.py311.1.nbc"]
    other = cache / "elsewhere.g-7.py311.nbi"
    for f in (*mine, other):
        f.write_text("cached")
    assert refresh_cache([src])  # no stamp yet: stale
    assert not any(f.exists() for f in mine) and other.exists() and (cache / STAMP).is_file()
    for f in mine:
        f.write_text("cached")
    assert not refresh_cache([src])  # same sources: kept
    assert all(f.exists() for f in mine)
    src.write_text("x = 2\n")
    assert refresh_cache([src])
    assert not any(f.exists() for f in mine)


def test_a_callee_edited_in_another_file_is_recompiled(tmp_path: Path) -> None:
    # numba alone would keep running high.g's cached machine code, which inlined low.f.
    (tmp_path / "low.py").write_text(textwrap.dedent("""
        from lapsd.jit import njit

        @njit(cache=True)
        def f():
            return 1
    """))
    (tmp_path / "high.py").write_text(textwrap.dedent("""
        from pathlib import Path
        from lapsd.jit import njit, refresh_cache

        here = Path(__file__).parent
        refresh_cache([here / "low.py", here / "high.py"])
        from low import f

        @njit(cache=True)
        def g():
            return f() + 10
    """))

    def run() -> str:
        return subprocess.run([sys.executable, "-c", "import high; print(high.g())"],
                              cwd=tmp_path, capture_output=True, text=True,
                              check=True).stdout.strip()

    assert run() == "11"
    assert list((tmp_path / "__pycache__").glob("high.g-*.nbi"))  # cached
    (tmp_path / "low.py").write_text((tmp_path / "low.py").read_text().replace(
        "return 1", "return 2"))
    assert run() == "12"

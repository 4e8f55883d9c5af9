"""Imports follow the data flow, and a server-side install stays small.

Layers, lowest first: the root helpers (``lapsd.errors``, ``lapsd.io``, ``lapsd.console``,
``lapsd.jit``), ``lapsd.replay``, ``lapsd.predict``, then ``lapsd.tune``, ``lapsd.collect`` and
``lapsd.integrations`` (which may use both below them, not each other), and the root command
``lapsd.cli`` above all. No package imports another package's ``cli`` module. Every import
counts, also one inside a function, and no module imports itself through others (a cycle).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Folder -> package name (pyproject's package-dir mapping).
PACKAGES = {"lapsd": "lapsd", "replay": "lapsd.replay", "predict": "lapsd.predict",
            "tune": "lapsd.tune", "collect": "lapsd.collect",
            "integrations": "lapsd.integrations"}
FORBIDDEN = {
    "lapsd": ("lapsd.replay", "lapsd.predict", "lapsd.tune", "lapsd.collect",
              "lapsd.integrations", "lapsd.cli"),
    "lapsd.replay": ("lapsd.predict", "lapsd.tune", "lapsd.collect", "lapsd.integrations",
                     "lapsd.cli"),
    "lapsd.predict": ("lapsd.tune", "lapsd.collect", "lapsd.integrations", "lapsd.cli"),
    "lapsd.tune": ("lapsd.collect", "lapsd.integrations", "lapsd.cli"),
    "lapsd.collect": ("lapsd.tune", "lapsd.integrations", "lapsd.cli"),
    "lapsd.integrations": ("lapsd.tune", "lapsd.collect", "lapsd.cli"),
}
#: Modules above the layers: the root command and ``python -m lapsd``.
TOP = {"lapsd.cli", "lapsd.__main__"}
#: Documented exceptions, (importer, imported): none today.
ALLOWED: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _layer(module: str) -> str:
    for package in ("lapsd.replay", "lapsd.predict", "lapsd.tune", "lapsd.collect",
                    "lapsd.integrations"):
        if module == package or module.startswith(package + "."):
            return package
    return "lapsd"


MODULES = _modules()


def test_every_package_is_scanned() -> None:
    assert {_layer(m) for m in MODULES} == set(FORBIDDEN)
    assert "lapsd.replay.policies.laps_sd" in MODULES and "lapsd.cli" in MODULES


@pytest.mark.parametrize("module", sorted(set(MODULES) - TOP))
def test_imports_follow_the_data_flow(module: str) -> None:
    layer = _layer(module)
    bad = []
    for name in _imports(MODULES[module]):
        if not name.startswith("lapsd") or (module, name) in ALLOWED:
            continue
        other = _layer(name)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer]):
            bad.append(f"{name} (a {layer} module must not import it)")
        elif other != layer and other != "lapsd" and name.split(".")[-1] == "cli":
            bad.append(f"{name} (another package's CLI)")
    assert not bad, f"{module} imports " + "; ".join(sorted(bad))


def _module_edges(path: Path) -> set[str]:
    """lapsd modules ``path`` imports, at module level or in a function (``TYPE_CHECKING`` too).

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``.
    """
    out = set()
    for name in _imports(path):
        if name in MODULES:
            out.add(name)
        elif name.rpartition(".")[0] in MODULES:
            out.add(name.rpartition(".")[0])
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or with a self-import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1 or v in graph[v]:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    """No module reaches itself through imports (a registry below the policies, not above)."""
    graph = {m: _module_edges(path) - {m} for m, path in MODULES.items()}
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_code_outside_the_policies_branches_on_a_policy_name() -> None:
    """A policy declares what it needs (class attributes); the rest asks it, never its name."""
    from lapsd.replay.policies import REGISTRY

    bad = []
    for module, path in MODULES.items():
        if module.startswith("lapsd.replay.policies"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                names = [n.value for n in (node.left, *node.comparators)
                         if isinstance(n, ast.Constant) and n.value in REGISTRY]
                bad += [f"{module}:{node.lineno} compares with {n!r}" for n in names]
    assert not bad


#: A policy's lifecycle methods (what a server calls; ``replay.driver`` is the one loop).
LIFECYCLE = {"admit", "reveal", "step", "pick", "observe", "advance", "horizon", "share",
             "update_prediction", "finish"}


def test_one_module_runs_a_policy() -> None:
    """Outside the policies and the server plug-ins, only the driver touches the lifecycle.

    Statically: no attribute of :data:`LIFECYCLE` is read from an expression that names a
    policy (``policy.step``, ``self.policy.admit``). The tests also check it at run time, for
    the replays and the live server (``tests/helpers/lifecycle.py``).
    """
    bad = []
    for module, path in MODULES.items():
        if module.startswith(("lapsd.replay.policies", "lapsd.integrations")) or module in (
                "lapsd.replay.driver",):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in LIFECYCLE
                    and "policy" in ast.unparse(node.value).lower()):
                bad.append(f"{module}:{node.lineno} {ast.unparse(node)}")
    assert not bad


@pytest.mark.parametrize("name", ["replay", "predict", "tune", "collect", "integrations"])
def test_bare_folder_names_are_not_imported(name: str) -> None:
    """The folders install as ``lapsd.<name>``; a bare ``import replay`` would be a second copy."""
    users = [m for m, path in MODULES.items()
             if any(i == name or i.startswith(name + ".") for i in _imports(path))]
    assert not users


def _run(code: str, cwd: Path) -> str:
    """Run ``code`` in a fresh interpreter from ``cwd``, an empty folder.

    ``python -c`` puts its working directory first on ``sys.path``: run from the checkout's
    parent, a clone named ``lapsd`` would shadow the installed package.
    """
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=cwd).stdout


def test_a_server_imports_no_tuner_predictor_or_torch(tmp_path: Path) -> None:
    """What a server needs (config, schedulers) loads without optuna, scikit-learn or torch."""
    loaded = _run(
        "import sys\n"
        "from lapsd.replay.config import scheduler_factory\n"
        "from lapsd.replay.estimate import LengthPrediction\n"
        "from lapsd.replay.policies import create\n"
        "from lapsd.replay.engine import simulate\n"
        # (numba itself imports scipy when it is installed, so scipy is not checked.)
        "heavy = ('optuna', 'sklearn', 'torch', 'transformers', 'plotly', 'skops')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n", tmp_path)
    assert loaded.strip() == "[]"


def test_a_live_run_is_checked_without_torch(tmp_path: Path) -> None:
    """`validate` and `fit-batch-cost` read a live run's folder on a machine without torch."""
    text = _run(
        "import sys\n"
        "for m in ('torch', 'transformers'):\n"
        "    sys.modules[m] = None\n"
        "from lapsd.collect.validate import fit_batch_cost, validate\n"
        "from lapsd.replay.live_run import read_live\n"
        "print('read')\n", tmp_path)
    assert text.strip() == "read"


def test_the_command_parser_needs_none_of_the_extras(tmp_path: Path) -> None:
    """`lapsd --help` (and so `lapsd collect` on a GPU box) works without the extras."""
    text = _run(
        "import sys\n"
        "for m in ('optuna', 'sklearn', 'torch', 'transformers', 'plotly', 'skops'):\n"
        "    sys.modules[m] = None\n"
        "from lapsd.cli import build_parser\n"
        "print(build_parser().format_help())\n", tmp_path)
    assert "collect" in text and "tune" in text and "replay" in text
    assert "export-priorities" in text

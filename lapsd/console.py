"""What every subcommand shares: tables on stdout, messages on stderr, common options.

``--json OUT`` is handled the same way everywhere (:func:`add_json`, :func:`emit`): the payload
goes to ``OUT`` (``-`` is standard output), and the human-readable tables are printed unless the
JSON took standard output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lapsd.io import STDOUT, write_json

#: Messages, warnings and progress (stderr).
console = Console(stderr=True, soft_wrap=True)
#: Tables and results (stdout); off a terminal they get a fixed width instead of 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)


def emit(json_target: Path | str | None, payload: Any,
         show: Callable[[], None] | None = None) -> None:
    """Write ``payload`` to ``--json`` (when given), then call ``show`` unless it took stdout."""
    if json_target is not None:
        write_json(json_target, payload)
    if show is not None and str(json_target) != STDOUT:
        show()


def progress(*extra: TextColumn) -> Progress:
    """A progress bar on stderr: description, bar, done/total, ``extra`` columns, elapsed."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *extra,
                    TimeElapsedColumn(), console=console)


def add_json(parser: argparse.ArgumentParser, what: str = "the results") -> None:
    """``--json OUT``: also write ``what`` as JSON (``-``: to stdout, instead of the tables)."""
    parser.add_argument("--json", metavar="OUT",
                        help=f"also write {what} as JSON ('-': to stdout, instead of the tables)")


def add_switch_cost(parser: argparse.ArgumentParser) -> None:
    """``--c0`` and ``--c1``: the switch-cost model ``c0 + c1 * context_tokens`` of replays."""
    parser.add_argument("--c0", type=float, default=0.0,
                        help="switch cost, seconds per preemption (default 0)")
    parser.add_argument("--c1", type=float, default=0.0,
                        help="switch cost, seconds per context token of the preempted request "
                             "(default 0)")

"""The ``lapsd`` command: the root parser above the five packages.

Each package contributes its subcommands through ``register(subparsers)``; registering imports
only argparse-level code, so ``lapsd collect`` runs on a GPU box without the tuner's
dependencies and ``lapsd replay`` without torch. Errors a user can fix are
:class:`~lapsd.errors.LapsdError`: one line on stderr, exit status 2. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from lapsd import __version__
from lapsd.errors import LapsdError
from lapsd.io import check_output


def _load_predictor(path: Path, repredict_every: int | None) -> tuple[Any, Any]:
    """``lapsd replay --predictor``: the predictor's prediction source and re-predictions."""
    from lapsd.errors import require_extra

    require_extra("predict", "sklearn", "skops")
    from lapsd.predict.apply import predictor_source, update_source
    from lapsd.predict.persist import load_predictor

    predictor = load_predictor(path)
    updates = None if repredict_every is None else update_source(predictor, repredict_every)
    return predictor_source(predictor), updates


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr, like every other user error.

    argparse prints the whole usage before its message; here the message names the option, the
    value and where the usage is (``--help``). Subcommand parsers inherit the class.
    """

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see PROG --help)`` and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole ``lapsd`` parser."""
    from lapsd.collect.cli import register as register_collect
    from lapsd.integrations.cli import register as register_integrations
    from lapsd.predict.cli import register as register_predict
    from lapsd.replay.cli import register as register_replay
    from lapsd.tune.cli import register as register_tune

    parser = _Parser(
        prog="lapsd",
        description="Schedule speculative-decoding LLM requests: collect traces, train a length "
                    "predictor, replay schedulers, tune and export a scheduler config.",
    )
    parser.add_argument("--version", action="version", version=f"lapsd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_replay(sub, load_predictor=_load_predictor)
    register_predict(sub)
    register_tune(sub)
    register_collect(sub)
    register_integrations(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lapsd`` console script."""
    from rich.markup import escape

    from lapsd.console import console

    def show_warning(message: Warning | str, *_: Any, **__: Any) -> None:
        console.print(f"[yellow]lapsd: warning:[/] {escape(str(message))}", highlight=False)

    args = build_parser().parse_args(argv)
    warnings.showwarning = show_warning
    try:
        if getattr(args, "json", None) is not None:
            check_output(args.json, "--json")  # before the work whose result it would hold
        return int(args.func(args) or 0)
    except LapsdError as exc:
        console.print(f"[bold red]lapsd {args.command}: error:[/] {escape(str(exc))}",
                      highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())

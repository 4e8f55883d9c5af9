"""``python -m collect``: the collect subcommands without the rest of ``lapsd``.

Useful on a GPU box that has torch but not the tuner's dependencies.
"""

from __future__ import annotations

import argparse
import sys

from collect.cli import register


def main(argv: list[str] | None = None) -> int:
    """Parse and run one of ``collect``, ``collect-profile`` or ``merge``."""
    parser = argparse.ArgumentParser(prog="python -m collect")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

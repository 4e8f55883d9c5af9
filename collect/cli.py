"""`lapsd` subcommands of the collect package."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the `lapsd` parser."""

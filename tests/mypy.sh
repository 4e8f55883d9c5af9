#!/usr/bin/env bash
# mypy over the packages as they install: lapsd/, and replay/, predict/, tune/, collect/ and
# integrations/ as lapsd.replay, lapsd.predict, ... (mypy cannot follow setuptools' package-dir
# mapping, so a tree of links in .mypy_tree/ gives it that layout).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .mypy_tree
mkdir -p .mypy_tree/lapsd
for f in lapsd/*.py; do ln -s "../../$f" ".mypy_tree/lapsd/$(basename "$f")"; done
for d in replay predict tune collect integrations; do ln -s "../../$d" ".mypy_tree/lapsd/$d"; done
MYPYPATH=.mypy_tree exec "${PYTHON:-.venv/bin/python}" -m mypy -p lapsd "$@"

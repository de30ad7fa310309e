#!/usr/bin/env bash
# The test command (README, and CI's .ci/run after setup): lint and format check first, then
# the tests that start no process (about a minute), then the end-to-end ones (about ten), so
# that a break shows in minutes. Extra arguments go to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VPY=.venv/bin/python
"$VPY" -m ruff check .
"$VPY" -m ruff format --check .
"$VPY" -m pytest -q -m "not e2e" "$@"
"$VPY" -m pytest -q -m e2e "$@"

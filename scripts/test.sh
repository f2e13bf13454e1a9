#!/usr/bin/env bash
# The test command: set up .venv (and Debian's chromium for the browser test), then run the whole suite:
# the reference against PyTorch, the grading tools and hostile submissions, the problem-set gate, and
# the executed book checked in a real browser.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# The test command: set up .venv (and Debian's chromium for the browser test), then run the whole suite:
# the reference against PyTorch, the grading tools and hostile submissions, the problem-set gate, and
# the executed book checked in a real browser.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser
# Two pytest workers (pytest-xdist): CI machines have 2 cores, and the book's build (shared
# by every worker through a lock) overlaps the grading tests; tests/conftest.py sends every test of the
# built book to one worker. NORMCOURSE_TEST_WORKERS=0 runs serially.
exec .venv/bin/python -m pytest -n "${NORMCOURSE_TEST_WORKERS:-2}" "$@"

#!/usr/bin/env bash
# Create .venv with everything the course needs (idempotent; fast when already done).
# Needs only Python 3.11. As root on Debian it also installs chromium for the browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(cat requirements.txt autograder/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip check
  echo "$want" > "$stamp"
fi
# The kernel every notebook runs in is the venv's own python.
.venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
if [ "${1:-}" = "--browser" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "The browser test needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)." >&2
  fi
fi

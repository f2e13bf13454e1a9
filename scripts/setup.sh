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
# bubblewrap: every process that runs learner code (grading kernels, the re-check) runs in its sandbox,
# and autograde refuses to grade without it (unless told --no-sandbox). PostgreSQL for the shared-
# gradebook test (the test starts its own server; Debian ships it). Both from Debian's packages.
need=""
command -v bwrap >/dev/null || need="$need bubblewrap"
command -v setpriv >/dev/null || need="$need util-linux"
if [ "${1:-}" = "--browser" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then need="$need postgresql"; fi
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
  else
    echo "Grading needs:$need (Debian/Ubuntu: apt-get install$need)" >&2
  fi
fi
# Chromium for the browser test; a small CJK font so screenshots of the glossary show its Chinese terms.
if [ "${1:-}" = "--browser" ] && { [ ! -x /usr/bin/chromium ] || ! fc-list 2>/dev/null | grep -qi wqy; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null
  else
    echo "The browser test needs Debian's chromium (and fonts-wqy-microhei for readable screenshots): apt-get install chromium fonts-wqy-microhei" >&2
  fi
fi

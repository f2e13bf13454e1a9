#!/usr/bin/env bash
# Build the book into _build/html, strictly: every chapter is executed (or taken from the execution
# cache when its code is unchanged) and any Sphinx warning -- a failing cell, a broken reference, a
# missing citation, output on stderr -- fails the build.
#
# Two editions from one source: the English book at the root of _build/html, then the Chinese edition
# in _build/html/zh/, built by Sphinx from the same pages with language=zh_CN and the translations in
# locales/zh_CN/LC_MESSAGES/*.po. The Chinese build takes every chapter from the execution cache the
# English build has just filled (it executes nothing; scripts/sphinx_ext/translations.py refuses to).
#
#   bash scripts/build_book.sh            set up .venv if needed, then build
#   BOOK_SKIP_SETUP=1 bash scripts/build_book.sh   skip the set-up check (the tests use this)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${BOOK_SKIP_SETUP:-}" ]; then
  bash scripts/setup.sh
fi
PY=.venv/bin/python

# One build at a time per checkout (a second build would delete the pages the first is writing).
mkdir -p _build
exec 9>_build/.build.lock
if ! flock -n 9; then
  echo "Another book build is running in this checkout; waiting for it to finish..."
  flock 9
fi

# The execution cache matches a chapter by its code cells only. The chapters also import the course
# package, so a change there (or in the pinned requirements, or the execution settings) must re-run
# every chapter: drop the cache when any of those inputs changed since it was filled. The grading
# tools (normcourse/grading) count only if a chapter imports them.
package_sources() {
  if grep -qs "normcourse.grading" chapters/*.md; then
    find autograder/normcourse -name '*.py' -not -path '*/__pycache__/*'
  else
    find autograder/normcourse -name '*.py' -not -path '*/__pycache__/*' -not -path 'autograder/normcourse/grading/*'
  fi | LC_ALL=C sort
}
execute_settings() { sed -n '/^execute:/,/^[A-Za-z]/p' _config.yml | grep -v '^ *#'; }
inputs=$( { package_sources | xargs cat; cat requirements.txt; execute_settings; } | sha256sum | cut -d' ' -f1)
cache=_build/.jupyter_cache
if [ -d "$cache" ] && [ "$(cat "$cache/.normcourse_inputs" 2>/dev/null)" != "$inputs" ]; then
  echo "The course package, the requirements or the execute settings changed: every chapter runs again."
  rm -rf "$cache"
fi
mkdir -p "$cache"
echo "$inputs" > "$cache/.normcourse_inputs"

# Strict clean: Sphinx repeats no warning for a page it does not re-read, so throw away the HTML and
# the doctrees, but keep _build/.jupyter_cache (unchanged chapters are not re-executed).
rm -rf _build/html _build/.doctrees _build/jupyter_execute _build/zh

log=_build/build.log
start=$(date +%s)
set +e
# Chapters missing from the cache run side by side first (one per core; Jupyter Book alone runs them
# one after another), then the build takes them all from the cache.
"$PY" scripts/execute_chapters.py 2>&1 | tee "$log"
.venv/bin/jupyter-book build . -W -n --keep-going 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
english_done=$(date +%s)
# The translated editions (book_editions in _config.yml), whenever the English pages exist: with
# --keep-going a build with warnings still writes every page, and one run then reports everything.
if [ -f _build/html/index.html ]; then
  echo "Building the translated editions from the execution cache..." | tee -a "$log"
  "$PY" scripts/sphinx_ext/translations.py build 2>&1 | tee -a "$log"
  translated_status=${PIPESTATUS[0]}
  [ "$translated_status" -eq 0 ] || status=$translated_status
fi
set -e
end=$(date +%s)
elapsed=$(( end - start ))

echo
echo "Chapter execution times (MyST-NB's record; a cached chapter shows the run that filled the cache):"
"$PY" scripts/book_exec_times.py _build "$start" || true
echo "English edition: $(( english_done - start )) s; translated editions: $(( end - english_done )) s."
echo "Book build took ${elapsed} s."

# Belt and braces: -W already turns warnings into a failing exit status; also refuse a log with any.
warnings=$(grep -cE "(WARNING|ERROR|CRITICAL):" "$log" || true)
if [ "$status" -ne 0 ] || [ "$warnings" -ne 0 ]; then
  echo "Book build FAILED (exit status $status, $warnings warning/error lines in $log)." >&2
  ls _build/html/reports 2>/dev/null | sed 's/^/  traceback: _build\/html\/reports\//' >&2 || true
  exit 1
fi
echo "Book built with zero warnings: open _build/html/index.html (中文版: _build/html/zh/index.html)"

"""Print how long each chapter took to execute, as Jupyter Book (MyST-NB) recorded it.

MyST-NB stores, per notebook page, ``exec_data`` = {method, runtime, mtime, succeeded} in the Sphinx
environment (``_build/.doctrees/environment.pickle``); it is the same data as the ``nb-exec-table``
directive shows. ``method`` is "cache" when the chapter was executed now and stored in
``_build/.jupyter_cache``; ``runtime`` is the execution time of that cached run in seconds, and
``mtime`` says when that run happened, so an old timestamp means the chapter was taken from the cache.

Usage: python scripts/book_exec_times.py [BUILD_DIR [BUILD_START_EPOCH]]   (default _build)
With BUILD_START_EPOCH (seconds), each chapter is marked "executed" (run by this build) or "cached".
"""

import pickle
import sys
from datetime import datetime, timezone
from pathlib import Path


def execution_rows(build_dir):
    """Return [(docname, method, runtime_seconds, executed_at_utc, succeeded)] sorted by docname."""
    with open(Path(build_dir) / ".doctrees" / "environment.pickle", "rb") as handle:
        env = pickle.load(handle)
    rows = []
    for docname, data in sorted(getattr(env, "nb_metadata", {}).items()):
        exec_data = data.get("exec_data")
        if not exec_data:
            continue
        when = datetime.fromtimestamp(exec_data["mtime"], tz=timezone.utc)
        rows.append((docname, exec_data.get("method"), exec_data.get("runtime"), when,
                     exec_data.get("succeeded")))
    return rows


def main(argv):
    build_dir = argv[1] if len(argv) > 1 else "_build"
    started = float(argv[2]) if len(argv) > 2 else None
    rows = execution_rows(build_dir)
    if not rows:
        print("No executed notebooks recorded.")
        return 0
    print(f"{'chapter':<45} {'run time (s)':>12}  {'executed at (UTC)':<20} {'this build':<10} ok")
    total = 0.0
    for docname, _method, runtime, when, succeeded in rows:
        total += runtime or 0.0
        shown = "-" if runtime is None else f"{runtime:.1f}"
        origin = "?" if started is None else ("executed" if when.timestamp() >= started else "cached")
        print(f"{docname:<45} {shown:>12}  {when:%Y-%m-%d %H:%M:%S}  {origin:<10} {'yes' if succeeded else 'NO'}")
    print(f"{'total':<45} {total:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

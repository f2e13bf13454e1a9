"""Fill the book's execution cache with every chapter that is not in it, several chapters at a time.

Jupyter Book 1 (MyST-NB's ``execute_notebooks: cache``) executes the chapters one after another while
Sphinx reads them, so a clean build uses one core. Each chapter runs single-threaded
(``torch.set_num_threads(1)``), so on a machine with N cores N chapters can run side by side. This
script does exactly what MyST-NB does for a chapter missing from the cache -- read it with MyST-NB's
own reader, execute it in the chapter's folder with the configured timeout, store the executed
notebook in ``_build/.jupyter_cache`` keyed by the hash of its code cells -- only in a pool of
processes. The Sphinx build that follows then finds every chapter in the cache ("Using cached
notebook") and executes nothing; a chapter that failed here is not cached, so the build runs it again
and reports its error as a warning, as it would have without this script.

Usage: ``.venv/bin/python scripts/execute_chapters.py [--jobs N]`` from the repository root (run by
scripts/build_book.sh before ``jupyter-book build``; ``--jobs`` defaults to the number of CPUs, at
most 4, or ``NORMCOURSE_BOOK_JOBS``).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "_build" / ".jupyter_cache"


@functools.cache
def book_config() -> dict:
    """The book's _config.yml (read once per process)."""
    return yaml.safe_load((REPO / "_config.yml").read_text())


def chapters() -> list[Path]:
    """The executed pages: every MyST notebook (a page with a kernelspec) listed in _toc.yml."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(toc)
    pages = [REPO / f"{f}.md" for f in files if (REPO / f"{f}.md").exists()]
    return [p for p in pages if "kernelspec:" in p.read_text(encoding="utf-8").split("\n---", 1)[0]]


def read_chapter(path: Path):
    """The notebook MyST-NB builds from ``path`` (its reader, the book's MyST settings)."""
    from myst_nb.core.read import read_myst_markdown_notebook
    from myst_parser.config.main import MdParserConfig

    extensions = set((book_config().get("parse") or {}).get("myst_enable_extensions") or [])
    return read_myst_markdown_notebook(path.read_text(encoding="utf-8"),
                                       config=MdParserConfig(enable_extensions=extensions),
                                       add_source_map=True, path=str(path))


def execute(path: str, timeout: int):
    """Run one chapter (in a worker process); return (path, executed notebook or None, seconds, error)."""
    from jupyter_cache.executors.utils import single_nb_execution

    notebook = read_chapter(Path(path))
    result = single_nb_execution(notebook, cwd=str(Path(path).parent), allow_errors=False,
                                 timeout=timeout, meta_override=True)
    error = None if result.err is None else f"{type(result.err).__name__}: {result.err}"
    return path, (notebook if error is None else None), result.time, error


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_jobs = int(os.environ.get("NORMCOURSE_BOOK_JOBS", min(os.cpu_count() or 1, 4)))
    parser.add_argument("--jobs", type=int, default=default_jobs)
    args = parser.parse_args()

    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    timeout = int((book_config().get("execute") or {}).get("timeout", 30))
    cache = get_cache(str(CACHE))
    missing = []
    for path in chapters():
        try:
            cache.match_cache_notebook(read_chapter(path))
        except KeyError:
            missing.append(path)
    if not missing or args.jobs < 2:
        return 0  # nothing to run, or nothing to gain: the Sphinx build executes what is missing
    start = time.monotonic()
    print(f"Executing {len(missing)} chapter(s), {args.jobs} at a time...", flush=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(execute, str(p), timeout) for p in missing]
        for future in as_completed(futures):
            path, notebook, seconds, error = future.result()
            name = Path(path).relative_to(REPO)
            if error:
                print(f"  {name}: failed after {seconds:.1f} s ({error}); the build will run it again", flush=True)
                continue
            cache.cache_notebook_bundle(CacheBundleIn(notebook, path, data={"execution_seconds": seconds}),
                                        check_validity=False, overwrite=True)
            print(f"  {name}: {seconds:.1f} s", flush=True)
    print(f"Chapters executed in {time.monotonic() - start:.0f} s.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

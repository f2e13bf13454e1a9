"""Where the book's sources and build live, which pages the table of contents lists, and the problem sets."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "_build"
HTML = BUILD / "html"
BUILD_LOG = BUILD / "build.log"
STAMP = BUILD / "book_test_build.json"
# Generous: a clean build executes seven chapters (each budgeted well under a minute on 2 cores).
BUILD_TIMEOUT_SECONDS = 30 * 60
# The nbgrader release folder and the folder of the problem-set pages (one page per release).
RELEASES = REPO / "exercises"
PROBLEM_SET_PAGES = "problem_sets"
SOURCE_SUFFIXES = (".md", ".ipynb")


def _glob_docnames(pattern):
    """Docnames matching a _toc.yml `glob:` entry, sorted as sphinx-external-toc sorts them."""
    found = {path.relative_to(REPO).with_suffix("").as_posix()
             for suffix in SOURCE_SUFFIXES for path in REPO.glob(pattern + suffix)}
    return sorted(found)


def toc_pages():
    """Docnames of every page in _toc.yml, in reading order (root first), globs expanded."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            elif "glob" in entry:
                pages.extend(page for page in _glob_docnames(entry["glob"]) if page not in pages)
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return pages


def editions():
    """The book's editions, source language first: language -> {folder, label, title} (``_config.yml``)."""
    config = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
    return dict(config["sphinx"]["config"]["book_editions"])


def translated_folders():
    """The site folders of the translated editions ("zh" for the Chinese one)."""
    return [edition["folder"].strip("/") for edition in list(editions().values())[1:]]


def released_problem_sets():
    """Names of the problem sets with a committed release, exercises/<name>/<name>.ipynb."""
    return sorted(folder.name for folder in RELEASES.iterdir()
                  if (folder / f"{folder.name}.ipynb").is_file())


def release_notebook(name):
    return RELEASES / name / f"{name}.ipynb"


def problem_set_pages():
    """Docnames of the problem-set pages in the table of contents."""
    return [page for page in toc_pages() if page.startswith(PROBLEM_SET_PAGES + "/")]

"""Where the book's sources and build live, and which pages the table of contents lists."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "_build"
HTML = BUILD / "html"
BUILD_LOG = BUILD / "build.log"
STAMP = BUILD / "book_test_build.json"
# Generous: a clean build executes seven chapters (each budgeted well under a minute on 2 cores).
BUILD_TIMEOUT_SECONDS = 30 * 60


def toc_pages():
    """Docnames of every page in _toc.yml, in reading order (root first)."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return pages

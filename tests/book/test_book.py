"""The book builds offline, strictly, and what it ships is self-contained.

One build per session (see conftest.py). These tests read the build log and the files in
_build/html; tests/book/test_browser.py then opens every page in a real browser.
"""

import re

import pytest

from book_site import REPO, toc_pages

pytestmark = pytest.mark.book

SPHINX_PROBLEM = re.compile(r"(WARNING|ERROR|CRITICAL):")
CHAPTERS = [page for page in toc_pages() if page.startswith("chapters/")]


def test_build_succeeds_with_zero_warnings(book_build):
    problems = [line for line in book_build.log.splitlines() if SPHINX_PROBLEM.search(line)]
    assert book_build.returncode == 0 and not problems, (
        f"scripts/build_book.sh exited with {book_build.returncode}; warnings/errors:\n"
        + "\n".join(problems[:50]) + "\n--- end of log ---\n" + book_build.log[-3000:])


def test_toc_lists_seven_chapters_in_order():
    assert CHAPTERS == [
        "chapters/01_internal_covariate_shift", "chapters/02_loss_smoothing",
        "chapters/03_scopes_images", "chapters/04_scopes_sequences",
        "chapters/05_jacobian_bounds", "chapters/06_transformers", "chapters/07_tradeoffs"]


def test_every_toc_page_is_built(built_site):
    missing = [page for page in toc_pages() if not (built_site / f"{page}.html").is_file()]
    assert not missing, f"pages in _toc.yml without HTML: {missing}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_was_executed_and_offers_the_notebook(built_site, chapter):
    """Each chapter ran at build time (it has outputs) and its .ipynb is downloadable."""
    import nbformat

    notebook_path = built_site / "_sources" / f"{chapter}.ipynb"
    assert notebook_path.is_file(), f"no executed notebook at {notebook_path}"
    notebook = nbformat.read(notebook_path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells, f"{chapter} has no code cells"
    assert any(cell.outputs for cell in code_cells), f"{chapter} was not executed (no outputs)"
    errors = [cell.source[:80] for cell in code_cells
              if any(out.get("output_type") == "error" for out in cell.outputs)]
    assert not errors, f"{chapter}: cells raised errors: {errors}"
    page = (built_site / f"{chapter}.html").read_text(encoding="utf-8")
    name = chapter.split("/")[-1]
    assert f'_sources/chapters/{name}.ipynb"' in page, "no .ipynb entry in the download menu"


# What would make a page fetch something from another host when it loads.
REMOTE_ASSET = re.compile(
    r"""<(?:script|img|iframe|source|audio|video|embed)\b[^>]*\bsrc\s*=\s*["']?(?:https?:)?//"""
    r"""|<link\b[^>]*\bhref\s*=\s*["']?(?:https?:)?//"""
    r"""|url\(\s*["']?(?:https?:)?//"""
    r"""|@import\s+["'](?:https?:)?//"""
    r"""|THEBE_JS_URL""", re.IGNORECASE)


def test_no_page_or_stylesheet_loads_anything_remote(built_site):
    offenders = []
    for path in sorted(built_site.rglob("*")):
        if path.suffix not in {".html", ".css"} or not path.is_file():
            continue
        for match in REMOTE_ASSET.finditer(path.read_text(encoding="utf-8", errors="replace")):
            offenders.append(f"{path.relative_to(built_site)}: {match.group(0)[:120]}")
    assert not offenders, "remote assets referenced:\n" + "\n".join(offenders[:40])


def test_mathjax_is_served_locally(built_site):
    mathjax = built_site / "_static" / "mathjax"
    assert (mathjax / "tex-chtml.js").is_file()
    assert any((mathjax / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    page = built_site / f"{CHAPTERS[0]}.html"
    assert '_static/mathjax/tex-chtml.js' in page.read_text(encoding="utf-8")


def test_no_static_folder_in_the_sources():
    """Jupyter Book injects every .js/.css under a `_static/` source folder into every page."""
    assert not (REPO / "_static").exists()


def test_bibliography_lists_every_entry_of_references_bib(built_site):
    from pybtex.database import parse_file

    keys = set(parse_file(REPO / "references.bib").entries)
    page = (built_site / "bibliography.html").read_text(encoding="utf-8")
    shown = page.count('class="citation"')
    assert shown == len(keys), f"bibliography.html shows {shown} entries, references.bib has {len(keys)}"


REQUIRED_KEYS = ["ioffe2015batch", "santurkar2018how", "ba2016layer", "ulyanov2016instance", "wu2018group",
                 "zhang2019root", "xiong2020layer", "vaswani2017attention", "zhu2025transformers",
                 "bjorck2018understanding", "kingma2015adam", "lecun1998efficient", "touvron2023llama",
                 "pascanu2013difficulty"]


def test_references_bib_has_the_keys_chapters_cite_with_complete_entries():
    from pybtex.database import parse_file

    entries = parse_file(REPO / "references.bib").entries
    missing = [key for key in REQUIRED_KEYS if key not in entries]
    assert not missing, f"references.bib lacks {missing}"
    incomplete = [key for key, entry in entries.items()
                  if not entry.persons.get("author") or not {"title", "year"} <= set(entry.fields)]
    assert not incomplete, f"entries without author, title or year: {incomplete}"


def test_glossary_gives_the_chinese_terms_of_the_seeds():
    glossary = (REPO / "glossary.md").read_text(encoding="utf-8")
    for term in ["批归一化", "层归一化", "实例归一化", "组归一化", "均方根归一化", "内部协变量偏移", "雅可比矩阵",
                 "谱范数", "平滑性", "利普希茨", "残差", "预归一化", "后归一化"]:
        assert term in glossary, term


def test_config_executes_every_chapter_strictly_and_keeps_the_rest_out():
    import yaml

    config = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
    execute = config["execute"]
    assert execute["execute_notebooks"] == "cache" and execute["allow_errors"] is False
    assert 0 < execute["timeout"] <= 600
    assert config["only_build_toc_files"] is True
    for folder in ["README.md", "solutions", "exercises", "grading", ".venv", "tests", "scripts", "autograder"]:
        assert folder in config["exclude_patterns"], folder
    assert config["launch_buttons"]["thebe"] is False
    assert "sphinx_thebe" not in config["sphinx"]["config"]["extensions"]
    assert not config["sphinx"]["config"]["mathjax_path"].startswith(("http:", "https:", "//"))

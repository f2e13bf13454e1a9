"""The book builds offline, strictly, and what it ships is self-contained.

One build per session (see conftest.py). These tests read the build log and the files in
_build/html; tests/book/test_browser.py then opens every page in a real browser.
"""

import hashlib
import re
from html.parser import HTMLParser

import pytest

from book_site import (BUILD, REPO, editions, problem_set_pages, release_notebook, released_problem_sets, toc_pages,
                       translated_folders)

pytestmark = pytest.mark.book

SPHINX_PROBLEM = re.compile(r"(WARNING|ERROR|CRITICAL):")
CHAPTERS = [page for page in toc_pages() if page.startswith("chapters/")]
PROBLEM_SETS = released_problem_sets()


def test_build_succeeds_with_zero_warnings(book_build):
    problems = [line for line in book_build.log.splitlines() if SPHINX_PROBLEM.search(line)]
    assert book_build.returncode == 0 and not problems, (
        f"scripts/build_book.sh exited with {book_build.returncode}; warnings/errors:\n"
        + "\n".join(problems[:50]) + "\n--- end of log ---\n" + book_build.log[-3000:])


def test_toc_lists_every_chapter_in_order():
    on_disk = sorted(f"chapters/{p.stem}" for p in (REPO / "chapters").glob("[0-9][0-9]_*.md"))
    assert len(on_disk) >= 8 and CHAPTERS == on_disk


CODE_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: "About 15 lines at most" (the book's house style): heavy code lives in the package, not in chapters.
LONGEST_CELL = 16


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_code_cells_are_short(chapter):
    text = (REPO / f"{chapter}.md").read_text(encoding="utf-8")
    cells = CODE_CELL.findall(text)
    assert cells, f"{chapter} has no code cells"
    long = [(len(code), code[0][:60]) for body in cells
            if len(code := [line for line in body.splitlines() if line.strip() and not line.startswith(":")])
            > LONGEST_CELL]
    assert not long, f"{chapter}: cells over {LONGEST_CELL} lines (lines, first line): {long}"


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


def _cited_keys() -> set[str]:
    """Every key cited with a {cite}-family role in the book's pages."""
    keys = set()
    for page in toc_pages():
        text = (REPO / f"{page}.md").read_text(encoding="utf-8")
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", text):
            keys |= {k.strip() for k in group.split(",")}
    return keys


def test_the_bibliography_lists_exactly_the_works_cited(built_site):
    from pybtex.database import parse_file

    entries, cited = set(parse_file(REPO / "references.bib").entries), _cited_keys()
    assert cited <= entries, f"cited but not in references.bib: {sorted(cited - entries)}"
    assert entries <= cited, f"in references.bib but cited nowhere (remove them): {sorted(entries - cited)}"
    page = (built_site / "bibliography.html").read_text(encoding="utf-8")
    shown = page.count('class="citation"')
    assert shown == len(cited), f"bibliography.html shows {shown} entries, the book cites {len(cited)} works"


REQUIRED_KEYS = ["ioffe2015batch", "santurkar2018how", "ba2016layer", "ulyanov2016instance", "wu2018group",
                 "zhang2019root", "xiong2020layer", "vaswani2017attention", "zhu2025transformers",
                 "bjorck2018understanding", "lecun1998efficient", "touvron2023llama",
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


# ---------------------------------------------------------------------------------------------------
# Problem-set pages (scripts/sphinx_ext/problem_sets.py).

def test_every_release_has_a_problem_set_page_and_every_page_a_release():
    pages = {page.split("/", 1)[1] for page in problem_set_pages()}
    missing, orphans = sorted(set(PROBLEM_SETS) - pages), sorted(pages - set(PROBLEM_SETS))
    assert not missing, (
        f"releases without a page: {missing}. Add problem_sets/<name>.md: copy an existing page and write "
        "what the set covers and which chapters it goes with; the parts, points and download are generated.")
    assert not orphans, f"pages in problem_sets/ without a release exercises/<name>/<name>.ipynb: {orphans}"


class _PartsTable(HTMLParser):
    """The rows of the parts table (table.problem-set-parts) of a built page, as lists of cell texts."""

    def __init__(self):
        super().__init__()
        self.rows, self._depth, self._cell = [], 0, None

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if tag == "table" and "problem-set-parts" in classes:
            self._depth = 1
        elif tag == "table" and self._depth:
            self._depth += 1
        elif self._depth and tag == "tr":
            self.rows.append([])
        elif self._depth and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "table" and self._depth:
            self._depth -= 1
        elif self._depth and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.mark.parametrize("name", PROBLEM_SETS)
def test_problem_set_page_lists_every_graded_cell_and_the_totals(built_site, name):
    """The table shows the release's graded cells in order with their points, and the sums are right."""
    import nbformat

    notebook = nbformat.read(release_notebook(name), as_version=4)
    expected = []
    for cell in notebook.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade") or meta.get("task"):
            expected.append((meta["grade_id"], float(meta["points"]), bool(meta.get("solution") or meta.get("task"))))
    html = (built_site / "problem_sets" / f"{name}.html").read_text(encoding="utf-8")
    table = _PartsTable()
    table.feed(html)
    assert table.rows, f"problem_sets/{name}.html has no parts table"
    header, rows = table.rows[0], [row for row in table.rows[1:] if len(row) == 3]
    assert header == ["Graded cell", "What it checks", "Points"], header
    shown = [(row[0].split(" (")[0], float(row[2]), row[0].endswith("(hand-graded)")) for row in rows]
    assert shown == expected, f"problem_sets/{name}.html: table rows {shown}, release has {expected}"
    autograded = sum(points for _, points, manual in expected if not manual)
    manual = sum(points for _, points, manual in expected if manual)
    text = " ".join(re.sub(r"<[^>]+>", "", html).split())
    assert f"Total: {autograded + manual:g} points: {autograded:g} autograded" in text, "total missing or wrong"
    if manual:
        assert f"and {manual:g} hand-graded" in text, "hand-graded points missing or wrong"


POINTER = re.compile(r"<p><strong>(?:Practice|Problem sets?)\.</strong>(.*?)</p>", re.DOTALL)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_points_to_its_problem_set_pages(built_site, chapter):
    """The closing "Practice." / "Problem set." paragraph links the sets' pages, not repository paths."""
    html = (built_site / f"{chapter}.html").read_text(encoding="utf-8")
    pointers = POINTER.findall(html)
    assert pointers, f"{chapter} has no closing 'Practice.' or 'Problem set.' paragraph"
    linked = sorted(set(re.findall(r'href="\.\./problem_sets/(\w+)\.html"', pointers[-1])))
    assert linked, f"{chapter}: the closing pointer links no problem-set page: {pointers[-1][:300]}"
    assert set(linked) <= set(PROBLEM_SETS), f"{chapter} links pages of unreleased sets: {linked}"


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_site_offers_each_release_once_and_nothing_from_solutions(built_site):
    releases = {_sha256(release_notebook(name)): name for name in PROBLEM_SETS}
    downloads = sorted((built_site / "_downloads").rglob("*.ipynb"))
    offered = [releases.get(_sha256(path), f"NOT A RELEASE: {path.relative_to(built_site)}") for path in downloads]
    assert sorted(offered) == PROBLEM_SETS, f"_downloads/ holds {offered}, expected each of {PROBLEM_SETS} once"
    solution_files = {_sha256(path): path for path in (REPO / "solutions").rglob("*") if path.is_file()}
    copied = [f"{path.relative_to(built_site)} = {solution_files[_sha256(path)].relative_to(REPO)}"
              for path in built_site.rglob("*") if path.is_file() and _sha256(path) in solution_files]
    assert not copied, f"files from solutions/ in the site: {copied}"
    markers = [f"{path.relative_to(built_site)}: {marker}" for path in built_site.rglob("*.ipynb")
               for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS")
               if marker in path.read_text(encoding="utf-8", errors="replace")]
    assert not markers, f"notebooks in the site carry nbgrader solution markers: {markers}"


def test_favicon_is_configured_and_shipped(built_site):
    import yaml

    config = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
    favicon = config["html"]["favicon"]
    assert not favicon.startswith(("http:", "https:", "//")), "the favicon must be served by the site itself"
    assert (REPO / favicon).is_file(), f"html.favicon names {favicon}, which does not exist"
    shipped = built_site / "_static" / (REPO / favicon).name
    assert shipped.is_file() and shipped.read_bytes() == (REPO / favicon).read_bytes(), f"{shipped} missing"


# ---------------------------------------------------------------------------------------------------
# The translated editions (scripts/sphinx_ext/edition.py, translations.py): the same pages, built by
# Sphinx from the same sources and the same executed notebooks, in _build/html/<folder>/.

FOLDERS = translated_folders()


class _PageFacts(HTMLParser):
    """What a chapter page shows that must not depend on the language: glued numbers, images, code, math,
    citations and links to other pages of the book."""

    def __init__(self):
        super().__init__()
        self.glued, self.images, self.code, self.citations, self.math = [], [], [], [], []
        self.lang = None
        self._glue = self._code = self._math = 0
        self._text, self._math_text = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "html":
            self.lang = attrs.get("lang")
        if self._glue or "pasted-text" in classes:
            self._glue += 1
        if tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"].rsplit("/", 1)[-1])
        if self._code or (tag == "div" and "cell_input" in classes):
            self._code += 1
        if self._math or (tag in ("div", "span") and "math" in classes):
            self._math += 1
        if tag == "a" and "bibliography.html#" in (attrs.get("href") or ""):
            self.citations.append(attrs.get("title") or attrs["href"])  # the reference the citation shows

    def handle_endtag(self, tag):
        if self._math:
            self._math -= 1
            if not self._math:
                self.math.append(" ".join("".join(self._math_text).split()))
                self._math_text = []
        if self._glue:
            self._glue -= 1
            if not self._glue:
                self.glued.append("".join(self._text))
                self._text = []
        if self._code:
            self._code -= 1
            if not self._code:
                self.code.append("".join(self._text))
                self._text = []

    def handle_data(self, data):
        if self._math:
            self._math_text.append(data)
        if self._glue or self._code:
            self._text.append(data)


def _facts(path):
    facts = _PageFacts()
    facts.feed(path.read_text(encoding="utf-8"))
    return facts


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_page_of_the_book_exists_in_every_edition(built_site, folder):
    missing = [page for page in toc_pages() + ["genindex", "search", "index"]
               if not (built_site / folder / f"{page}.html").is_file()]
    assert not missing, f"pages without a {folder}/ edition: {missing}"


@pytest.mark.parametrize("folder", FOLDERS)
@pytest.mark.parametrize("page", toc_pages())
def test_translated_page_shows_the_same_numbers_figures_code_and_math(built_site, folder, page):
    """Built from the same executed notebook: every glued number, image, code cell, equation and citation
    of the English page appears on the translated page (the text around them is all that differs)."""
    english, translated = _facts(built_site / f"{page}.html"), _facts(built_site / folder / f"{page}.html")
    language = next(lang for lang, edition in editions().items() if edition["folder"].strip("/") == folder)
    assert translated.lang == language.replace("_", "-"), f"{folder}/{page}.html: <html lang={translated.lang!r}>"
    # A glued phrase is translated ("48% more time than LayerNorm" -> "比 LayerNorm 多用 48% 的时间"):
    # its numbers are what must be the same.
    assert sorted(_glued_numbers(translated.glued)) == sorted(_glued_numbers(english.glued)), \
        f"{folder}/{page}: glued values differ: {translated.glued} vs English {english.glued}"
    assert translated.images == english.images, f"{folder}/{page}: images differ"
    assert translated.code == english.code, f"{folder}/{page}: code cells differ"
    # The same equations; a translation may write one twice where the English says "it" (the catalog check
    # treats math as a set for the same reason).
    assert set(translated.math) == set(english.math), (
        f"{folder}/{page}: equations only in the translation {sorted(set(translated.math) - set(english.math))}, "
        f"only in the English {sorted(set(english.math) - set(translated.math))}")
    assert sorted(translated.citations) == sorted(english.citations), f"{folder}/{page}: citations differ"


def _glued_numbers(glued):
    return [number for text in glued for number in re.findall(r"[-+−]?\d+(?:\.\d+)?(?:e[-+]?\d+)?%?", text)]


def _executions(doctrees):
    import pickle

    with (doctrees / "environment.pickle").open("rb") as handle:
        env = pickle.load(handle)
    return {docname: (data["exec_data"]["method"], data["exec_data"]["mtime"])
            for docname, data in env.nb_metadata.items() if data.get("exec_data")}


@pytest.mark.parametrize("folder", FOLDERS)
def test_translated_edition_reused_the_english_execution(built_site, folder):
    """No chapter ran twice: the translated build took each notebook from the cache entry of the English run."""
    english, translated = _executions(BUILD / ".doctrees"), _executions(BUILD / folder / ".doctrees")
    assert set(english) == set(CHAPTERS) and translated == english, (english, translated)


@pytest.mark.parametrize("folder", FOLDERS)
def test_translation_report_shows_every_message_translated(built_site, folder):
    """The translated build's own count (edition.py): every message of every page replaced by its translation."""
    import json

    report = json.loads((BUILD / folder / "translation_report.json").read_text(encoding="utf-8"))
    assert set(report) == set(toc_pages()), sorted(set(toc_pages()) ^ set(report))
    untranslated = {page: [item["message"][:120] for item in data["untranslated"]]
                    for page, data in report.items() if data["untranslated"]}
    assert not untranslated, f"shown in English in {folder}/: {untranslated}"
    assert all(data["messages"] == data["translated"] > 0 for data in report.values())


@pytest.mark.parametrize("folder", FOLDERS)
@pytest.mark.parametrize("name", PROBLEM_SETS)
def test_translated_problem_set_page_lists_the_same_release(built_site, folder, name):
    """The parts table of the translated page: the release's graded cells and points, translated headers."""
    english, translated = _PartsTable(), _PartsTable()
    english.feed((built_site / "problem_sets" / f"{name}.html").read_text(encoding="utf-8"))
    translated.feed((built_site / folder / "problem_sets" / f"{name}.html").read_text(encoding="utf-8"))
    assert len(translated.rows) == len(english.rows) and translated.rows[0] != english.rows[0], translated.rows[:1]
    ids = [[row[0].split(" ")[0], row[2]] for row in english.rows[1:] if len(row) == 3]
    assert [[row[0].split(" ")[0], row[2]] for row in translated.rows[1:] if len(row) == 3] == ids
    page = (built_site / folder / "problem_sets" / f"{name}.html").read_text(encoding="utf-8")
    assert "Graded cell" not in page and "autograded (" not in page, "English template text on the translated page"
    # The notebook's own text in the table (section titles, what each cell checks) comes from the page's
    # catalog: every such cell is in Chinese, not only the headers.
    def text(row):
        return row[1] if len(row) == 3 else row[0]

    english_left = [text(mine) for theirs, mine in zip(english.rows[1:], translated.rows[1:])
                    if text(mine) == text(theirs)]
    assert not english_left, f"{folder}/problem_sets/{name}.html: table cells left in English: {english_left[:3]}"


@pytest.mark.parametrize("folder", FOLDERS)
def test_translated_sidebar_shows_translated_captions(built_site, folder):
    """The table of contents' captions ("Chapters", "Problem sets") in the sidebar of every translated page.

    sphinx-external-toc adds the toctree after Sphinx's translation step; edition.TranslateTocCaptions
    translates the captions from the root page's catalog."""
    caption = re.compile(r'caption-text">([^<]*)<')
    english = caption.findall((built_site / f"{toc_pages()[0]}.html").read_text(encoding="utf-8"))
    assert english, "no toctree captions on the English root page"
    for page in toc_pages():
        translated = caption.findall((built_site / folder / f"{page}.html").read_text(encoding="utf-8"))
        assert len(translated) == len(english) and not set(translated) & set(english), \
            f"{folder}/{page}.html: sidebar captions {translated}, English {english}"

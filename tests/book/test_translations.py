"""The Chinese edition never falls out of step with the English one.

The catalogs (locales/zh_CN/LC_MESSAGES/*.po) are checked against the English book's messages as they
are *now*: this module extracts them afresh with Sphinx's gettext builder (scripts/sphinx_ext/
translations.py; about half a minute, nothing executed), so changing an English sentence without
updating its translation fails here, with the page, the line and the sentence. One test per page.

The rules themselves (what a translation must keep, how glossary terms are checked) are tested on small
hand-made messages below, without Sphinx. tests/book/test_book.py checks the built Chinese pages,
tests/book/test_browser.py opens every one of them.
"""

import sys
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog, Message
from babel.messages.pofile import write_po

from book_site import REPO, toc_pages

sys.path.insert(0, str(REPO / "scripts" / "sphinx_ext"))
import translations  # noqa: E402

LANGUAGES = translations.translated_languages()
PAGES = toc_pages() + [translations.GENERATED_DOMAIN]


@pytest.fixture(scope="session")
def english_messages(tmp_path_factory):
    """The English book's messages, extracted now (with the line of each in its source)."""
    return translations.extract(tmp_path_factory.mktemp("gettext"), locations=True)


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("page", PAGES)
def test_every_message_of_the_page_is_translated_and_keeps_what_it_must(english_messages, language, page):
    problems = translations.check_catalogs(english_messages, language, [page])
    assert not problems, (
        f"{len(problems)} problems in locales/{language}/LC_MESSAGES/{page}.po (after changing English text run "
        "`python scripts/sphinx_ext/translations.py update`, then translate what is new or fuzzy):\n\n"
        + "\n\n".join(map(str, problems)))


def test_every_catalog_belongs_to_a_page_of_the_book():
    for language in LANGUAGES:
        catalogs = {path.relative_to(translations.catalog_dir(language)).with_suffix("").as_posix()
                    for path in translations.catalog_dir(language).rglob("*.po")}
        assert catalogs <= set(PAGES), f"catalogs without a page (remove them): {sorted(catalogs - set(PAGES))}"


def test_no_compiled_catalog_is_committed():
    """Sphinx compiles .po into .mo at build time; a committed .mo could only be stale."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "locales"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert tracked and not [path for path in tracked if path.endswith(".mo")]


# ---------------------------------------------------------------------------------------------------
# The rules, on messages written here.

def _entry(chinese, fuzzy=False, comments=(), previous=None):
    return Message("x", chinese, flags=["fuzzy"] if fuzzy else [], user_comments=list(comments),
                   previous_id=previous or [])


def _check(english, chinese, terms=(), **entry):
    message = translations.Message("chapters/00_x", english, 7)
    return translations.check_message(message, _entry(chinese, **entry) if chinese is not None else None, list(terms))


TERMS = [translations.Term(["Batch normalization", "BatchNorm"], "批归一化", ["批量标准化"]),
         translations.Term(["Spectral norm"], "谱范数"),
         translations.Term(["Gain"], "增益", ["缩放参数"])]


def test_a_faithful_translation_passes():
    english = ("BatchNorm's Jacobian has spectral norm $1/s$ {cite}`ioffe2015batch`, "
               "{glue:text}`ch5_norm:.2f` in `F.batch_norm` after 600 steps.")
    chinese = ("BatchNorm 的雅可比矩阵的谱范数是 $1/s$ {cite}`ioffe2015batch`，经过 600 步后，"
               "`F.batch_norm` 中为 {glue:text}`ch5_norm:.2f`。")
    assert _check(english, chinese, TERMS) == []


@pytest.mark.parametrize("chinese, problem", [
    (None, "untranslated"),
    ("", "untranslated"),
    ("谱范数是 $1/s$，共 600 步。", "math changed"),  # $\epsilon$ lost
    ("谱范数是 $1/s$ 和 $\\epsilon$，共 600 步。", None),
    ("谱范数是 $1/\\sqrt s$ 和 $\\epsilon$，共 600 步。", "math changed"),  # changed
    ("谱范数是 $1/s$ 和 $\\epsilon$，共 60 步。", "numbers of the English missing"),
])
def test_math_and_numbers_must_survive(chinese, problem):
    problems = _check("The spectral norm is $1/s$ and $\\epsilon$, over 600 steps.", chinese, TERMS)
    if problem is None:
        assert problems == []
    else:
        assert any(p.startswith(problem) for p in problems), problems


@pytest.mark.parametrize("chinese", [
    "见 {doc}`第 5 章 <chapters/05_x>` 和 {cite}`ioffe2015batch`，数值为 {glue:text}`a:.2f`。",  # {doc} target changed
    "见 {doc}`第 5 章 <chapters/05_y>` 和 {cite}`ba2016layer`，数值为 {glue:text}`a:.2f`。",  # citation changed
    "见 {doc}`第 5 章 <chapters/05_y>` 和 {cite}`ioffe2015batch`，数值为 {glue:text}`b:.2f`。",  # glue key changed
    "见 {ref}`第 5 章 <chapters/05_y>` 和 {cite}`ioffe2015batch`，数值为 {glue:text}`a:.2f`。",  # role changed
])
def test_roles_must_keep_their_targets(chinese):
    english = "See {doc}`chapter 5 <chapters/05_y>` and {cite}`ioffe2015batch`: {glue:text}`a:.2f`."
    assert _check(english, "见 {doc}`第 5 章 <chapters/05_y>` 和 {cite}`ioffe2015batch`，数值为 {glue:text}`a:.2f`。") == []
    assert any(p.startswith("role changed") for p in _check(english, chinese)), chinese


def test_code_spans_and_link_targets_must_survive():
    english = "Call `normcourse check` or read [the guide](https://example.org/guide)."
    assert _check(english, "运行 `normcourse check`，或阅读[指南](https://example.org/guide)。") == []
    assert any(p.startswith("code changed") for p in _check(english, "运行 `normcourse 检查`，或阅读[指南](https://example.org/guide)。"))
    assert any(p.startswith("link target changed") for p in _check(english, "运行 `normcourse check`，或阅读[指南](https://example.org/)。"))


def test_substitutions_must_survive():
    assert any(p.startswith("substitution changed") for p in _check("Version {{ version }}.", "版本 {{ 版本 }}。"))


def test_a_numbered_heading_must_not_read_as_a_list():
    # Sphinx parses each translation as Markdown on its own: "1. 发布" is a list, and the heading would
    # stay in English (the build warns only then); "1\\. 发布" is the heading's text.
    heading = translations.Message("instructor", "1. Release", 83, heading=True)
    problems = translations.check_message(heading, _entry("1. 发布"), [])
    assert any("parsed as a list" in p for p in problems), problems
    assert translations.check_message(heading, _entry("1\\. 发布"), []) == []
    paragraph = translations.Message("instructor", "1. Release", 83, heading=False)
    assert translations.check_message(paragraph, _entry("1. 发布"), []) == []


def test_a_template_is_checked_as_it_reads_once_formatted():
    # "`{path}`): fill in ... `YOUR CODE HERE`" is no role named "path"; "{{doc}}`/self_check`" is a role.
    english = "{{download}}`Download {name} </{path}>` (the repository's `{path}`): fill in `YOUR CODE HERE`."
    good = "{{download}}`下载 {name} </{path}>`（仓库中的 `{path}`）：填写 `YOUR CODE HERE`。"
    message = translations.Message("_generated", english)
    assert translations.check_message(message, _entry(good), [], generated=True) == []
    lost_role = good.replace("{{download}}`下载 {name} </{path}>`", "下载 {name}")
    assert any(p.startswith("role changed") for p in translations.check_message(message, _entry(lost_role), [], generated=True))
    lost_field = good.replace("（仓库中的 `{path}`）", "")
    assert any(p.startswith("template fields differ")
               for p in translations.check_message(message, _entry(lost_field), [], generated=True))


def test_a_fuzzy_translation_fails_and_shows_the_earlier_english():
    problems = _check("The norm is one.", "范数为一。", fuzzy=True, previous=["The norm is two."])
    assert problems and problems[0].startswith("fuzzy") and "The norm is two." in problems[0]


def test_a_copy_of_the_english_is_not_a_translation_but_a_name_may_stay():
    assert _check("The spectral norm.", "The spectral norm.") == ["the translation is the English text itself"]
    assert _check("PyTorch", "PyTorch") == []


def test_glossary_terms_use_the_glossary_rendering():
    english = "The spectral norm of the Jacobian."
    assert _check(english, "雅可比矩阵的谱范数。", TERMS) == []
    assert any("glossary: 'Spectral norm' is translated '谱范数'" in p for p in _check(english, "雅可比矩阵的谱模。", TERMS))
    # A name may stay as it is; a word that is not the glossary's term is marked by a translator comment.
    assert _check("BatchNorm helps.", "BatchNorm 有帮助。", TERMS) == []
    assert _check("BatchNorm helps.", "批归一化有帮助。", TERMS) == []
    assert _check("What do we gain?", "我们得到了什么？", TERMS) != []
    assert _check("What do we gain?", "我们得到了什么？", TERMS, comments=["not-a-term: gain"]) == []


def test_an_edited_english_sentence_fails_naming_page_line_sentence_and_old_translation(tmp_path, monkeypatch):
    """The English of a page changed (the .pot says so), the catalog was not updated."""
    page = "chapters/00_example"
    old, new = "BatchNorm normalizes each unit over the minibatch.", "BatchNorm normalizes every unit over the batch."
    pot = Catalog()
    pot.add("Overview", locations=[(f"{page}.md", 12)])
    pot.add(new, locations=[(f"{page}.md", 14)])
    (tmp_path / "pot" / "chapters").mkdir(parents=True)
    with (tmp_path / "pot" / f"{page}.pot").open("wb") as handle:
        write_po(handle, pot)
    catalog = Catalog(locale="zh_CN")
    catalog.add("Overview", "概述")
    catalog.add(old, "批归一化（batch normalization，BatchNorm）把每个单元在小批量上归一化。")
    (tmp_path / "locales" / "zh_CN" / "LC_MESSAGES" / "chapters").mkdir(parents=True)
    with (tmp_path / "locales" / "zh_CN" / "LC_MESSAGES" / f"{page}.po").open("wb") as handle:
        write_po(handle, catalog)
    monkeypatch.setattr(translations, "LOCALES", tmp_path / "locales")
    problems = translations.check_catalogs(tmp_path / "pot", "zh_CN", [page])
    text = "\n".join(map(str, problems))
    assert f"{page}:14: untranslated" in text, text
    assert new in text and old in text and "earlier version of this sentence" in text, text
    assert "translates a sentence the English no longer has" in text, text


def test_first_use_on_a_page_gives_the_english_and_other_renderings_are_refused(tmp_path, monkeypatch):
    page = "chapters/00_example"
    english = ["Overview", "BatchNorm works.", "BatchNorm and its gain."]
    pot = Catalog()
    for line, message in enumerate(english, 1):
        pot.add(message, locations=[(f"{page}.md", line)])
    (tmp_path / "pot" / "chapters").mkdir(parents=True)
    with (tmp_path / "pot" / f"{page}.pot").open("wb") as handle:
        write_po(handle, pot)
    monkeypatch.setattr(translations, "LOCALES", tmp_path / "locales")
    monkeypatch.setattr(translations, "glossary_terms", lambda: TERMS)

    def problems(*chinese):
        catalog = Catalog(locale="zh_CN")
        for message, translation in zip(english, chinese):
            catalog.add(message, translation)
        path = tmp_path / "locales" / "zh_CN" / "LC_MESSAGES" / f"{page}.po"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            write_po(handle, catalog)
        return [p.what for p in translations.check_catalogs(tmp_path / "pot", "zh_CN", [page])]

    assert problems("概述", "批归一化（batch normalization，BatchNorm）有效。", "BatchNorm 及其增益（gain）。") == []
    assert any("first use of 'Batch normalization'" in p
               for p in problems("概述", "BatchNorm 有效。", "批归一化（BatchNorm）及其增益（gain）。"))
    assert any("'缩放参数' is another rendering of 'Gain'" in p
               for p in problems("概述", "批归一化（BatchNorm）有效。", "BatchNorm 及其增益（gain，缩放参数）。"))


# ---------------------------------------------------------------------------------------------------
# The glossary: the terms the chapters use, each with its Chinese term.

NEW_TERMS = ["QK-norm", "Amplification effect", "Peri-LN", "Sandwich-LN", "AdaIN", "FiLM", "adaLN-Zero",
             "Ghost batch", "Batch renormalization", "Weight standardization", "Adaptive gradient clipping",
             "Dynamic Tanh", "SkipInit", "Fixup"]


def test_glossary_gives_a_chinese_term_for_each_term_of_the_second_edition():
    terms = {english.lower(): term for term in translations.glossary_terms() for english in term.english}
    missing = [name for name in NEW_TERMS if name.lower() not in terms]
    assert not missing, f"glossary.md has no entry for {missing}"


def test_one_chinese_term_per_concept():
    terms = translations.glossary_terms()
    chinese = [term.chinese for term in terms]
    assert len(chinese) == len(set(chinese)), [c for c in chinese if chinese.count(c) > 1]
    renderings = {variant for term in terms for variant in term.variants}
    assert not renderings & set(chinese), renderings & set(chinese)


def test_a_work_list_round_trips_new_and_fuzzy_messages_into_the_catalog(tmp_path, monkeypatch):
    """translations.py todo/apply: the untranslated and fuzzy messages go out to one file and come back."""
    page = "problem_sets/ps99_example"
    catalog = Catalog(locale="zh_CN")
    catalog.add("Check your work", "检查你的答案")
    catalog.add("The notebook", "")
    catalog.add("Parts and points\nof the set", "各部分", flags=["fuzzy"])
    folder = tmp_path / "locales" / "zh_CN" / "LC_MESSAGES" / "problem_sets"
    folder.mkdir(parents=True)
    with (folder / "ps99_example.po").open("wb") as handle:
        write_po(handle, catalog)
    monkeypatch.setattr(translations, "LOCALES", tmp_path / "locales")
    work = tmp_path / "todo.txt"
    assert translations.write_todo("zh_CN", work) == 2
    text = work.read_text(encoding="utf-8")
    assert "Check your work" not in text and "OLD: 各部分" in text and f"### 2 {page} FUZZY" in text, text
    work.write_text(f"### 1 {page}\n笔记本\n\n### 2 {page}\n各部分与分值\n", encoding="utf-8")
    assert translations.apply_todo("zh_CN", work) == 2
    entries = {entry.id: entry for entry in translations.read_catalog(folder / "ps99_example.po") if entry.id}
    assert entries["The notebook"].string == "笔记本"
    assert entries["Parts and points\nof the set"].string == "各部分与分值" and not entries["Parts and points\nof the set"].fuzzy
    assert entries["Check your work"].string == "检查你的答案"

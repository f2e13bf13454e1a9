"""The book's translations: extract, update, build and check them (a command and a library).

Usage (from the repository root, with the course's environment)::

    python scripts/sphinx_ext/translations.py sync            # after a merge: update, then check (one extraction)
    python scripts/sphinx_ext/translations.py update          # after changing English text
    python scripts/sphinx_ext/translations.py check [PAGE...]  # what the test checks, page by page
    python scripts/sphinx_ext/translations.py stats           # messages and translated messages per page
    python scripts/sphinx_ext/translations.py todo FILE       # untranslated and fuzzy messages into one file
    python scripts/sphinx_ext/translations.py apply FILE      # ... and, translated there, into the catalogs
    python scripts/sphinx_ext/translations.py build           # the translated editions (build_book.sh)

``update`` extracts every message of the English book with Sphinx's gettext builder (through
Jupyter Book's own configuration; no chapter is executed for this), adds the text the book's
extensions generate (``_generated.pot``, see ``edition.message``), and merges both into
``locales/<language>/LC_MESSAGES/*.po`` with sphinx-intl: a new sentence arrives untranslated, an
edited one arrives *fuzzy* with its old translation and the previous English (``#| msgid``), a
removed one disappears. Translate, remove the ``#, fuzzy`` line, run ``check``.

``check`` (and ``tests/book/test_translations.py``) extracts the messages afresh and fails, naming the
page, the line of the English source and the sentence, when a message

- has no translation in the catalog, or a fuzzy one, or the catalog holds sentences the English no
  longer has (it was not updated);
- lost or changed what a translation must keep: math (``$...$``), roles with their targets
  (``{cite}``, ``{doc}``, ``{ref}``, ``{glue:text}``, ...), code spans, link targets, substitutions,
  the numbers of the English, or (in ``_generated.po``) the ``{fields}`` of a template;
- translates a glossary term otherwise than ``glossary.md`` does. For every entry of the glossary
  (``{glossary}`` block: its English lines, then its Chinese lines), a message whose English uses the
  term must use the entry's first Chinese term (or keep a name such as ``BatchNorm`` or ``Pre-LN`` as it
  is); the entry's other Chinese renderings are not used anywhere but in the glossary; and on each page
  the first sentence that uses the concept (headings aside) introduces it as ``中文术语（English）``.
  Where an English word is not the glossary's term ("what we gain"), a translator comment
  ``# not-a-term: gain`` on that message says so.

``build`` builds one translated edition into ``_build/html/<folder>/`` (``book_editions`` in
``_config.yml``) from the execution cache of the English build, and refuses to run a chapter.
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import edition  # noqa: E402
from edition import CJK, CODE, GENERATED_DOMAIN, LINK_TARGET, MATH, ROLE, SUBSTITUTION, prose_of  # noqa: E402

BUILD = REPO / "_build"
LOCALES = REPO / "locales"
GLOSSARY = REPO / "glossary.md"
SOURCE_SUFFIXES = (".md", ".ipynb")


def book_config() -> dict:
    import yaml

    return yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))


def editions() -> dict[str, dict]:
    return dict(book_config()["sphinx"]["config"]["book_editions"])


def translated_languages() -> list[str]:
    return list(editions())[1:]


def catalog_dir(language: str) -> Path:
    return LOCALES / language / "LC_MESSAGES"


# ---------------------------------------------------------------------------------------------------
# Running Sphinx through Jupyter Book's configuration.

def sphinx(builder: str, outdir: Path, doctreedir: Path, overrides: dict, strict: bool, quiet: bool = False):
    """One Sphinx build of the book with Jupyter Book's configuration plus ``overrides``; the exit status."""
    from jupyter_book.sphinx import build_sphinx

    confoverrides = {"external_toc_path": (REPO / "_toc.yml").as_posix(), "latex_individualpages": False}
    confoverrides.update(overrides)
    if strict:
        confoverrides["nitpicky"] = True
    result = build_sphinx(REPO, outdir, noconfig=True, path_config=str(REPO / "_config.yml"),
                          confoverrides=confoverrides, doctreedir=doctreedir, builder=builder,
                          warningiserror=strict, keep_going=strict, freshenv=True,
                          quiet=quiet, really_quiet=quiet)
    return result if isinstance(result, int) else 1


def extract(potdir: Path, locations: bool = False) -> Path:
    """Write the English book's messages as .pot files into ``potdir`` (one per page, plus _generated.pot).

    Nothing is executed: code-cell outputs are not text to translate (edition.MarkUntranslatable), so
    the messages are the same as in an executed build; the glue roles have no data and say so on
    stderr, which is discarded.
    """
    potdir = Path(potdir)
    shutil.rmtree(potdir, ignore_errors=True)
    with tempfile.TemporaryDirectory() as doctrees, redirect_stdout(io.StringIO()), \
            redirect_stderr(io.StringIO()) as errors:
        status = sphinx("gettext", potdir, Path(doctrees),
                        {"nb_execution_mode": "off", "gettext_location": locations, "gettext_compact": False,
                         "gettext_uuid": False, "gettext_additional_targets": []}, strict=False, quiet=True)
    if status != 0:
        raise RuntimeError(f"the gettext build failed ({status}):\n{errors.getvalue()[-3000:]}")
    write_generated_pot(potdir / f"{GENERATED_DOMAIN}.pot")
    return potdir


def generated_messages() -> dict[str, str]:
    """The text the book's extensions generate: msgid -> note for the translator."""
    import problem_sets  # noqa: F401  (registers its messages)

    return dict(edition.GENERATED)


def write_generated_pot(path: Path):
    from babel.messages.catalog import Catalog
    from babel.messages.pofile import write_po

    catalog = Catalog(project="Normalization layers, hands-on", charset="utf-8")
    for msgid, note in generated_messages().items():
        catalog.add(msgid, auto_comments=[note] if note else [], flags=["python-brace-format"])
    with path.open("wb") as handle:
        write_po(handle, catalog, width=100)


def update(language: str, potdir: Path | None = None) -> dict:
    """Merge the English book's current messages into the catalogs of ``language``.

    ``potdir``: messages already extracted (with or without source locations); by default they are
    extracted afresh. The catalogs never hold source locations (a moved paragraph is not a change).
    """
    from sphinx_intl.basic import update as intl_update

    if potdir is None:
        potdir = extract(BUILD / "gettext")
    else:
        copy = BUILD / "gettext"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(potdir, copy)
        potdir = copy
        for pot in potdir.rglob("*.pot"):
            _drop_locations(pot)
    return intl_update(str(LOCALES), str(potdir), (language,), line_width=100, ignore_obsolete=True, jobs=1)


def _drop_locations(pot: Path):
    from babel.messages.pofile import write_po

    catalog = read_catalog(pot)
    for entry in catalog:
        entry.locations = []
    with pot.open("wb") as handle:
        write_po(handle, catalog, width=100, omit_header=False)


def sync(language: str, pages: list[str] | None = None) -> list[Problem]:
    """``update`` then ``check`` from one extraction of the English messages (what to run after a merge)."""
    with tempfile.TemporaryDirectory() as potdir:
        potdir = extract(Path(potdir), locations=True)
        result = update(language, potdir)
        changed = {key: value for key, value in result.items() if value}
        print(f"catalogs of {language}: {changed}")
        return check_catalogs(potdir, language, pages)


def build(language: str) -> int:
    """Build the edition of ``language`` into _build/html/<folder>/ from the execution cache; the exit status."""
    folder = editions()[language]["folder"].strip("/")
    if not folder:
        raise ValueError(f"the edition {language} has no folder of its own in book_editions")
    work = BUILD / folder
    shutil.rmtree(work, ignore_errors=True)
    started = time.time()
    status = sphinx("html", work / "html", work / ".doctrees",
                    {"language": language, "nb_execution_cache_path": str((BUILD / ".jupyter_cache").resolve())},
                    strict=True)
    executed = executed_since(work, started)
    if executed:
        print(f"ERROR: the {language} build executed {', '.join(executed)}: it must take every chapter from "
              "the execution cache of the English build (run the English build first).", file=sys.stderr)
        status = status or 1
    target = BUILD / "html" / folder
    shutil.rmtree(target, ignore_errors=True)
    if (work / "html").is_dir():
        shutil.move(str(work / "html"), str(target))
    return status


def executed_since(work: Path, started: float) -> list[str]:
    """Pages whose notebook this build executed (rather than took from the cache), from MyST-NB's record."""
    import pickle

    environment = work / ".doctrees" / "environment.pickle"
    if not environment.is_file():
        return []
    with environment.open("rb") as handle:
        env = pickle.load(handle)
    return sorted(docname for docname, data in getattr(env, "nb_metadata", {}).items()
                  if (data.get("exec_data") or {}).get("mtime", 0) >= started)


# ---------------------------------------------------------------------------------------------------
# The glossary.

@dataclass
class Term:
    english: list[str]  # the English lines of the entry ("Batch normalization", "BatchNorm")
    chinese: str  # the Chinese term the book uses
    variants: list[str] = field(default_factory=list)  # other Chinese renderings, used only in the glossary

    @property
    def names(self) -> list[str]:
        """English lines that are names: the entry's short forms after its first line (BatchNorm, ICS, Fixup)
        and words written in CamelCase or capitals (Pre-LN, QK-norm). A translation may keep them as they are."""
        return [term for index, term in enumerate(self.english) if index or is_name(term)]


def is_name(term: str) -> bool:
    return " " not in term and bool(re.search(r"[A-Z]", term[1:]))


def glossary_terms(path: Path = GLOSSARY) -> list[Term]:
    """The entries of the glossary's ``{glossary}`` block."""
    text = path.read_text(encoding="utf-8")
    block = re.search(r"```\{glossary\}\n(.*?)\n```", text, re.DOTALL)
    if not block:
        raise ValueError(f"{path} has no {{glossary}} block")
    terms = []
    for entry in re.split(r"\n\s*\n", block.group(1)):
        lines = [line.strip() for line in entry.splitlines() if line and not line[0].isspace()
                 and not line.startswith(":")]
        if not lines:
            continue
        english = [re.sub(r"\s*\(.*\)$", "", line) for line in lines if not CJK.search(line)]
        chinese = [line for line in lines if CJK.search(line)]
        if english and chinese:
            terms.append(Term(english, chinese[0], chinese[1:]))
    return terms


def _term_pattern(term: str) -> re.Pattern:
    if is_name(term):
        return re.compile(rf"(?<![\w-]){re.escape(term)}(?![\w-])", re.IGNORECASE)
    # "mini-batch", "minibatch" and "mini batch" are one term; plurals count.
    body = r"[- ]?".join(re.escape(part) for part in re.split(r"[- ]", term))
    return re.compile(rf"(?<![\w-]){body}(?:s|es)?(?![\w-])", re.IGNORECASE)


def _same_term(a: str, b: str) -> bool:
    return re.sub(r"[- ]", "", a.lower()) in re.sub(r"[- ]", "", b.lower())


# ---------------------------------------------------------------------------------------------------
# Checking catalogs against the English.

@dataclass
class Message:
    page: str  # the catalog's domain: "chapters/05_jacobian_bounds", or "_generated"
    id: str
    line: int | None = None
    heading: bool = False


@dataclass
class Problem:
    page: str
    line: int | None
    english: str
    what: str
    translation: str = ""

    def __str__(self):
        where = source_path(self.page) + (f":{self.line}" if self.line else "")
        text = f"{where}: {self.what}\n    English: {_short(self.english)}"
        if self.translation:
            text += f"\n    Chinese: {_short(self.translation)}"
        return text


def _short(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def source_path(page: str) -> str:
    if page == GENERATED_DOMAIN:
        return f"locales/<language>/LC_MESSAGES/{GENERATED_DOMAIN}.po (text of scripts/sphinx_ext/*.py)"
    for suffix in SOURCE_SUFFIXES:
        if (REPO / f"{page}{suffix}").is_file():
            return f"{page}{suffix}"
    return page


def read_catalog(path: Path):
    from babel.messages.pofile import read_po

    with path.open("rb") as handle:
        return read_po(handle)


def english_messages(potdir: Path) -> dict[str, list[Message]]:
    """Every page's messages in document order, from the .pot files of :func:`extract`."""
    pages = {}
    for pot in sorted(Path(potdir).rglob("*.pot")):
        page = pot.relative_to(potdir).with_suffix("").as_posix()
        source_lines = None
        for suffix in SOURCE_SUFFIXES:
            if (REPO / f"{page}{suffix}").is_file():
                source_lines = (REPO / f"{page}{suffix}").read_text(encoding="utf-8").splitlines()
        messages = []
        for entry in read_catalog(pot):
            if not entry.id:
                continue
            line = next((number for filename, number in entry.locations if number), None)
            heading = bool(source_lines and line and line <= len(source_lines)
                           and source_lines[line - 1].lstrip().startswith("#"))
            messages.append(Message(page, entry.id, line, heading))
        pages[page] = messages
    return pages


def _role_targets(text: str) -> Counter:
    found = Counter()
    for name, content in ROLE.findall(text):
        target = re.search(r"<([^<>]+)>\s*$", content)
        if name.startswith("cite"):
            for key in content.split(","):
                found[(name, key.strip())] += 1
        else:
            found[(name, (target.group(1) if target else content).strip())] += 1
    return found


def _math(text: str) -> Counter:
    return Counter(" ".join(m.split()) for m in MATH.findall(ROLE.sub(" ", text)))


def _code(text: str) -> Counter:
    without = MATH.sub(" ", ROLE.sub(" ", text))
    return Counter(match.group(2).strip() for match in re.finditer(r"(`+)(.+?)\1", without))


def _links(text: str) -> Counter:
    return Counter(a or b for a, b in LINK_TARGET.findall(ROLE.sub(" ", text)))


def _numbers(text: str) -> Counter:
    prose = re.sub(r"<[^>]*>|\]\([^)]*\)", " ", prose_of(text))
    return Counter(re.findall(r"(?<![\w.])\d+(?:\.\d+)?", prose))


def _fields(text: str) -> Counter:
    # In a template a role is written "{{doc}}`...`", so every single-braced name is a field.
    return Counter(re.findall(r"(?<!\{)\{([A-Za-z_]\w*|\d*)(?:[!:][^{}]*)?\}(?!\})", text))


def _as_formatted(template: str) -> str:
    """A str.format template as it reads once formatted: each field a placeholder word, braces undoubled."""
    text = re.sub(r"(?<!\{)\{([A-Za-z_]\w*|\d*)(?:[!:][^{}]*)?\}(?!\})", lambda m: f"FIELD{m.group(1)}", template)
    return text.replace("{{", "{").replace("}}", "}")


def _only_names(text: str) -> bool:
    words = re.findall(r"[A-Za-z][\w'-]*", prose_of(text))
    return all(word[0].isupper() or not word.isalpha() for word in words)


def _exempt_terms(entry) -> set[str]:
    exempt = set()
    for comment in entry.user_comments:
        match = re.match(r"\s*not-a-term:\s*(.+)", comment)
        if match:
            exempt |= {term.strip().lower() for term in match.group(1).split(",")}
    return exempt


def check_message(message: Message, entry, terms: list[Term], generated: bool = False) -> list[str]:
    """What is wrong with the translation ``entry`` (a babel Message) of ``message``."""
    english, chinese = message.id, entry.string if entry is not None else ""
    if entry is None or not chinese.strip():
        return ["untranslated"]
    problems = []
    raw_english, raw_chinese = english, chinese
    if generated:
        # A template's roles, code spans and links are those of the text str.format makes of it: a field
        # followed by a backquote ("`{path}`") is not a role, "{{doc}}" is one.
        english, chinese = _as_formatted(english), _as_formatted(chinese)
    if entry.fuzzy:
        previous = " ".join(entry.previous_id) if entry.previous_id else ""
        problems.append("fuzzy: the English changed since this was translated; update the translation and "
                        "remove the '#, fuzzy' line" + (f" (the earlier English: {_short(previous, 200)})"
                                                         if previous else ""))
    if chinese == english and not _only_names(english):
        problems.append("the translation is the English text itself")
    # Roles, link targets and substitutions as often as in the English; math and code spans as a set
    # (a translation may name $i$ twice where the English says "it").
    for label, extract_tokens, as_set in (("math", _math, True), ("role", _role_targets, False),
                                          ("code", _code, True), ("link target", _links, False),
                                          ("substitution", lambda t: Counter(SUBSTITUTION.findall(t)), False)):
        want, got = extract_tokens(english), extract_tokens(chinese)
        if as_set:
            want, got = Counter(set(want)), Counter(set(got))
        if want != got:
            missing, extra = want - got, got - want
            parts = []
            if missing:
                parts.append(f"lost {_tokens(missing)}")
            if extra:
                parts.append(f"has {_tokens(extra)} that the English does not")
            problems.append(f"{label} changed: " + "; ".join(parts))
    if message.heading and re.match(r"\s*(?:\d+[.)]|[-*+>])\s", chinese):
        # The translation is parsed as Markdown on its own: "1. 发布" would be a list, not the heading's text.
        problems.append("a heading's translation that starts like a list item is parsed as a list and not "
                        "applied; escape it: '1\\. ...'")
    missing_numbers = _numbers(english) - _numbers(chinese)
    if missing_numbers:
        problems.append(f"numbers of the English missing from the translation: {_tokens(missing_numbers)}")
    if generated and _fields(raw_english) != _fields(raw_chinese):
        problems.append(f"template fields differ: English {sorted(_fields(raw_english))}, "
                        f"translation {sorted(_fields(raw_chinese))}")
    exempt = _exempt_terms(entry)
    english_prose, chinese_prose = prose_of(english), prose_of(chinese)
    for term in terms:
        used = [name for name in term.english
                if name.lower() not in exempt and _term_pattern(name).search(english_prose)]
        if used and term.chinese not in chinese_prose and not any(
                _term_pattern(name).search(chinese_prose) for name in term.names):
            kept = f" or {' / '.join(term.names)}" if term.names else ""
            problems.append(f"glossary: '{used[0]}' is translated '{term.chinese}'{kept} "
                            f"(or mark the message '# not-a-term: {used[0].lower()}')")
    return problems


def _tokens(counter: Counter) -> str:
    return ", ".join(repr(token if isinstance(token, str) else "{%s}`%s`" % token) for token in counter.elements())


def check_catalogs(potdir: Path, language: str, pages: list[str] | None = None) -> list[Problem]:
    """Every problem of the catalogs of ``language`` against the English messages extracted into ``potdir``."""
    terms = glossary_terms()
    problems = []
    english = english_messages(potdir)
    for page in sorted(english) if pages is None else pages:
        messages = english.get(page, [])
        po_path = catalog_dir(language) / f"{page}.po"
        catalog = read_catalog(po_path) if po_path.is_file() else None
        entries = {entry.id: entry for entry in catalog if entry.id} if catalog is not None else {}
        current = {message.id for message in messages}
        stale = [entry for msgid, entry in entries.items() if msgid not in current]
        generated = page == GENERATED_DOMAIN
        for message in messages:
            entry = entries.get(message.id)
            for what in check_message(message, entry, terms, generated):
                if what == "untranslated":
                    what = ("untranslated" if catalog is not None else
                            f"untranslated (no catalog {po_path.relative_to(REPO)})")
                    close = difflib.get_close_matches(message.id, [e.id for e in stale if e.string], n=1,
                                                      cutoff=0.6)
                    if close:
                        what += (f"; the catalog translates an earlier version of this sentence, which the English "
                                 f"no longer has: {_short(close[0], 200)!r} (run "
                                 "`python scripts/sphinx_ext/translations.py update`, fix the fuzzy translation)")
                problems.append(Problem(page, message.line, message.id, what,
                                        entry.string if entry is not None else ""))
        for entry in stale:
            problems.append(Problem(page, None, entry.id, "the catalog translates a sentence the English no longer "
                                    "has (run `python scripts/sphinx_ext/translations.py update`)", entry.string))
        if page not in (GENERATED_DOMAIN, "glossary"):
            problems += _check_page_terms(page, messages, entries, terms)
    return problems


def _check_page_terms(page: str, messages: list[Message], entries: dict, terms: list[Term]) -> list[Problem]:
    """Other renderings of a glossary term are not used; each concept is introduced as 中文（English） once."""
    problems = []
    introduced = set()
    for message in messages:
        entry = entries.get(message.id)
        if entry is None or not entry.string or entry.fuzzy:
            continue
        prose = prose_of(entry.string).replace("*", "")  # *内部协变量偏移*（internal covariate shift）
        for term in terms:
            for variant in term.variants:
                if variant in prose:
                    problems.append(Problem(page, message.line, message.id,
                                            f"glossary: '{variant}' is another rendering of '{term.english[0]}'; "
                                            f"the book writes '{term.chinese}'", entry.string))
            if message.heading or term.chinese in introduced:
                continue
            mentioned = term.chinese in prose or any(_term_pattern(name).search(prose) for name in term.names)
            if not mentioned:
                continue
            introduced.add(term.chinese)
            glosses = re.findall(re.escape(term.chinese) + r"\s*[（(]([^（）()]*)[）)]", prose)
            if not any(_same_term(english, gloss) for gloss in glosses for english in term.english):
                problems.append(Problem(page, message.line, message.id,
                                        f"glossary: the page's first use of '{term.english[0]}' must give the "
                                        f"English in parentheses: '{term.chinese}（{term.english[0]}）'",
                                        entry.string))
    return problems


def statistics(language: str) -> dict[str, tuple[int, int]]:
    """Per catalog: (messages, translated and not fuzzy)."""
    stats = {}
    for po in sorted(catalog_dir(language).rglob("*.po")):
        entries = [entry for entry in read_catalog(po) if entry.id]
        done = [entry for entry in entries if entry.string and not entry.fuzzy]
        stats[po.relative_to(catalog_dir(language)).with_suffix("").as_posix()] = (len(entries), len(done))
    return stats


# ---------------------------------------------------------------------------------------------------
# A work list for the translator: every untranslated or fuzzy message in one text file, and back.

WORK_ENTRY = re.compile(r"^### (\d+) (\S+)(?: FUZZY)?\n", re.MULTILINE)


def write_todo(language: str, path: Path, pages: list[str] | None = None) -> int:
    """Write the untranslated and fuzzy messages of ``language`` to ``path``; the number written.

    Each message is a block ``### N page [FUZZY]`` followed by its English (a fuzzy one also shows its
    old translation, on lines starting ``OLD:``). Replace each block's text by its translation (keep
    the ``### N page`` line, drop the English and ``OLD:`` lines) and run ``apply``.
    """
    blocks = []
    for po in sorted(catalog_dir(language).rglob("*.po")):
        page = po.relative_to(catalog_dir(language)).with_suffix("").as_posix()
        if pages and page not in pages:
            continue
        for entry in read_catalog(po):
            if entry.id and (not entry.string or entry.fuzzy):
                head = f"### {len(blocks) + 1} {page}{' FUZZY' if entry.fuzzy else ''}\n"
                old = "".join(f"OLD: {line}\n" for line in entry.string.splitlines()) if entry.fuzzy else ""
                blocks.append(head + old + entry.id + "\n")
    Path(path).write_text("\n".join(blocks), encoding="utf-8")
    index = Path(str(path) + ".json")
    index.write_text(json.dumps([block.split("\n", 1) for block in blocks], ensure_ascii=False), encoding="utf-8")
    return len(blocks)


def apply_todo(language: str, path: Path) -> int:
    """Put the translations written into a ``todo`` file into the catalogs; the number applied."""
    from sphinx_intl.catalog import dump_po

    original = {}
    for head, body in json.loads(Path(str(path) + ".json").read_text(encoding="utf-8")):
        number, page = WORK_ENTRY.match(head + "\n").groups()
        original[number] = (page, "\n".join(line for line in body.rstrip("\n").split("\n")
                                             if not line.startswith("OLD: ")))
    text = Path(path).read_text(encoding="utf-8")
    parts = WORK_ENTRY.split(text)
    by_page: dict[str, dict[str, str]] = {}
    for number, page, translation in zip(parts[1::3], parts[2::3], parts[3::3]):
        if number not in original or original[number][0] != page:
            raise ValueError(f"block ### {number} {page} is not in the work list {path}")
        english = original[number][1]
        translation = translation.strip("\n")
        if translation and translation != english:
            by_page.setdefault(page, {})[english] = translation
    applied = 0
    for page, translations in by_page.items():
        po = catalog_dir(language) / f"{page}.po"
        catalog = read_catalog(po)
        for entry in catalog:
            if entry.id in translations:
                entry.string = translations.pop(entry.id)
                entry.flags.discard("fuzzy")
                entry.previous_id = []
                applied += 1
        if translations:
            raise ValueError(f"{po}: no such message any more (run sync): {list(translations)[:1]}")
        dump_po(str(po), catalog, line_width=100, ignore_obsolete=True)
    return applied


# ---------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("sync", "update", "check", "stats", "build", "todo", "apply"):
        command = sub.add_parser(name)
        command.add_argument("--language", default=None, help="default: the first translated edition")
        if name in ("todo", "apply"):
            command.add_argument("file", type=Path, help="the work list (todo writes it, apply reads it)")
        if name in ("check", "sync", "todo"):
            command.add_argument("pages", nargs="*", help="only these pages (e.g. chapters/05_jacobian_bounds)")
    args = parser.parse_args(argv)
    language = args.language or translated_languages()[0]
    if args.command == "todo":
        print(f"{write_todo(language, args.file, args.pages or None)} messages to translate in {args.file}")
    elif args.command == "apply":
        print(f"{apply_todo(language, args.file)} translations applied; now run check")
    elif args.command == "update":
        print(update(language))
    elif args.command == "build":
        statuses = [build(language) for language in ([args.language] if args.language else translated_languages())]
        return max(statuses, default=0)
    elif args.command == "stats":
        stats = statistics(language)
        for page, (total, done) in stats.items():
            print(f"{page:<45} {done:>5} / {total:<5}")
        print(f"{'total':<45} {sum(d for _, d in stats.values()):>5} / {sum(t for t, _ in stats.values()):<5}")
    else:
        if args.command == "sync":
            problems = sync(language, args.pages or None)
        else:
            with tempfile.TemporaryDirectory() as potdir:
                problems = check_catalogs(extract(Path(potdir), locations=True), language, args.pages or None)
        for problem in problems:
            print(problem, end="\n\n")
        print(f"{len(problems)} problems")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

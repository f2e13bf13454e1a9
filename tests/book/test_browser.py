"""Every page of the built book, opened in headless Chromium, renders completely and offline.

For each page: no request leaves 127.0.0.1, no console error or uncaught exception, no same-origin
resource fails, every image decoded (naturalWidth > 0), every equation typeset by MathJax (an
mjx-container in each math element, no MathJax error, no raw `$$` or `\\begin` left in the visible
text), and every same-origin link answers HTTP 200 with its #anchor present. A full-page screenshot
of each page goes to _build/screenshots/ for a human to look at.

Chromium is Debian's /usr/bin/chromium (scripts/setup.sh --browser installs it); never
`playwright install`, which downloads a browser.
"""

import re
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import pytest

from book_site import BUILD, toc_pages

pytestmark = pytest.mark.book

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOTS = BUILD / "screenshots"
# Every page of the table of contents plus the two pages Sphinx generates.
PAGES = [f"{page}.html" for page in toc_pages()] + ["genindex.html", "search.html", "index.html"]
PAGE_TIMEOUT_MS = 60_000


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("The browser test needs Debian's Chromium at /usr/bin/chromium. Install it with "
                    "`bash scripts/setup.sh --browser` (as root: apt-get install chromium). "
                    "Do not use `playwright install`.", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                              headless=True)
        yield chromium
        chromium.close()


class _Anchors(HTMLParser):
    """Collects every id= and name= in a static HTML page (anchor targets)."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("id", "name") and value:
                self.names.add(value)


class LinkChecker:
    """HTTP status and anchors of same-origin URLs, fetched once per session."""

    def __init__(self):
        self._status = {}
        self._anchors = {}

    def status(self, url):
        if url not in self._status:
            try:
                with urllib.request.urlopen(url, timeout=20) as response:
                    self._status[url] = response.status
                    if response.headers.get_content_type() == "text/html":
                        parser = _Anchors()
                        parser.feed(response.read().decode("utf-8", "replace"))
                        self._anchors[url] = parser.names
            except urllib.error.HTTPError as error:
                self._status[url] = error.code
            except OSError as error:
                self._status[url] = repr(error)
        return self._status[url]

    def anchors(self, url):
        self.status(url)
        return self._anchors.get(url, set())


@pytest.fixture(scope="session")
def link_checker():
    return LinkChecker()


# Page-side checks, run after MathJax has finished and every image has settled.
SETTLE_JS = """
async () => {
  for (const img of document.images) { img.loading = 'eager'; }
  await Promise.all(Array.from(document.images).map(img => img.complete ? null :
      new Promise(done => { img.addEventListener('load', done); img.addEventListener('error', done); })));
  if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
    await window.MathJax.startup.promise;
  }
}
"""

INSPECT_JS = """
() => {
  const usesMathJax = Array.from(document.scripts).some(s => (s.src || '').includes('mathjax'));
  const mathNodes = Array.from(document.querySelectorAll('div.math, span.math'));
  const untypeset = mathNodes.filter(node => !node.querySelector('mjx-container'))
                             .map(node => node.textContent.trim().slice(0, 80));
  const mathErrors = Array.from(document.querySelectorAll('mjx-merror'))
                          .map(node => (node.getAttribute('data-mjx-error') || node.textContent).slice(0, 80));
  // MathJax's `noundefined` extension shows an unknown macro as red text instead of an error (CHTML
  // draws glyphs with CSS, so the macro's name is read from the assistive MathML copy).
  const undefinedMacros = Array.from(document.querySelectorAll('mjx-container mjx-mtext[style*="color: red"]'))
      .map(node => { const mml = node.closest('mjx-container').querySelector('mjx-assistive-mml mtext[mathcolor="red"]');
                     return mml ? mml.textContent : '(red text in an equation)'; });
  const brokenImages = Array.from(document.images).filter(img => !(img.complete && img.naturalWidth > 0))
                            .map(img => img.currentSrc || img.src || img.outerHTML.slice(0, 80));
  const article = document.querySelector('main') || document.body;
  const visible = article.cloneNode(true);
  visible.querySelectorAll('pre, code, script, style, mjx-container, .highlight, textarea')
         .forEach(node => node.remove());
  const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.href);
  const ids = Array.from(document.querySelectorAll('[id], [name]')).map(n => n.id || n.getAttribute('name'));
  return {usesMathJax, mathCount: mathNodes.length, untypeset, mathErrors, undefinedMacros, brokenImages,
          text: visible.innerText, links, ids,
          mathJaxReady: !usesMathJax || !!(window.MathJax && window.MathJax.startup &&
                                           window.MathJax.startup.document)};
}
"""

RAW_TEX = [
    ("$$", re.compile(r"\$\$")),
    ("\\begin{", re.compile(r"\\begin\{")),
    ("inline $...\\command...$", re.compile(r"\$[^$\n]{0,200}?\\[A-Za-z]+[^$\n]{0,200}?\$")),
]


@pytest.mark.parametrize("page_path", PAGES)
def test_page_renders_offline_and_completely(browser, site_url, link_checker, page_path):
    origin = urlparse(site_url).netloc
    problems = []
    context = browser.new_context(viewport={"width": 1280, "height": 900})

    def police(route):
        # Anything not served by our loopback server is recorded and refused.
        if urlparse(route.request.url).netloc != origin:
            problems.append(f"request left 127.0.0.1: {route.request.url}")
            route.abort()
        else:
            route.continue_()

    context.route("**/*", police)
    page = context.new_page()
    page.on("console", lambda message: message.type == "error" and problems.append(
        f"console error: {message.text} ({message.location.get('url', '')})"))
    page.on("pageerror", lambda error: problems.append(f"uncaught exception: {error}"))
    page.on("requestfailed", lambda request: urlparse(request.url).netloc == origin and problems.append(
        f"request failed: {request.url} ({request.failure})"))
    page.on("response", lambda response: response.status >= 400 and problems.append(
        f"HTTP {response.status}: {response.url}"))
    try:
        response = page.goto(site_url + page_path, wait_until="load", timeout=PAGE_TIMEOUT_MS)
        assert response is not None and response.ok, f"{page_path}: HTTP {response and response.status}"
        page.wait_for_load_state("networkidle", timeout=PAGE_TIMEOUT_MS)
        page.evaluate(SETTLE_JS)
        report = page.evaluate(INSPECT_JS)
        if page_path.startswith("chapters/") or page_path in {f"{p}.html" for p in toc_pages()}:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / page_path.replace("/", "__").replace(".html", ".png")),
                            full_page=True)
    finally:
        context.close()

    # Typesetting.
    if report["mathCount"]:
        assert report["usesMathJax"], f"{page_path} has math but loads no MathJax"
    problems += [f"math not typeset: {text!r}" for text in report["untypeset"]]
    problems += [f"MathJax error: {text!r}" for text in report["mathErrors"]]
    problems += [f"undefined TeX macro: {text}" for text in report["undefinedMacros"]]
    if not report["mathJaxReady"]:
        problems.append("MathJax did not start")
    for label, pattern in RAW_TEX:
        for match in pattern.finditer(report["text"]):
            problems.append(f"raw TeX ({label}) in visible text: {match.group(0)[:80]!r}")
    # Images.
    problems += [f"image not loaded: {src}" for src in report["brokenImages"]]
    # Same-origin links: HTTP 200 and the anchor exists.
    page_url = site_url + page_path
    own_ids = set(report["ids"])
    for href in sorted(set(report["links"])):
        parsed = urlparse(href)
        if parsed.scheme not in ("http", "https") or parsed.netloc != origin:
            continue  # external links are allowed as links; they are never loaded
        target, fragment = urldefrag(href)
        status = link_checker.status(target)
        if status != 200:
            problems.append(f"link {href} -> {status}")
            continue
        if fragment:
            anchor = unquote(fragment)
            same_page = target == urldefrag(urljoin(page_url, ""))[0]
            known = own_ids if same_page else link_checker.anchors(target)
            if anchor not in known and anchor not in link_checker.anchors(target):
                problems.append(f"link {href}: no element with id {anchor!r}")
    problems = list(dict.fromkeys(problems))  # the same failure seen by two listeners counts once
    assert not problems, f"{page_path}:\n  " + "\n  ".join(problems)


def test_every_built_page_is_opened_by_the_browser_test(built_site):
    built = {path.relative_to(built_site).as_posix() for path in built_site.rglob("*.html")
             if "_static" not in path.relative_to(built_site).parts}
    assert built <= set(PAGES), f"pages the browser test does not open: {sorted(built - set(PAGES))}"

"""Every page of the built book, opened in headless Chromium, renders completely and offline.

For each page: no request leaves 127.0.0.1, no console error or uncaught exception, no request of the
page fails (HTTP status 400 or more, a network error, or never finished; the browser's own favicon
request included), the favicon loads, one search box, every image decoded (naturalWidth > 0), every
equation typeset by MathJax (an mjx-container in each math element, no MathJax error, no raw `$$` or
`\\begin` left in the visible text), and every same-origin link answers HTTP 200 with its #anchor
present. A full-page screenshot of each page goes to _build/screenshots/ for a human to look at.
Each problem-set page's download link, clicked in the browser, delivers the committed release.

Every page exists in each edition (English at the root, the Chinese edition under zh/) and gets the
same checks; in addition each page declares its language (<html lang>) and has exactly one language
switch, which leads to the same page in the other edition (and, being a same-origin link, must answer
200). Screenshots of the Chinese pages need a CJK font (Debian's fonts-wqy-microhei, installed by
scripts/setup.sh --browser), or every character is a box.

Requests are watched through the Chrome DevTools Protocol (Network domain), not Playwright's request
events or routing: Chromium fetches the favicon outside the page's request pipeline, so Playwright
does not report that request, and with a route installed Chromium silently drops a failing favicon
request, which is how a missing favicon went unnoticed. Outside hosts are made unreachable by a proxy
that does not exist (Chromium bypasses proxies for loopback), so nothing is fetched from the network
while the test still sees, and fails on, every attempt.

Chromium is Debian's /usr/bin/chromium (scripts/setup.sh --browser installs it); never
`playwright install`, which downloads a browser.
"""

import re
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import pytest

from book_site import BUILD, editions, release_notebook, released_problem_sets, toc_pages

pytestmark = pytest.mark.book

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 # Every non-loopback request goes to a proxy on the discard port, where nothing listens,
                 # and fails (net::ERR_PROXY_CONNECTION_FAILED); 127.0.0.1 bypasses proxies implicitly.
                 "--proxy-server=http://127.0.0.1:9"]
SCREENSHOTS = BUILD / "screenshots"
# Every page of the table of contents plus the two pages Sphinx generates, in every edition.
EDITIONS = {language: edition["folder"].strip("/") for language, edition in editions().items()}
EDITION_PAGES = [f"{page}.html" for page in toc_pages()] + ["genindex.html", "search.html", "index.html"]
PAGES = [f"{folder}/{page}" if folder else page for folder in EDITIONS.values() for page in EDITION_PAGES]
PAGE_TIMEOUT_MS = 60_000
# After the page has settled, how long requests still in flight (the favicon's, say) may take to finish.
PENDING_REQUEST_TIMEOUT_S = 10
PROBLEM_SETS = released_problem_sets()


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
  // Search controls a reader sees around the content (search.html has its own form in <main>).
  const searchControls = Array.from(document.querySelectorAll(
      '.search-button-field, button.search-button, form.bd-search, input[type="search"]'))
      .filter(el => !el.closest('dialog') && !el.closest('main'))
      .filter(el => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden')
      .filter((el, _, all) => !all.some(other => other !== el && other.contains(el)))
      .map(el => (el.closest('[id]') || {}).id || el.className);
  const icons = Array.from(document.querySelectorAll('link[rel~="icon"]')).map(link => link.href);
  // A parts table wider than its scroll container hides columns behind a scroll bar.
  const overflowingTables = Array.from(document.querySelectorAll('table.problem-set-parts'))
      .filter(table => table.scrollWidth > table.parentElement.clientWidth + 1)
      .map(table => `${table.scrollWidth}px in ${table.parentElement.clientWidth}px`);
  const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.href);
  const languageSwitch = Array.from(document.querySelectorAll('a.language-switch'))
      .filter(a => a.getClientRects().length > 0).map(a => [a.href, a.hreflang]);
  const ids = Array.from(document.querySelectorAll('[id], [name]')).map(n => n.id || n.getAttribute('name'));
  return {usesMathJax, mathCount: mathNodes.length, untypeset, mathErrors, undefinedMacros, brokenImages,
          text: visible.innerText, links, ids, searchControls, icons, overflowingTables, languageSwitch,
          lang: document.documentElement.lang,
          mathJaxReady: !usesMathJax || !!(window.MathJax && window.MathJax.startup &&
                                           window.MathJax.startup.document)};
}
"""

# Loads each icon the page declares as an image; the request shows up in the network record too.
ICON_JS = """
async (hrefs) => Promise.all(hrefs.map(href => new Promise(done => {
  const img = new Image();
  img.onload = () => done([href, img.naturalWidth > 0]);
  img.onerror = () => done([href, false]);
  img.src = href;
})))
"""

RAW_TEX = [
    ("$$", re.compile(r"\$\$")),
    ("\\begin{", re.compile(r"\\begin\{")),
    ("inline $...\\command...$", re.compile(r"\$[^$\n]{0,200}?\\[A-Za-z]+[^$\n]{0,200}?\$")),
]


class NetworkRecord:
    """Every request of one page, from the DevTools Protocol: what left 127.0.0.1, what failed, what is pending.

    A request that a navigation cut short (index.html redirects to the root page, abandoning the
    redirect page's favicon request) belongs to a document the reader never sees: it does not count as
    failed, but an error status it received still does.
    """

    def __init__(self, context, page, origin):
        self.origin, self.problems = origin, []
        self.requests = {}  # request id -> (url, loader id)
        self.pending, self.failed, self.main_frame, self.document_loader = set(), [], None, None
        session = context.new_cdp_session(page)
        session.on("Network.requestWillBeSent", self._sent)
        session.on("Network.responseReceived", self._response)
        session.on("Network.loadingFinished", lambda event: self.pending.discard(event["requestId"]))
        session.on("Network.loadingFailed", self._failed)
        session.send("Network.enable")

    def _sent(self, event):
        url = event["request"]["url"]
        self.requests[event["requestId"]] = (url, event.get("loaderId"))
        if event.get("type") == "Document" and self.main_frame in (None, event.get("frameId")):
            self.main_frame, self.document_loader = event.get("frameId"), event.get("loaderId")
        parsed = urlparse(url)
        if parsed.scheme in ("http", "https", "ws", "wss"):
            self.pending.add(event["requestId"])
            if parsed.netloc != self.origin:
                self.problems.append(f"request left 127.0.0.1: {url}")

    def _response(self, event):
        status = event["response"]["status"]
        if status >= 400:
            self.problems.append(f"HTTP {status}: {event['response']['url']}")

    def _failed(self, event):
        self.pending.discard(event["requestId"])
        self.failed.append((event["requestId"], event["errorText"], event.get("canceled", False)))

    def _abandoned(self, request_id):
        return self.requests.get(request_id, ("", None))[1] != self.document_loader

    def finish(self, page):
        """Wait for requests still in flight, then return every problem seen."""
        deadline = time.monotonic() + PENDING_REQUEST_TIMEOUT_S
        while self.pending and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        problems = list(self.problems)
        problems += [f"request failed: {self.requests.get(request_id, ('?',))[0]} ({error})"
                     for request_id, error, canceled in self.failed
                     if not (canceled and self._abandoned(request_id))]
        problems += [f"request never finished: {self.requests[request_id][0]}" for request_id in sorted(self.pending)
                     if not self._abandoned(request_id)]
        return problems


def _edition_of(page_path):
    """(language, folder, the page's path within its edition) of a site path."""
    for language, folder in reversed(EDITIONS.items()):  # the root edition last: it matches everything
        if not folder or page_path.startswith(folder + "/"):
            return language, folder, page_path[len(folder) + 1:] if folder else page_path
    raise AssertionError(page_path)


@pytest.mark.parametrize("page_path", PAGES)
def test_page_renders_offline_and_completely(browser, site_url, link_checker, page_path):
    origin = urlparse(site_url).netloc
    problems = []
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    network = NetworkRecord(context, page, origin)
    page.on("console", lambda message: message.type == "error" and problems.append(
        f"console error: {message.text} ({message.location.get('url', '')})"))
    page.on("pageerror", lambda error: problems.append(f"uncaught exception: {error}"))
    try:
        response = page.goto(site_url + page_path, wait_until="load", timeout=PAGE_TIMEOUT_MS)
        assert response is not None and response.ok, f"{page_path}: HTTP {response and response.status}"
        page.wait_for_load_state("networkidle", timeout=PAGE_TIMEOUT_MS)
        page.evaluate(SETTLE_JS)
        report = page.evaluate(INSPECT_JS)
        icons = page.evaluate(ICON_JS, report["icons"])
        network_problems = network.finish(page)
        if _edition_of(page_path)[2] in {f"{p}.html" for p in toc_pages()}:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / page_path.replace("/", "__").replace(".html", ".png")),
                            full_page=True)
    finally:
        context.close()
    problems = network_problems + problems

    # The edition: the page's language, and one switch to the same page in the other edition.
    language, folder, in_edition = _edition_of(page_path)
    if report["lang"] != language.replace("_", "-"):
        problems.append(f"<html lang={report['lang']!r}>, expected {language.replace('_', '-')!r}")
    if in_edition != "index.html":  # the redirect to the root page
        expected = sorted((urljoin(site_url, f"{other}/{in_edition}" if other else in_edition), lang.replace("_", "-"))
                          for lang, other in EDITIONS.items() if lang != language)
        if sorted(map(tuple, report["languageSwitch"])) != expected:
            problems.append(f"language switch {report['languageSwitch']}, expected {expected}")
    # The favicon: declared (else Chromium asks for /favicon.ico), served from here, and an image.
    if not report["icons"]:
        problems.append("no <link rel=icon>: the browser requests /favicon.ico, which the site does not have")
    problems += [f"favicon {href} is not served from 127.0.0.1" for href in report["icons"]
                 if urlparse(href).netloc != origin]
    problems += [f"favicon {href} does not load as an image" for href, loaded in icons if not loaded]
    # One search box around the page (pydata-sphinx-theme once added a second one in a header bar).
    if len(report["searchControls"]) != 1:
        problems.append(f"{len(report['searchControls'])} search boxes, expected 1: {report['searchControls']}")
    problems += [f"parts table wider than the page: {text}" for text in report["overflowingTables"]]
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


def test_a_cjk_font_is_installed_for_the_screenshots():
    import subprocess

    families = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True).stdout.strip()
    assert families, ("no CJK font: the Chinese pages' screenshots would show boxes. "
                      "Install one with `bash scripts/setup.sh --browser` (apt-get install fonts-wqy-microhei)")


def test_every_built_page_is_opened_by_the_browser_test(built_site):
    built = {path.relative_to(built_site).as_posix() for path in built_site.rglob("*.html")
             if "_static" not in path.relative_to(built_site).parts}
    assert built <= set(PAGES), f"pages the browser test does not open: {sorted(built - set(PAGES))}"


@pytest.mark.parametrize("name", PROBLEM_SETS)
def test_problem_set_page_downloads_the_committed_release(browser, site_url, name):
    """Click the page's download link as a reader would: the file saved is exercises/<name>/<name>.ipynb."""
    context = browser.new_context(accept_downloads=True)
    try:
        page = context.new_page()
        response = page.goto(f"{site_url}problem_sets/{name}.html", wait_until="load", timeout=PAGE_TIMEOUT_MS)
        assert response is not None and response.ok, f"problem_sets/{name}.html: HTTP {response and response.status}"
        # Sphinx's download role: <a class="reference download internal" download href="../_downloads/...">
        link = page.locator(f'a.download[href$="/{name}.ipynb"]')
        assert link.count() == 1, (f"problem_sets/{name}.html has {link.count()} download links to {name}.ipynb, "
                                   "expected 1 (the problem-set-download directive)")
        with page.expect_download(timeout=PAGE_TIMEOUT_MS) as started:
            link.click()
        download = started.value
        assert download.failure() is None, f"download of {name}.ipynb failed: {download.failure()}"
        assert download.suggested_filename == f"{name}.ipynb", download.suggested_filename
        data = Path(download.path()).read_bytes()
    finally:
        context.close()
    release = release_notebook(name).read_bytes()
    assert data == release, (f"{name}.ipynb downloaded from the page ({len(data)} bytes) differs from the "
                             f"committed release exercises/{name}/{name}.ipynb ({len(release)} bytes)")

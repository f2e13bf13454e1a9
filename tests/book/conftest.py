"""Fixtures for the book tests: one strict build per test session, the built site served on loopback.

The build is the README's (scripts/build_book.sh): every chapter executed (or taken from
_build/.jupyter_cache when its code is unchanged), `jupyter-book build . -W -n --keep-going`.
It runs once per session; with pytest-xdist every worker shares that one build (a lock and a stamp
keyed by the run's id), so no worker wipes _build/html while another is reading it.
"""

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import pytest

from book_site import BUILD, BUILD_TIMEOUT_SECONDS, HTML, REPO, STAMP


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "book: builds the Jupyter Book and checks it (strict build, headless Chromium)")


@dataclass
class BookBuild:
    returncode: int
    log: str
    seconds: float


def _run_id():
    # Shared by every xdist worker of one run; absent without xdist (then each session builds).
    return os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid-{os.getpid()}"


@pytest.fixture(scope="session")
def book_build():
    """Build the book once (strictly) and return the exit status, the log and the time it took."""
    BUILD.mkdir(exist_ok=True)
    with open(BUILD / ".book_test.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            stamp = json.loads(STAMP.read_text()) if STAMP.exists() else {}
            if stamp.get("run_id") != _run_id():
                env = dict(os.environ, BOOK_SKIP_SETUP="1")
                start = time.monotonic()
                try:
                    done = subprocess.run(
                        ["bash", "scripts/build_book.sh"], cwd=REPO, env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        timeout=BUILD_TIMEOUT_SECONDS)
                    returncode, output = done.returncode, done.stdout
                except subprocess.TimeoutExpired as expired:
                    returncode = -1
                    output = (expired.stdout or b"").decode("utf-8", "replace") if isinstance(
                        expired.stdout, bytes) else (expired.stdout or "")
                    output += f"\nBuild timed out after {BUILD_TIMEOUT_SECONDS} s."
                stamp = {"run_id": _run_id(), "returncode": returncode, "output": output,
                         "seconds": time.monotonic() - start}
                STAMP.write_text(json.dumps(stamp))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return BookBuild(stamp["returncode"], stamp["output"], stamp["seconds"])


@pytest.fixture(scope="session")
def built_site(book_build):
    """The _build/html folder, or a failure that shows the end of the build output.

    A build with warnings still produces every page (--keep-going); the browser checks then run on it
    too, so one run reports everything (test_book.py fails on the warnings themselves).
    """
    if not (HTML / "index.html").exists():
        pytest.fail("The book did not build; the end of scripts/build_book.sh's output:\n"
                    + book_build.log[-6000:], pytrace=False)
    return HTML


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def site_url(built_site):
    """Serve _build/html with `python -m http.server` on 127.0.0.1 and return its base URL."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
         "--directory", str(built_site)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(base + "index.html", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail(f"http.server did not start on {base}", pytrace=False)
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=10)

"""Suite-wide settings: deterministic property tests, one BLAS thread per worker."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

# Derandomized so that CI and a maintainer see the same examples; the examples still span the space.
settings.register_profile("course", derandomize=True, deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("course")


# With pytest-xdist (scripts/test.sh runs two workers), every test that needs the built book goes to ONE
# worker: it builds the book (scripts/build_book.sh, one session fixture) while the other worker runs
# the rest of the suite, instead of both waiting for the same build. Every other test is its own scope,
# so the rest is balanced test by test. (xdist's own --dist loadgroup cannot do this under pytest 9: it
# renames node ids through an attribute pytest no longer reads.)
BOOK_MODULES = ("tests/book/test_book.py", "tests/book/test_browser.py")


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class BookOnOneWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return "book" if nodeid.startswith(BOOK_MODULES) else nodeid

    return BookOnOneWorker(config, log)

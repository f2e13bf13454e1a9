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
# Likewise a module whose tests share one expensive module fixture (the red team grades all its hostile
# submissions in one batch) runs on one worker, so that batch is graded once.
BOOK_MODULES = ("tests/book/test_book.py", "tests/book/test_browser.py")
SHARED_FIXTURE_MODULES = ("tests/grading/test_redteam.py", "tests/grading/test_postgres.py")


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class SharedWorkOnOneWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            if nodeid.startswith(BOOK_MODULES):
                return "book"
            module = nodeid.split("::", 1)[0]
            return module if module in SHARED_FIXTURE_MODULES else nodeid

    return SharedWorkOnOneWorker(config, log)

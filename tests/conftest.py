"""Suite-wide settings: deterministic property tests, one BLAS thread per worker."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

# Derandomized so that CI and a maintainer see the same examples; the examples still span the space.
settings.register_profile("course", derandomize=True, deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("course")

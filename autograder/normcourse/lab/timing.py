r"""Timing several implementations fairly on a shared machine.

A benchmark that times implementation A for a while and then B for a while measures the machine's load
as much as the code: on a shared 2-core machine the load changes within seconds. :func:`median_times`
alternates the implementations within every repetition, so a change in load falls on all of them
alike, and reports the median, which ignores the repetitions a burst of load slowed down.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

__all__ = ["median_times"]


def median_times(functions: dict[str, Callable[[], object]], reps: int = 30, warmup: int = 2) -> dict[str, float]:
    r"""Median wall-clock time of each function, in milliseconds, the functions alternating.

    .. math::
        t_f = \operatorname{median}_{r = 1..R}\; t_{f,r}, \qquad
        \text{repetition } r \text{ runs } f_1, f_2, \dots, f_k \text{ once each, in order}

    Args:
        functions: name -> a callable taking no argument (e.g. a lambda closing over its inputs).
        reps: repetitions :math:`R`. Default: 30.
        warmup: untimed calls of each function first (allocator, caches, lazy initialization). Default: 2.

    Returns:
        name -> median time in milliseconds, in the order of ``functions``.

    Example:
        >>> times = median_times({"sum": lambda: sum(range(1000))}, reps=5)
        >>> list(times)
        ['sum']
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    for f in functions.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(reps):
        for name, f in functions.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}

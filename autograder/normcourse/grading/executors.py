"""Where grading tasks run: a local process pool, or a Dask distributed cluster. One interface.

The orchestrator (:mod:`normcourse.grading.autograde`) hands out one task per submission with
``submit(fn, task)`` and takes finished ones with ``wait_any(futures)``; both executors return
futures with ``.result()``. Neither is a sandbox: every worker grades learner code only inside the
sandbox (:mod:`normcourse.grading.host`), whatever carries the task there.

- :class:`LocalExecutor`: ``concurrent.futures.ProcessPoolExecutor`` with ``workers`` processes
  (started with ``spawn``: nothing of the orchestrator is inherited). A worker process keeps its
  sandboxes warm between submissions. If a worker process dies, the pool is rebuilt and the lost
  tasks come back as errors, which the orchestrator retries.
- :class:`DaskExecutor`: ``distributed.Client`` on a running cluster (``--scheduler tcp://HOST:PORT``,
  or a Dask configuration file naming one). Tasks are submitted with ``pure=False`` (the same task
  may need to run twice), ``retries=0`` (the orchestrator decides about retries, with the ledger),
  and Dask's own resilience handles a worker that dies mid-task: the scheduler re-runs the task
  elsewhere, up to ``distributed.scheduler.allowed-failures`` times, then reports ``KilledWorker``.
  Dask workers run tasks in daemonic processes, so grading starts its children with
  ``subprocess`` (never ``multiprocessing``), and workers should run one thread each
  (``dask worker --nthreads 1``): a worker process grades one submission at a time.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing

__all__ = ["LocalExecutor", "DaskExecutor", "make_executor", "WorkerLost"]


class WorkerLost(RuntimeError):
    """The process running a task died before it returned a result."""


def _worker_init() -> None:
    """In each local worker process: skip slow optional imports, stop sandboxes at exit."""
    import atexit

    from .startup import skip_unused_format_checkers
    from .worker import close_hosts
    skip_unused_format_checkers()
    atexit.register(close_hosts)


class LocalExecutor:
    """A pool of ``workers`` local processes (see the module docstring)."""

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self._pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_worker_init)

    def submit(self, fn, *args):
        try:
            return self._pool.submit(fn, *args)
        except cf.process.BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(fn, *args)

    def wait_any(self, futures, timeout: float | None = None):
        done, _ = cf.wait(futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return done

    @staticmethod
    def outcome(future):
        """The future's result, or :class:`WorkerLost` if its process died."""
        try:
            return future.result()
        except cf.process.BrokenProcessPool as exc:
            raise WorkerLost(f"the worker process died ({exc})") from None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> str:
        return f"local pool of {self.workers} process(es)"


class DaskExecutor:
    """Tasks on a Dask distributed cluster (see the module docstring)."""

    def __init__(self, scheduler: str | None = None):
        from distributed import Client

        self.client = Client(scheduler) if scheduler else Client()  # None: the Dask config's scheduler
        self.scheduler = self.client.scheduler.address

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False, retries=0)

    def wait_any(self, futures, timeout: float | None = None):
        from distributed import wait
        try:
            done, _ = wait(list(futures), timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return set()
        return set(done)

    @staticmethod
    def outcome(future):
        from distributed import KilledWorker
        try:
            return future.result()
        except KilledWorker as exc:
            raise WorkerLost(f"the task's Dask worker died (each time it was tried): {exc}") from None

    def close(self) -> None:
        self.client.close()

    def describe(self) -> str:
        workers = self.client.scheduler_info().get("workers", {})
        return f"Dask cluster at {self.scheduler} ({len(workers)} worker(s))"


def make_executor(workers: int = 2, scheduler: str | None = None, dask: bool = False):
    """A :class:`DaskExecutor` if ``scheduler`` is given (or ``dask``), else a :class:`LocalExecutor`."""
    if scheduler or dask:
        return DaskExecutor(scheduler)
    return LocalExecutor(workers)

"""Caps for every process that runs learner code (the grading kernel and the re-check process).

The sandbox (:mod:`normcourse.grading.sandbox`) decides what learner code can *see*; these caps decide
how much it can *use*. They are applied with ``setrlimit`` inside the sandbox, in the forked child,
before any learner code runs (:func:`normcourse.grading.zygote.apply_rlimits`), and the zygote caps
itself first, so no child can ask for more:

- ``memory_mb`` (``RLIMIT_AS``): a memory bomb raises ``MemoryError`` in the learner's cell instead of
  waking the machine's OOM killer. 2 GiB leaves room for ``import torch`` (about 1 GiB of address
  space) and small experiments.
- ``cpu_seconds`` (``RLIMIT_CPU``): a backstop behind the wall-clock limits (per cell, per notebook,
  per re-check call), which the grader enforces from outside.
- ``file_mb`` (``RLIMIT_FSIZE``): no single file larger than this.
- ``processes`` (``RLIMIT_NPROC``): threads and processes of the sandbox's user, so a fork bomb stops
  at this many. The sandbox runs as a user of its own when the grader is root, so the count is the
  sandbox's alone.
- ``scratch_mb``: size of the sandbox's private writable folders (a tmpfs: its working folder, home,
  ``/tmp``, ``/dev/shm``), so learner code cannot fill the disk.
- ``output_kb``: stdout/stderr/display text kept per cell; the rest is dropped with a note and the
  submission is flagged (the autograded notebook and the feedback stay small).
- ``notebook_seconds``: wall-clock budget for executing the whole notebook; cells the kernel does not
  reach within it are scored by the out-of-kernel re-check alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Limits", "apply_limits"]


@dataclass(frozen=True)
class Limits:
    """Caps for one learner process; see the module docstring. All are positive ints."""

    memory_mb: int = 2048
    cpu_seconds: int = 600
    file_mb: int = 64
    processes: int = 64
    scratch_mb: int = 512
    output_kb: int = 1024
    notebook_seconds: int = 180

    def rlimits(self) -> dict[str, int]:
        """The ``setrlimit`` caps as ``{RLIMIT name: value}`` (what the zygote applies)."""
        return {"RLIMIT_AS": self.memory_mb << 20, "RLIMIT_CPU": self.cpu_seconds,
                "RLIMIT_FSIZE": self.file_mb << 20, "RLIMIT_NPROC": self.processes}

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> "Limits":
        return cls(**(data or {}))


def apply_limits(limits: Limits) -> None:
    """Apply ``limits`` to this process (and so to everything it starts)."""
    from .zygote import apply_rlimits
    apply_rlimits(limits.rlimits())

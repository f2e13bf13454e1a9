"""Resource limits for untrusted learner code, and the kernel that applies them.

Learner code runs in two places during grading: the notebook's kernel (nbgrader's execution) and the
re-check sandbox (:mod:`normcourse.grading.sandbox`). Both get the same caps, applied with
``resource.setrlimit`` *inside* the child before any learner code runs:

- ``RLIMIT_AS`` (address space): a memory bomb raises ``MemoryError`` in the learner's cell instead of
  waking the machine's OOM killer. 2 GiB leaves room for ``import torch`` (about 1 GiB of address space
  measured here) and small experiments.
- ``RLIMIT_CPU``: a safety net behind the wall-clock time-outs (the kernel is interrupted per cell by
  nbgrader; the sandbox is killed by its parent).
- ``RLIMIT_FSIZE``: no single file larger than 64 MiB, so a learner loop cannot fill the disk.

The grading kernel is an ordinary kernelspec (``normcourse-grading``) whose argv is
``python -m normcourse.grading.kernel_launcher --memory-mb N -f {connection_file}``; it is written to a
private folder that the grader puts first on ``JUPYTER_PATH``, never installed system-wide.
"""

from __future__ import annotations

import json
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Limits", "apply_limits", "write_grading_kernelspec", "GRADING_KERNEL"]

GRADING_KERNEL = "normcourse-grading"


@dataclass(frozen=True)
class Limits:
    """Caps for one learner process.

    Attributes:
        memory_mb: address-space cap in MiB.
        cpu_seconds: CPU-time cap (a backstop; wall-clock limits are enforced by the parent).
        file_mb: largest file the process may write, in MiB.
    """

    memory_mb: int = 2048
    cpu_seconds: int = 600
    file_mb: int = 64

    def to_args(self) -> list[str]:
        """The command-line flags that :meth:`from_args` reads back: ``--memory-mb N --cpu-seconds N
        --file-mb N``."""
        return ["--memory-mb", str(self.memory_mb), "--cpu-seconds", str(self.cpu_seconds),
                "--file-mb", str(self.file_mb)]

    @classmethod
    def from_args(cls, args: list[str]) -> tuple[Limits | None, list[str]]:
        """The limits given as flags in ``args`` (missing ones at their defaults; None if no flag is
        there at all), and the other arguments, in order."""
        import argparse

        parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        for flag in ("--memory-mb", "--cpu-seconds", "--file-mb"):
            parser.add_argument(flag, type=int)
        known, rest = parser.parse_known_args(args)
        given = {k: v for k, v in vars(known).items() if v is not None}
        return (cls(**given) if given else None), rest


def apply_limits(limits: Limits) -> None:
    """Apply ``limits`` to the current process (and so to everything it starts)."""
    def cap(kind, value):
        soft, hard = resource.getrlimit(kind)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (value, value if hard == resource.RLIM_INFINITY else hard))

    cap(resource.RLIMIT_AS, limits.memory_mb << 20)
    cap(resource.RLIMIT_CPU, limits.cpu_seconds)
    cap(resource.RLIMIT_FSIZE, limits.file_mb << 20)


def write_grading_kernelspec(jupyter_dir: Path, limits: Limits = Limits(), zygote: str | None = None) -> str:
    """Write the resource-limited kernelspec under ``jupyter_dir/kernels``; return its name.

    Put ``jupyter_dir`` first on ``JUPYTER_PATH`` and set ``Execute.kernel_name`` to the returned name.
    With ``zygote`` (the socket of a :mod:`normcourse.grading.kernel_zygote` server), kernels are forked
    from it, with the same limits; otherwise each kernel is a fresh interpreter.
    """
    folder = Path(jupyter_dir) / "kernels" / GRADING_KERNEL
    folder.mkdir(parents=True, exist_ok=True)
    launcher = (["normcourse.grading.kernel_zygote", "stub", zygote] if zygote
                else ["normcourse.grading.kernel_launcher"])
    spec = {
        "argv": [sys.executable, "-m", *launcher, *limits.to_args(), "-f", "{connection_file}",
                 "--IPKernelApp.log_level=ERROR"],
        "display_name": "Python 3 (normcourse grading, resource-limited)",
        "language": "python",
        # glibc reserves up to 64 MiB of address space per thread arena; torch starts many threads, so
        # without this an address-space cap is spent on reservations, not data.
        "env": {"MALLOC_ARENA_MAX": "2"},
        "metadata": {"debugger": False},
    }
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1))
    return GRADING_KERNEL

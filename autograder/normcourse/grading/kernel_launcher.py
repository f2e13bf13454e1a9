"""``python -m normcourse.grading.kernel_launcher --memory-mb N [...] -f CONNECTION_FILE``.

Applies :class:`normcourse.grading.limits.Limits` to this process, then becomes an ordinary IPython
kernel (``ipykernel_launcher``), so every cell of the graded notebook runs under the caps.
"""

import argparse
import sys

from normcourse.grading.limits import Limits, apply_limits


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--memory-mb", type=int, default=Limits.memory_mb)
    parser.add_argument("--cpu-seconds", type=int, default=Limits.cpu_seconds)
    parser.add_argument("--file-mb", type=int, default=Limits.file_mb)
    known, rest = parser.parse_known_args()
    apply_limits(Limits(known.memory_mb, known.cpu_seconds, known.file_mb))
    from ipykernel import kernelapp
    sys.argv = [sys.argv[0]] + rest
    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()

"""``python -m normcourse.grading.kernel_launcher --memory-mb N [...] -f CONNECTION_FILE``.

Applies :class:`normcourse.grading.limits.Limits` to this process, then becomes an ordinary IPython
kernel (``ipykernel_launcher``), so every cell of the graded notebook runs under the caps.
"""

import sys

from normcourse.grading.limits import Limits, apply_limits


def main() -> None:
    limits, rest = Limits.from_args(sys.argv[1:])
    apply_limits(limits or Limits())
    from ipykernel import kernelapp
    sys.argv = [sys.argv[0]] + rest
    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()

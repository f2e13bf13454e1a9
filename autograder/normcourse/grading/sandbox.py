"""The sandbox every process that runs learner code lives in: bubblewrap (``bwrap``), configured here.

What a sandboxed process sees (:func:`bwrap_argv`):

- the system (``/usr``, ``/bin``, ``/lib*``, ``/etc``), the Python installation and the virtual
  environment, **read-only**; and, read-only, the course package (the grading kernel's hidden-test
  cells import it) or, for the out-of-kernel re-check, only the course modules a problem set hands to
  the learner (:mod:`normcourse.grading.rules`);
- one folder of the worker's bound at its own path: ``inbox/`` (read-only: the submission's data
  files) and ``ipc/`` (the kernel's ZeroMQ sockets, since the network is gone);
- private, size-capped tmpfs for ``/box`` (working folder and home), ``/tmp`` and ``/dev/shm``;
- a fresh ``/proc`` (its own PID namespace: it sees only its own processes, and everything in it dies
  with the sandbox) and a minimal ``/dev``;
- no network (its own network namespace with nothing but a loopback), no IPC or UTS sharing.

Not mounted at all: the course folder (source notebooks with solutions and hidden tests, the
gradebook, the ledger, other submissions, the grading work area), the worker's control sockets and
result files, and every home folder.

Who it runs as: started by root, bubblewrap sets the sandbox up with root's rights, then
``setpriv`` drops to a user id of the sandbox's own (allocated per worker on this machine, so
``RLIMIT_NPROC`` counts the sandbox's processes only), with no capabilities, an empty bounding set
and ``no_new_privs``. Started by anyone else, bubblewrap uses an unprivileged user namespace and the
process keeps the caller's user id outside (inside it is ``nobody``). :func:`availability` says
whether either works here; the grader refuses to run learner code without a sandbox unless told
``--no-sandbox``.

Example::

    ok, why = availability()
    argv = bwrap_argv(SandboxSpec(uid=allocate_uid().uid, shared=[ipc], read_only_shared=[inbox]),
                      [sys.executable, "-c", "print(1)"])
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SandboxSpec", "SandboxUnavailable", "bwrap_argv", "availability", "allocate_uid", "UidLease",
           "SANDBOX_TOOLS_DIR", "python_paths"]

#: Where the two standalone grading scripts (the zygote and the re-check child) are bound inside
#: every sandbox, so they run even where the course package itself is not mounted.
SANDBOX_TOOLS_DIR = "/opt/normcourse-sandbox"
#: System folders bound read-only (those that exist on this machine).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
#: Sandbox user ids when the grader is root: one per concurrently running sandbox host on the machine.
UID_BASE, UID_COUNT = 61000, 1000


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot start here; the message says why and what to do."""


@dataclass(frozen=True)
class SandboxSpec:
    """What one sandbox sees beyond the read-only system and Python.

    Attributes:
        uid: the user id to run as when the grader is root (see :func:`allocate_uid`); ignored otherwise.
        shared: host folders bound writable at their own path (the kernel's socket folder).
        read_only_shared: host folders bound read-only at their own path (the submission's files).
        course_package: the course package folder, bound read-only (None: not mounted).
        course_files: individual course files bound read-only at their own path, for a re-check that
            may import only the modules its problem set provides (their folders are created empty).
        hidden: host folders covered by an empty tmpfs (torch, for a numpy-only part).
        scratch_mb: size of each private tmpfs (``/box``, ``/tmp``, ``/dev/shm``).
        cache_dirs: more private tmpfs folders of that size (a font cache that outlives submissions).
        env: the process's whole environment (nothing of the grader's is inherited).
    """

    uid: int = 65534
    shared: tuple[Path, ...] = ()
    read_only_shared: tuple[Path, ...] = ()
    course_package: Path | None = None
    course_files: tuple[Path, ...] = ()
    hidden: tuple[Path, ...] = ()
    scratch_mb: int = 512
    cache_dirs: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)


def python_paths() -> list[str]:
    """The folders the interpreter needs: its installation and the virtual environment (if any),
    plus site-packages folders outside both."""
    paths = {sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        paths.add(sysconfig.get_paths()[key])
    # keep only outermost folders
    ordered = sorted(os.path.realpath(p) for p in paths if os.path.exists(p))
    outer: list[str] = []
    for p in ordered:
        if not any(p == o or p.startswith(o + os.sep) for o in outer):
            outer.append(p)
    prefix_links = [sys.prefix] if os.path.realpath(sys.prefix) != sys.prefix else []
    return outer + prefix_links


def _ancestors(path: str) -> list[str]:
    parts = Path(path).parts
    return [str(Path(*parts[:i])) for i in range(2, len(parts))]


def bwrap_argv(spec: SandboxSpec, command: list[str]) -> list[str]:
    """The ``bwrap`` command line that runs ``command`` in a sandbox described by ``spec``."""
    root = os.geteuid() == 0
    argv = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--new-session",
            "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "sandbox"]
    if root:  # privileged set-up, then setpriv drops to the sandbox's own user (below)
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user", "--disable-userns", "--uid", "65534", "--gid", "65534"]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    size = str(spec.scratch_mb << 20)
    made: set[str] = {"/", "/dev", "/proc"}
    for target in ("/box", "/tmp", "/dev/shm", *spec.cache_dirs):
        for folder in _ancestors(target):
            if folder not in made:
                argv.extend(["--perms", "0755", "--dir", folder])
                made.add(folder)
        argv += ["--perms", "01777", "--size", size, "--tmpfs", target]
        made.add(target)

    def parents(path: str) -> None:
        # bubblewrap (privileged) creates missing parents mode 0700: make them traversable
        for folder in _ancestors(path):
            if folder not in made:
                argv.extend(["--perms", "0755", "--dir", folder])
                made.add(folder)

    for folder in SYSTEM_DIRS:
        if os.path.exists(folder):
            argv += ["--ro-bind", folder, folder]
            made.add(folder)
    for folder in python_paths():
        parents(folder)
        argv += ["--ro-bind", folder, folder]
        made.add(folder)
    if spec.course_package is not None:
        parents(str(spec.course_package))
        argv += ["--ro-bind", str(spec.course_package), str(spec.course_package)]
    for path in spec.course_files:
        parents(str(path))
        argv += ["--ro-bind", str(path), str(path)]
    for path in spec.hidden:
        argv += ["--tmpfs", str(path), "--remount-ro", str(path)]
    tools = Path(__file__).parent
    parents(SANDBOX_TOOLS_DIR + "/x")
    for name in ("zygote.py", "recheck_child.py"):
        argv += ["--ro-bind", str(tools / name), f"{SANDBOX_TOOLS_DIR}/{name}"]
    for path in spec.read_only_shared:
        parents(str(path))
        argv += ["--ro-bind", str(path), str(path)]
    for path in spec.shared:
        parents(str(path))
        argv += ["--bind", str(path), str(path)]
    argv += ["--clearenv"]
    for key, value in spec.env.items():
        argv += ["--setenv", key, str(value)]
    argv += ["--chdir", "/box", "--"]
    if root:
        argv += [shutil.which("setpriv") or "/usr/bin/setpriv", f"--reuid={spec.uid}", f"--regid={spec.uid}",
                 "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    return argv + list(command)


@functools.lru_cache(maxsize=1)
def availability() -> tuple[bool, str]:
    """(True, "") if a sandbox can start on this machine, else (False, the reason and the fix)."""
    if not sys.platform.startswith("linux"):
        return False, f"the sandbox needs Linux (bubblewrap and namespaces); this is {sys.platform}"
    if shutil.which("bwrap") is None:
        return False, "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None and not os.path.exists("/usr/bin/setpriv"):
        return False, "setpriv (util-linux) is missing, so the sandbox cannot drop root"
    with tempfile.TemporaryDirectory(prefix="normcourse-probe-") as tmp:
        argv = bwrap_argv(SandboxSpec(uid=UID_BASE + UID_COUNT - 1, shared=(Path(tmp),)),
                          [sys.executable, "-I", "-c", "import os; print(os.getpid())"])
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"bubblewrap could not start: {exc}"
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        hint = ("" if os.geteuid() == 0 else
                " (unprivileged user namespaces may be disabled: sysctl kernel.unprivileged_userns_clone=1"
                " or user.max_user_namespaces > 0)")
        return False, f"bubblewrap failed: {why}{hint}"
    return True, ""


@dataclass
class UidLease:
    """A sandbox user id held for this process's lifetime (an flock on a lock file)."""

    uid: int
    _handle: object = None

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def allocate_uid(lock_dir: str | os.PathLike | None = None) -> UidLease:
    """A user id no other live sandbox host on this machine holds (only meaningful for root; others
    get their own uid, as unprivileged sandboxes cannot switch users)."""
    if os.geteuid() != 0:
        return UidLease(os.geteuid())
    folder = Path(lock_dir or os.path.join(tempfile.gettempdir(), "normcourse-sandbox-uids"))
    folder.mkdir(mode=0o700, exist_ok=True)
    for offset in range((os.getpid() * 7) % UID_COUNT, (os.getpid() * 7) % UID_COUNT + UID_COUNT):
        uid = UID_BASE + offset % UID_COUNT
        handle = open(folder / f"{uid}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return UidLease(uid, handle)
    raise SandboxUnavailable(f"all {UID_COUNT} sandbox user ids are in use on this machine")

"""A grading host: the sandboxes one worker process grades in, kept warm from one submission to the next.

One :class:`Host` per worker process and problem set (a local worker, a Dask worker, or the learner's
own ``normcourse check``). It owns a private folder and a set of zygotes
(:mod:`normcourse.grading.zygote`), each in its own sandbox (:mod:`normcourse.grading.sandbox`):

- the *kernel* zygote, which has ipykernel, numpy, the problem set's test modules (and torch where
  the notebooks import it) loaded, and forks one grading kernel per submission; it sees the course
  package (hidden-test cells import it) and the kernel's socket folder;
- one *re-check* zygote per rule set of the problem set's parts (:mod:`normcourse.grading.rules`),
  which forks the learner process of the out-of-kernel re-check; it sees neither the course package
  (except the modules the problem set provides) nor, for numpy-only parts, torch.

Between submissions, :meth:`Host.reset` has every zygote end every other process of its sandbox and
empty its scratch folders, and refills the read-only inbox with the next submission's data files:
nothing one submission started or wrote is there for the next.

Without a sandbox (``sandbox=False``: ``--no-sandbox``, or a learner's machine without bubblewrap),
the zygotes are ordinary processes with the same protocol; the import guard is then the only
enforcement of the rules, and background processes are ended by process group only.

Example::

    with Host("ps01_scopes", sandbox=True) as host:
        host.reset(submission_folder)
        kernel = host.kernelspec(jupyter_dir)          # a kernel name for nbclient / nbgrader
        child = host.start_recheck(rules_key)          # a re-check learner process
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from . import zygote as zygote_protocol
from .limits import Limits
from .sandbox import SANDBOX_TOOLS_DIR, SandboxSpec, SandboxUnavailable, allocate_uid, availability, bwrap_argv

__all__ = ["Host", "RecheckProcess", "KERNEL_NAME", "uses_torch", "kernel_preload", "IMPORTS_TORCH"]

KERNEL_NAME = "normcourse-grading"
#: An import of torch in a cell (a mere mention, as in "do not use torch", does not count).
IMPORTS_TORCH = re.compile(r"^[ \t]*(import[ \t]+torch|from[ \t]+torch[ \t.])", re.MULTILINE)
#: What every grading kernel imports: ipykernel, numpy, matplotlib's font list, the test modules.
BASE_KERNEL_PRELOAD = ["numpy", "ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell",
                       "IPython.core.interactiveshell", "matplotlib.font_manager", "matplotlib_inline.backend_inline",
                       "normcourse.reference", "normcourse.grading.compare", "normcourse.grading.parts"]
_TOOLS = Path(__file__).parent
_PACKAGE = _TOOLS.parent
#: Where matplotlib keeps its font list inside a sandbox (a tmpfs that outlives submissions; reset
#: empties it except the font list, which the zygote built once).
_MPL_DIR = "/opt/normcourse-cache/matplotlib"


def matplotlib_font_cache() -> Path:
    """A folder holding matplotlib's font list, built once per machine and user (a few seconds), which
    every sandbox copies instead of building it again."""
    import fcntl

    folder = Path("/var/tmp" if os.access("/var/tmp", os.W_OK) else tempfile.gettempdir()) / \
        f"normcourse-mplcache-{os.geteuid()}"
    folder.mkdir(mode=0o755, exist_ok=True)
    with open(folder.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not list(folder.glob("fontlist-*.json")):
            subprocess.run([sys.executable, "-I", "-c", "import matplotlib.font_manager"], check=False,
                           env={"MPLCONFIGDIR": str(folder), "PATH": os.environ.get("PATH", "")},
                           capture_output=True, timeout=300)
        for path in folder.iterdir():
            path.chmod(0o644 if path.is_file() else 0o755)
    return folder


def uses_torch(problem_set_source: Path) -> bool:
    """Whether a code cell of the problem set's source notebooks imports torch."""
    import nbformat

    for path in Path(problem_set_source).glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        if any(c.cell_type == "code" and IMPORTS_TORCH.search(c.source) for c in nb.cells):
            return True
    return False


def kernel_preload(problem_set: str, torch: bool) -> list[str]:
    """Modules the kernel zygote imports once: the base set, the problem set's test module, and
    torch (about 3 s here) only if the notebooks import it."""
    return BASE_KERNEL_PRELOAD + [f"normcourse.problems.{problem_set}"] + (["torch"] if torch else [])


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # does not import the module
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _module_files(modules) -> list[Path]:
    """Source files of course modules and of every package above them (their ``__init__.py``)."""
    files: set[Path] = set()
    for module in modules:
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            spec = importlib.util.find_spec(".".join(parts[:depth]))
            if spec is not None and spec.origin and spec.origin.endswith(".py"):
                files.add(Path(spec.origin))
    return sorted(files)


class _Zygote:
    """One zygote process (sandboxed or not) and the socket the worker reaches it on."""

    def __init__(self, host: "Host", key: str, config: dict, spec: SandboxSpec | None):
        self.key = key
        self.socket_path = str(host.control / f"{key}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        listener.bind(self.socket_path)
        listener.listen(64)
        script = f"{SANDBOX_TOOLS_DIR}/zygote.py" if spec is not None else str(_TOOLS / "zygote.py")
        command = [sys.executable, "-I", script, "serve", "--listen-fd", str(listener.fileno()),
                   "--config", json.dumps(config)]
        argv = bwrap_argv(spec, command) if spec is not None else command
        env = None if spec is not None else {**config["env"]}
        self.log = open(host.root / f"{key}.log", "ab")
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=self.log, stderr=self.log,
                                        pass_fds=[listener.fileno()], env=env, start_new_session=True)
        listener.close()  # the zygote has its copy; nobody else accepts on it

    def alive(self) -> bool:
        return self.process.poll() is None

    def request(self, message: dict, fds=()) -> tuple[socket.socket, dict]:
        return zygote_protocol.request(self.socket_path, message, fds)

    def reap(self) -> int:
        conn, reply = self.request({"kind": "reap"})
        conn.close()
        return int(reply.get("reaped", 0))

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()  # EOF: it kills its children and exits
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.log.close()


class RecheckProcess:
    """A re-check learner process: send pickled commands, read packed results, kill it."""

    def __init__(self, conn: socket.socket, pid: int, commands, results_fd: int, stderr_fd: int):
        self.conn, self.pid, self.commands, self.results_fd = conn, pid, commands, results_fd
        self._tail = bytearray()
        self._reader = threading.Thread(target=self._drain, args=(stderr_fd,), daemon=True)
        self._reader.start()

    def _drain(self, fd: int) -> None:
        with os.fdopen(fd, "rb", buffering=0) as stream:
            while chunk := stream.read(65536):
                self._tail = (self._tail + chunk)[-8192:]  # the last lines only: learner output is unbounded

    def stderr_tail(self) -> str:
        return self._tail.decode(errors="replace")

    def kill(self) -> None:
        """End the process: closing its zygote connection makes the zygote kill its process group."""
        for thing in (self.commands, self.conn):
            try:
                thing.close()
            except OSError:
                pass
        try:
            os.close(self.results_fd)
        except OSError:
            pass


class Host:
    """The sandboxes of one worker process for one problem set; see the module docstring.

    Args:
        problem_set: registry key of the problem set.
        sandbox: run learner code in bubblewrap (True), or as ordinary processes (False: only for
            ``--no-sandbox`` and a learner's own check).
        limits: caps of every learner process.
        torch: whether the notebooks import torch (preloaded by the kernel zygote and by re-check
            zygotes whose parts may use it).
    """

    def __init__(self, problem_set: str, *, sandbox: bool = True, limits: Limits = Limits(), torch: bool = False):
        if sandbox:
            ok, why = availability()
            if not ok:
                raise SandboxUnavailable(why)
        self.problem_set, self.sandbox, self.limits, self.torch = problem_set, sandbox, limits, torch
        self.uid = allocate_uid() if sandbox else None
        # Outside /tmp (a sandbox has a /tmp of its own) and short: Unix socket paths are limited to ~100 bytes.
        base = "/var/tmp" if os.access("/var/tmp", os.W_OK) else None
        self.root = Path(tempfile.mkdtemp(prefix="ncg-", dir=base))
        os.chmod(self.root, 0o711)
        self.control = self.root / "control"   # the zygotes' sockets: never mounted in a sandbox
        self.inbox = self.root / "inbox"       # the submission's data files, read-only inside
        self.ipc = self.root / "ipc"           # the kernel's ZeroMQ sockets
        self.control.mkdir(mode=0o700)
        self.inbox.mkdir(mode=0o755)
        self.ipc.mkdir(mode=0o700)
        if sandbox and os.geteuid() == 0:
            os.chown(self.ipc, self.uid.uid, self.uid.uid)
        self._zygotes: dict[str, _Zygote] = {}

    # -- zygotes --------------------------------------------------------------------------------------
    def _env(self, scratch: str, *, kernel: bool) -> dict:
        venv_bin = str(Path(sys.executable).parent)
        env = {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": f"{scratch}/home",
               "TMPDIR": "/tmp" if self.sandbox else f"{scratch}/tmp", "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MALLOC_ARENA_MAX": "2", "PYTHONDONTWRITEBYTECODE": "1", "NBGRADER_EXECUTION": "autograde",
               "MPLCONFIGDIR": _MPL_DIR if self.sandbox else str(self.root / "matplotlib")}
        if not kernel:
            env["MPLBACKEND"] = "Agg"
        if os.environ.get("NORMCOURSE_EXTRA_PROBLEMS"):  # a course's own problem modules
            env["NORMCOURSE_EXTRA_PROBLEMS"] = os.environ["NORMCOURSE_EXTRA_PROBLEMS"]
        return env

    def _start(self, key: str, preload: list[str], *, kernel: bool, course_files=(), hidden=()) -> _Zygote:
        scratch = "/box" if self.sandbox else str(self.root / f"scratch-{key}")
        wipe = ["/box", "/tmp", "/dev/shm", os.path.dirname(_MPL_DIR)] if self.sandbox else [scratch]
        if kernel:
            wipe.append(str(self.ipc))
        fonts = matplotlib_font_cache()
        config = {"seed": {str(fonts): _MPL_DIR if self.sandbox else str(self.root / "matplotlib")},
                  "preload": preload, "sys_path": [str(_PACKAGE.parent)], "env": self._env(scratch, kernel=kernel), "scratch": scratch, "wipe": wipe,
                  "keep": [f"{_MPL_DIR}/fontlist-"], "pid_namespace": self.sandbox,
                  "rlimits": self.limits.rlimits(),
                  "runner": None if kernel else (f"{SANDBOX_TOOLS_DIR}/recheck_child.py" if self.sandbox
                                                 else str(_TOOLS / "recheck_child.py"))}
        spec = None
        if self.sandbox:
            extra = _extra_problem_files()
            spec = SandboxSpec(uid=self.uid.uid, scratch_mb=self.limits.scratch_mb,
                               shared=(self.ipc,) if kernel else (), read_only_shared=(self.inbox, fonts, *extra),
                               course_package=_PACKAGE if kernel else None, course_files=tuple(course_files),
                               hidden=tuple(hidden), env=config["env"], cache_dirs=(os.path.dirname(_MPL_DIR),))
        else:
            Path(scratch).mkdir(exist_ok=True)
        zygote = _Zygote(self, key, config, spec)
        self._zygotes[key] = zygote
        return zygote

    def _zygote(self, key: str, **how) -> _Zygote:
        zygote = self._zygotes.get(key)
        if zygote is None or not zygote.alive():  # learner code may have killed it: start a fresh one
            if zygote is not None:
                zygote.close()
            zygote = self._start(key, **how)
        return zygote

    def kernel_zygote(self) -> _Zygote:
        return self._zygote("kernel", preload=kernel_preload(self.problem_set, self.torch), kernel=True)

    def recheck_zygote(self, hidden: dict, provided: tuple[str, ...]) -> _Zygote:
        """The zygote for parts whose forbidden modules are ``hidden`` (``{module: message}``)."""
        key = "recheck-" + "-".join(sorted(m.replace(".", "_") for m in hidden))
        torch_allowed = self.torch and "torch" not in hidden
        preload = ["numpy", "matplotlib.font_manager"] + (["torch", *provided] if torch_allowed else [])
        hide = [p for name in ("torch", "functorch") if name in hidden and (p := _package_dir(name))]
        return self._zygote(key, preload=preload, kernel=False, course_files=_module_files(provided), hidden=hide)

    # -- per submission -------------------------------------------------------------------------------
    def reset(self, submission: Path | None = None) -> None:
        """End everything the last submission left running, empty every scratch folder, and fill the
        inbox with ``submission``'s data files (everything but notebooks)."""
        for zygote in list(self._zygotes.values()):
            if zygote.alive():
                try:
                    zygote.reap()
                except (OSError, RuntimeError, ConnectionError):
                    zygote.close()  # unreachable: start afresh next time
        for item in self.inbox.iterdir():
            shutil.rmtree(item) if item.is_dir() else item.unlink()
        if submission is not None:
            for item in Path(submission).iterdir():
                if item.suffix == ".ipynb" or item.name.startswith("."):
                    continue
                if item.is_dir():
                    shutil.copytree(item, self.inbox / item.name, symlinks=False)
                elif item.is_file():
                    shutil.copy2(item, self.inbox / item.name)
        for path in self.inbox.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)

    def kernelspec(self, jupyter_dir: Path) -> str:
        """Write the grading kernelspec (its command is the zygote's stub) into ``jupyter_dir/kernels``
        and return its name; put ``jupyter_dir`` first on ``JUPYTER_PATH``."""
        zygote = self.kernel_zygote()
        folder = Path(jupyter_dir) / "kernels" / KERNEL_NAME
        folder.mkdir(parents=True, exist_ok=True)
        settings = {"inbox": str(self.inbox), "rlimits": self.limits.rlimits()}
        spec = {"argv": [sys.executable, "-I", str(_TOOLS / "zygote.py"), "stub", zygote.socket_path,
                         json.dumps(settings), "-f", "{connection_file}", "--IPKernelApp.log_level=ERROR"],
                "display_name": "Python 3 (normcourse grading sandbox)", "language": "python",
                "metadata": {"debugger": False}}
        (folder / "kernel.json").write_text(json.dumps(spec, indent=1))
        return KERNEL_NAME

    def kernel_manager_config(self) -> dict:
        """jupyter_client settings for grading kernels: ZeroMQ over Unix sockets in the shared folder
        (the sandbox has no network)."""
        return {"KernelManager": {"transport": "ipc", "ip": str(self.ipc / "kernel")}}

    def start_recheck(self, hidden: dict, provided: tuple[str, ...]) -> RecheckProcess:
        """Fork a re-check learner process in the sandbox for ``hidden`` modules."""
        zygote = self.recheck_zygote(hidden, provided)
        commands_r, commands_w = os.pipe()
        results_r, results_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        try:
            conn, reply = zygote.request({"kind": "recheck", "inbox": str(self.inbox),
                                          "rlimits": self.limits.rlimits()}, [commands_r, results_w, stderr_w])
        finally:
            for fd in (commands_r, results_w, stderr_w):
                os.close(fd)
        return RecheckProcess(conn, int(reply["pid"]), os.fdopen(commands_w, "wb"), results_r, stderr_r)

    def close(self) -> None:
        for zygote in self._zygotes.values():
            zygote.close()
        self._zygotes.clear()
        if self.uid is not None:
            self.uid.release()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Host":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _extra_problem_files() -> tuple[Path, ...]:
    """Problem-set modules outside the package (``NORMCOURSE_EXTRA_PROBLEMS``), mounted read-only."""
    from .parts import EXTRA_PROBLEMS_ENV
    return tuple(Path(p) for p in os.environ.get(EXTRA_PROBLEMS_ENV, "").split(os.pathsep) if p)

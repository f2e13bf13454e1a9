"""A warm fork server inside the sandbox: each grading kernel and each re-check process is a fork of it.

Starting Python, ipykernel and numpy costs about 0.5 s of CPU (torch: 3 s more), once per kernel.
A zygote imports them once, in the sandbox, then forks a child per request; the child is a separate
process that starts with the modules loaded and with nothing of any earlier child (no learner code
ever runs in the zygote itself). This file is standalone (standard library only at import time):
inside a re-check sandbox the course package does not exist, so it runs by path, from
:data:`normcourse.grading.sandbox.SANDBOX_TOOLS_DIR`.

Protocol, on a listening Unix socket the worker creates *outside* the sandbox and hands over as an
inherited file descriptor (learner code never sees it: the zygote closes it in every child and is
not dumpable, so ``/proc/<zygote>/fd`` and ptrace are closed to its children):

- ``{"kind": "kernel", ...}`` with the client's stdin/stdout/stderr: fork an IPython kernel; the
  zygote answers ``{"pid": N}``, later ``{"exit": code}``; if the client's connection closes, the
  kernel's process group is killed. The client is :func:`stub`, the kernelspec's command, which
  jupyter_client starts, signals and kills like any kernel process.
- ``{"kind": "recheck", ...}`` with (commands in, results out, stderr): fork a re-check child
  (:mod:`normcourse.grading.recheck_child`), answered the same way.
- ``{"kind": "reap"}``: end every other process of the sandbox (in its own PID namespace: every
  process but init and the zygote; outside one: each child's process group), empty the scratch
  folders, answer ``{"reaped": N}``. The worker calls it between submissions, so nothing one
  submission started or wrote survives into the next.

The zygote ends (killing its children) when its stdin, a pipe from the worker, reaches EOF.

Usage (by :mod:`normcourse.grading.host`)::

    python -I zygote.py serve --listen-fd 3 --config JSON    # in the sandbox
    python -I zygote.py stub SOCKET KERNEL_JSON -f CONNECTION_FILE [kernel args]   # the kernelspec
"""

import json
import os
import selectors
import signal
import socket
import struct
import sys

__all__ = ["apply_rlimits", "serve", "stub", "request", "REPLY_TIMEOUT"]

#: Seconds a client waits for the zygote to fork (it may still be importing torch).
REPLY_TIMEOUT = 120.0
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_HEADER = struct.Struct("!I")
_MAX_MESSAGE = 8 << 20
_PR_SET_DUMPABLE = 4


def apply_rlimits(rlimits: dict) -> None:
    """``setrlimit`` every ``{"RLIMIT_NAME": value}`` (a cap can only be lowered, never raised)."""
    import resource
    for name, value in rlimits.items():
        kind = getattr(resource, name)
        _soft, hard = resource.getrlimit(kind)
        value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
        resource.setrlimit(kind, (value, value))


def _set_dumpable(flag: bool) -> None:
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, int(flag), 0, 0, 0)
    except Exception:
        pass


# ---------------------------------------------------------------------------------------------- framing
def send(sock: socket.socket, message: dict, fds=()) -> None:
    data = json.dumps(message).encode()
    payload = _HEADER.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [payload], list(fds))
        sock.sendall(payload[sent:])
    else:
        sock.sendall(payload)


def _receive(sock: socket.socket, max_fds: int = 0):
    """One framed message (and any file descriptors sent with it); (None, []) at EOF."""
    buffer, fds = bytearray(), []
    while True:
        if len(buffer) >= _HEADER.size:
            size = _HEADER.unpack_from(buffer)[0]
            if size > _MAX_MESSAGE:
                raise ValueError("message too large")
            if len(buffer) >= _HEADER.size + size:
                return json.loads(buffer[_HEADER.size:_HEADER.size + size]), fds
        if max_fds and not fds:
            chunk, fds, _flags, _addr = socket.recv_fds(sock, 65536, max_fds)
        else:
            chunk = sock.recv(65536)
        if not chunk:
            if buffer:
                raise ValueError("connection closed mid-message")
            return None, fds
        buffer += chunk


def request(socket_path: str, message: dict, fds=(), timeout: float = REPLY_TIMEOUT) -> tuple[socket.socket, dict]:
    """Connect to a zygote, send ``message`` (with ``fds``), return the connection and the first reply."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    conn.connect(socket_path)
    send(conn, message, fds)
    reply, _ = _receive(conn)
    if reply is None:
        conn.close()
        raise ConnectionError("the zygote closed the connection without an answer")
    if "error" in reply:
        conn.close()
        raise RuntimeError(f"the zygote refused: {reply['error']}")
    return conn, reply


# ---------------------------------------------------------------------------------------------- the stub
def stub(argv: list) -> int:
    """The kernelspec's command: ask the zygote for a kernel, then stand in for it until it exits.

    ``argv``: ``SOCKET KERNEL_JSON -f CONNECTION_FILE [kernel args]``, where KERNEL_JSON holds what the
    host decided for this kernel (working folder, inbox, limits). Signals are forwarded to the
    kernel's process group (nbclient interrupts a cell that runs too long); if the stub is killed,
    the zygote sees the connection close and kills the kernel. There is no fallback: without its
    zygote there is no kernel (never an unsandboxed one).
    """
    socket_path, settings = argv[0], json.loads(argv[1])
    rest = list(argv[2:])
    connection_file = rest[rest.index("-f") + 1]
    extra = [a for i, a in enumerate(rest) if a != "-f" and (i == 0 or rest[i - 1] != "-f")]
    with open(connection_file) as f:
        connection = json.load(f)
    jupyter_env = {k: v for k, v in os.environ.items() if k.startswith("JPY_")}
    try:
        conn, reply = request(socket_path, {"kind": "kernel", "connection": connection, "argv": extra,
                                            "env": jupyter_env, **settings}, [0, 1, 2])
        int(reply["pid"])  # forked: from here the zygote tells us when it exits
    except (OSError, ValueError, KeyError, RuntimeError, ConnectionError) as exc:
        print(f"normcourse: no sandboxed kernel could be started: {exc}", file=sys.stderr)
        return 1

    def forward(signum, _frame):
        try:  # the zygote signals the kernel's process group (the stub cannot see into the sandbox)
            send(conn, {"signal": int(signum)})
        except OSError:
            pass

    for signum in _FORWARDED:
        signal.signal(signum, forward)
    conn.settimeout(None)
    while True:
        try:
            message, _ = _receive(conn)
        except (OSError, ValueError):
            message = None
        if message is None:  # the zygote is gone, and with it the kernel
            return 1
        if "exit" in message:
            code = int(message["exit"])
            return code if code >= 0 else 128 - code


# ---------------------------------------------------------------------------------------------- the zygote
def _preload(config: dict) -> dict:
    import importlib
    import importlib.util
    sys.path[:0] = config.get("sys_path", [])  # where the grader's own course package lives
    for source, target in config.get("seed", {}).items():  # e.g. matplotlib's font list, built once outside
        import shutil
        shutil.copytree(source, target, dirs_exist_ok=True)
    loaded = {}
    for name in config.get("preload", []):
        try:
            importlib.import_module(name)
        except Exception as exc:  # a child will meet the error itself
            print(f"zygote: could not preload {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    if config.get("runner"):
        spec = importlib.util.spec_from_file_location("normcourse_recheck_child", config["runner"])
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        loaded["runner"] = module
    return loaded


class _Child:
    """What the forked child must become (returned out of the serve loop, so no frame of the zygote's
    loop is left on the child's stack when learner code runs)."""

    def __init__(self, request: dict, fds: list, config: dict, loaded: dict):
        self.request, self.fds, self.config, self.loaded = request, fds, config, loaded

    def run(self) -> int:
        request, config = self.request, self.config
        os.setsid()
        _set_dumpable(True)  # the child may read its own /proc entries; the zygote stays closed
        env = dict(config.get("env", {}))
        env.update(request.get("env", {}))
        os.environ.clear()
        os.environ.update(env)
        for folder in ("work", "home", "tmp"):
            os.makedirs(os.path.join(config["scratch"], folder), exist_ok=True)
        cwd = os.path.join(config["scratch"], "work")
        _copy_inbox(request.get("inbox"), cwd)
        os.chdir(cwd)
        apply_rlimits(request.get("rlimits", {}))
        if "numpy.random" in sys.modules:  # a fresh interpreter seeds numpy's global generator from the OS
            sys.modules["numpy.random"].seed()
        if request["kind"] == "kernel":
            for target, fd in enumerate(self.fds[:3]):
                os.dup2(fd, target)
            for fd in self.fds:
                if fd > 2:
                    os.close(fd)
            path = os.path.join(config["scratch"], "kernel-connection.json")
            with open(path, "w") as f:
                json.dump(request["connection"], f)
            argv = ["-f", path, *request.get("argv", [])]
            if request.get("env", {}).get("JPY_PARENT_PID"):  # ipykernel read it in the zygote's environment
                argv.append(f"--IPKernelApp.parent_handle={int(request['env']['JPY_PARENT_PID'])}")
            sys.argv = ["ipykernel_launcher", *argv]
            from ipykernel import kernelapp
            kernelapp.launch_new_instance()
            return 0
        commands, results, err = self.fds[:3]
        devnull = os.open(os.devnull, os.O_RDWR)
        for target, fd in ((0, devnull), (1, err), (2, err)):
            os.dup2(fd, target)
        for fd in (devnull, err):
            if fd > 2:
                os.close(fd)
        return self.loaded["runner"].main(commands, results)


def _copy_inbox(inbox, target: str) -> None:
    """Copy the submission's data files (the inbox is read-only) into the child's working folder."""
    import shutil
    if inbox and os.path.isdir(inbox):
        for name in os.listdir(inbox):
            source = os.path.join(inbox, name)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(target, name), dirs_exist_ok=True)
            else:
                shutil.copy2(source, os.path.join(target, name))


def _kill_group(pid: int) -> None:
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
            return
        except OSError:
            continue


def _other_pids() -> list:
    me = os.getpid()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]


def _reap_namespace(children: dict) -> int:
    """Kill every other process of this PID namespace (repeat until none is left); count them."""
    import time
    killed = 0
    for _ in range(200):
        others = _other_pids()
        if not others:
            break
        killed = max(killed, len(others))
        try:
            os.kill(-1, signal.SIGKILL)  # every process we may signal, except init and ourselves
        except OSError:
            pass
        _collect(children)
        time.sleep(0.005)
    return killed


def _collect(children: dict) -> list:
    """Reap exited children; return [(connection, exit code)] of those that had a client."""
    done = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        conn = children.pop(pid, None)
        if conn is not None:
            done.append((conn, os.waitstatus_to_exitcode(status)))
    return done


def _wipe(folders: list, keep=()) -> None:
    """Empty the private scratch folders (learner code may have made them hard to delete), except
    paths that start with one of ``keep`` (and the folders leading to them, which are emptied)."""
    import shutil

    def force(func, path, _exc):
        try:
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            func(path)
        except OSError:
            pass

    def empty(folder: str) -> None:
        try:
            names = os.listdir(folder)
        except OSError:
            return
        for name in names:
            path = os.path.join(folder, name)
            if path.startswith(tuple(keep)):
                continue
            is_dir = os.path.isdir(path) and not os.path.islink(path)
            if is_dir and any(k.startswith(path + os.sep) for k in keep):
                empty(path)
            elif is_dir:
                shutil.rmtree(path, onerror=force)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass
    for folder in folders:
        empty(folder)


def serve(listen_fd: int, config: dict):
    """Serve requests until stdin reaches EOF; in a forked child, return the :class:`_Child` to run."""
    apply_rlimits(config.get("rlimits", {}))
    _set_dumpable(False)
    listener = socket.socket(fileno=listen_fd)
    loaded = _preload(config)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "child")
    selector.register(0, selectors.EVENT_READ, "stdin")
    children: dict = {}  # pid -> client connection
    owners: dict = {}    # client connection -> pid

    def finish(conn, code) -> None:
        if owners.pop(conn, None) is not None:
            selector.unregister(conn)
        try:
            send(conn, {"exit": code})
        except OSError:
            pass
        conn.close()

    while True:
        for key, _ in selector.select():
            if key.data == "accept":
                conn, _ = listener.accept()
                conn.settimeout(10)
                try:
                    message, fds = _receive(conn, max_fds=3)
                    if message is None:
                        raise ValueError("empty request")
                except (OSError, ValueError) as exc:
                    print(f"zygote: bad request: {exc}", file=sys.stderr)
                    conn.close()
                    continue
                if message.get("kind") == "reap":
                    for pid, client in list(children.items()):
                        _kill_group(pid)
                    count = _reap_namespace(children) if config.get("pid_namespace") else len(children)
                    for client, code in _collect(children):
                        finish(client, code)
                    for pid in list(children):  # outside a namespace: wait for the killed groups
                        try:
                            os.waitpid(pid, 0)
                        except ChildProcessError:
                            pass
                        finish(children.pop(pid), -9)
                    _wipe(config.get("wipe", [config["scratch"]]), config.get("keep", ()))
                    send(conn, {"reaped": count})
                    conn.close()
                    continue
                if message.get("kind") not in ("kernel", "recheck") or len(fds) != 3:
                    for fd in fds:
                        os.close(fd)
                    send(conn, {"error": "bad request"})
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:  # the child: drop everything of the zygote's, become what was asked
                    signal.set_wakeup_fd(-1)
                    for signum in (signal.SIGCHLD, *_FORWARDED):
                        signal.signal(signum, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                    selector.close()
                    listener.close()
                    for fd in (wake_r, wake_w):
                        os.close(fd)
                    for client in [conn, *owners]:
                        client.close()
                    os.close(0)
                    return _Child(message, fds, config, loaded)
                for fd in fds:
                    os.close(fd)
                conn.settimeout(None)
                children[pid], owners[conn] = conn, pid
                selector.register(conn, selectors.EVENT_READ, "client")
                try:
                    send(conn, {"pid": pid})
                except OSError:
                    pass
            elif key.data == "child":
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                for client, code in _collect(children):
                    finish(client, code)
            elif key.data == "stdin":
                if not os.read(0, 4096):
                    for pid in list(children):
                        _kill_group(pid)
                    if config.get("pid_namespace"):
                        _reap_namespace(children)
                    return None
            else:  # a client: a forwarded signal, or EOF (the client was killed or exited)
                conn = key.fileobj
                try:
                    message, _ = _receive(conn)
                except (OSError, ValueError):
                    message = None
                pid = owners.get(conn)
                if message is None:
                    if pid is not None:
                        _kill_group(pid)  # reaped on its SIGCHLD
                        owners.pop(conn)
                        selector.unregister(conn)
                elif "signal" in message and pid is not None:
                    try:
                        os.killpg(pid, int(message["signal"]))
                    except OSError:
                        pass


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["serve"]:
        listen_fd = int(args[args.index("--listen-fd") + 1])
        config = json.loads(args[args.index("--config") + 1])
        child = serve(listen_fd, config)
        return 0 if child is None else child.run()
    if args[:1] == ["stub"]:
        return stub(args[1:])
    print(__doc__.split("Usage")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""Pre-forked grading kernels: a warm "zygote" process forks each kernel instead of starting Python anew.

Starting an IPython kernel costs about 0.6 s of CPU here (the interpreter, ``ipykernel``, ``numpy``),
and nbgrader starts one per submission. A worker therefore starts one zygote: a single-threaded
process that imports those modules once and then waits on a Unix socket. Each kernel is a ``fork`` of
it, so it starts with the modules loaded but with no state of any earlier kernel (no learner code ever
runs in the zygote, and each fork is a separate process with its own memory).

jupyter_client still launches, signals and kills an ordinary process: the kernelspec's argv is this
module's light *stub* (standard library only, about 20 ms), which

1. connects to the zygote and sends its argv, environment, working directory and resource limits,
   with its stdin/stdout/stderr file descriptors;
2. gets the pid of the forked kernel, which then leads its own session, applies the
   :class:`~normcourse.grading.limits.Limits` and runs ``ipykernel`` with the stub's arguments;
3. forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT to the kernel's process group (nbgrader's interrupt on a cell
   time-out), and exits with the kernel's exit code when the zygote reports it, so a kernel that
   dies (``os._exit`` in learner code, a memory cap) is seen as dead by nbclient as usual.

If the stub is killed (SIGKILL cannot be forwarded), the zygote sees its connection close and kills the
kernel's process group. If the zygote goes away (its stdin, a pipe from the worker, reaches EOF), it
kills every kernel it forked. If the stub cannot reach the zygote before a kernel is forked, it falls
back to :mod:`normcourse.grading.kernel_launcher` (a fresh interpreter, as before), so a missing or
broken zygote costs time, never a grade.

Usage: ``python -m normcourse.grading.kernel_zygote serve SOCKET [--memory-mb N --cpu-seconds N
--file-mb N] [MODULE ...]`` (the zygote, capped itself), and
``python -m normcourse.grading.kernel_zygote stub SOCKET --memory-mb N --cpu-seconds N --file-mb N
-f CONNECTION_FILE [kernel args]`` (the kernelspec argv; see
:func:`normcourse.grading.limits.write_grading_kernelspec`).
"""

# Standard library only at module level: the stub is started once per kernel and must stay light.
import json
import os
import selectors
import signal
import socket
import struct
import sys

__all__ = ["serve", "stub", "CONNECT_TIMEOUT", "REPLY_TIMEOUT"]

#: Seconds the stub waits to connect to the zygote before it starts a fresh interpreter instead.
CONNECT_TIMEOUT = 5.0
#: Seconds the stub waits for the forked kernel's pid (the zygote may still be importing its modules).
REPLY_TIMEOUT = 60.0
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_HEADER = struct.Struct("!I")
_MAX_REQUEST = 4 << 20


def _send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    data = json.dumps(message).encode()
    payload = _HEADER.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [payload], list(fds))
        sock.sendall(payload[sent:])
    else:
        sock.sendall(payload)


def _receive_request(sock: socket.socket):
    """The stub's one framed request and the three file descriptors sent with it."""
    chunk, fds, _flags, _addr = socket.recv_fds(sock, 65536, 3)
    buffer = bytearray(chunk)
    while True:
        if len(buffer) >= _HEADER.size:
            size = _HEADER.unpack_from(buffer)[0]
            if size > _MAX_REQUEST:
                raise ValueError("request too large")
            if len(buffer) >= _HEADER.size + size:
                return json.loads(buffer[_HEADER.size:_HEADER.size + size]), fds
        more = sock.recv(65536)
        if not more:
            raise ValueError("the stub closed the connection mid-request")
        buffer += more


def _read_message(stream):
    """The next framed message from a socket's file object; None at EOF."""
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    data = stream.read(_HEADER.unpack(head)[0])
    return json.loads(data) if data else None


# ------------------------------------------------------------------------------------------------
# The stub (the process jupyter_client starts).

def _fresh_kernel(limits, kernel_args: list[str]) -> None:
    """Replace this process by an ordinary limited kernel (the path without a zygote)."""
    os.execv(sys.executable, [sys.executable, "-m", "normcourse.grading.kernel_launcher",
                              *limits.to_args(), *kernel_args])


def stub(argv: list[str]) -> int:
    """Ask the zygote for a kernel, then stand in for it until it exits; see the module docstring."""
    from normcourse.grading.limits import Limits  # standard library only, like this module

    socket_path = argv[0]
    limits, kernel_args = Limits.from_args(argv[1:])
    limits = limits or Limits()
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(CONNECT_TIMEOUT)
        conn.connect(socket_path)
        conn.settimeout(REPLY_TIMEOUT)
        _send(conn, {"argv": kernel_args, "env": dict(os.environ), "cwd": os.getcwd(),
                     "limits": vars(limits)}, [0, 1, 2])
        replies = conn.makefile("rb")
        pid = int(_read_message(replies)["pid"])
    except (OSError, ValueError, TypeError, KeyError):  # includes a missing reply (None)
        # No kernel was forked for us (or the zygote will kill it when this socket closes on exec).
        _fresh_kernel(limits, kernel_args)
        return 1  # not reached

    def forward(signum, _frame):
        try:
            os.killpg(pid, signum)
        except OSError:
            try:
                os.kill(pid, signum)
            except OSError:
                pass

    for signum in _FORWARDED:
        signal.signal(signum, forward)
    conn.settimeout(None)
    while True:
        try:
            message = _read_message(replies)
        except (OSError, ValueError):
            message = None
        if message is None:  # the zygote is gone: take the kernel down with us
            forward(signal.SIGKILL, None)
            return 1
        if "exit" in message:
            code = int(message["exit"])
            return code if code >= 0 else 128 - code


# ------------------------------------------------------------------------------------------------
# The zygote.

def _preload(modules: list[str]) -> None:
    import importlib
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a kernel will import it itself (and meet the error there)
            print(f"kernel zygote: could not preload {name}: {type(exc).__name__}: {exc}", file=sys.stderr)


def _become_kernel(request: dict, fds: list[int], inherited: list, inherited_fds: list[int]) -> None:
    """In the forked child: detach from the zygote, take the stub's streams and settings, run ipykernel."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for thing in inherited:
        try:
            thing.close()
        except Exception:
            pass
    for fd in inherited_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    os.setsid()
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    from normcourse.grading.limits import Limits, apply_limits
    apply_limits(Limits(**request["limits"]))
    if "numpy.random" in sys.modules:  # a fresh interpreter seeds numpy's global generator from the OS
        sys.modules["numpy.random"].seed()
    argv = list(request["argv"])
    if request["env"].get("JPY_PARENT_PID"):  # ipykernel read it at import time, in the zygote's environment
        argv.append(f"--IPKernelApp.parent_handle={int(request['env']['JPY_PARENT_PID'])}")
    sys.argv = ["ipykernel_launcher", *argv]
    from ipykernel import kernelapp
    kernelapp.launch_new_instance()


def _fork_kernel(request: dict, fds: list[int], inherited: list, inherited_fds: list[int]) -> int:
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        return pid
    code = 1
    try:
        _become_kernel(request, fds, inherited, inherited_fds)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        try:
            import atexit
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def serve(socket_path: str, modules: list[str], limits=None) -> int:
    """Listen on ``socket_path`` (listening before the imports, so early stubs wait instead of falling
    back), import ``modules``, then fork a kernel per request until stdin reaches EOF.

    With ``limits``, the zygote caps itself first, so no kernel it forks can get more, whatever a
    request asks for: learner code could otherwise connect to the socket and ask for an uncapped
    kernel. (A kernel's own caps come from its request and can only be lower.)
    """
    if limits is not None:  # a normcourse.grading.limits.Limits
        from normcourse.grading.limits import apply_limits
        apply_limits(limits)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    old_umask = os.umask(0o077)  # only this user may ask for kernels
    try:
        listener.bind(socket_path)
    finally:
        os.umask(old_umask)
    listener.listen(64)
    _preload(modules)

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    wake = open(wake_r, "rb", buffering=0)
    stdin = open(0, "rb", buffering=0, closefd=False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake, selectors.EVENT_READ, "child")
    selector.register(stdin, selectors.EVENT_READ, "stdin")
    kernels: dict[int, socket.socket] = {}  # pid -> the stub's connection
    owners: dict[socket.socket, int] = {}

    def reap() -> None:
        while kernels:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = kernels.pop(pid, None)
            if conn is None:
                continue
            if owners.pop(conn, None) is not None:
                selector.unregister(conn)
            try:
                _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
            except OSError:
                pass
            conn.close()

    running = True
    while running:
        for key, _ in selector.select():
            if key.data == "accept":
                conn, _ = listener.accept()
                conn.settimeout(10)
                try:
                    fds = []
                    request, fds = _receive_request(conn)
                    if len(fds) != 3:
                        raise ValueError("incomplete request")
                except (OSError, ValueError) as exc:
                    for fd in fds:
                        os.close(fd)
                    print(f"kernel zygote: bad request: {exc}", file=sys.stderr)
                    conn.close()
                    continue
                inherited = [listener, wake, stdin, selector, conn, *owners]
                pid = _fork_kernel(request, fds, inherited, [wake_w])
                conn.settimeout(None)
                kernels[pid], owners[conn] = conn, pid
                selector.register(conn, selectors.EVENT_READ, "stub")
                try:
                    _send(conn, {"pid": pid})
                except OSError:
                    pass  # the stub is gone; its EOF below kills the kernel
            elif key.data == "child":
                try:
                    while wake.read(512):
                        pass
                except (BlockingIOError, TypeError):
                    pass
                reap()
            elif key.data == "stdin":
                if not os.read(0, 4096):
                    running = False
            else:  # a stub: it only ever closes (it was killed, or exited)
                conn = key.fileobj
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
                if not data and conn in owners:
                    _kill_group(owners.pop(conn))  # reaped on its SIGCHLD
                    selector.unregister(conn)
    for pid in list(kernels):
        _kill_group(pid)
    listener.close()
    try:
        os.unlink(socket_path)
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) >= 2 and args[0] == "serve":
        from normcourse.grading.limits import Limits
        limits, modules = Limits.from_args(args[2:])
        return serve(args[1], modules, limits)
    if len(args) >= 2 and args[0] == "stub":
        return stub(args[1:])
    print(__doc__.split("Usage:")[1].strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

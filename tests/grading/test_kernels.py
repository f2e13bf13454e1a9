"""Grading kernels: forked from a worker's zygote (normcourse.grading.kernel_zygote) and managed without
idle waits (normcourse.grading.kernel_manager).

A forked kernel must behave like a fresh one where grading depends on it: its own session, the
resource caps, the client's environment and working directory, a fresh random seed, interrupts that
reach it, and an exit (or a kill) that the client sees. Without a zygote the stub must fall back to
a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from jupyter_client.manager import KernelManager

from normcourse.grading.kernel_manager import GradingKernelManager
from normcourse.grading.limits import GRADING_KERNEL, Limits, write_grading_kernelspec

pytestmark = pytest.mark.slow

LIMITS = Limits(memory_mb=1536, cpu_seconds=300, file_mb=32)


def _wait_until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def zygote(tmp_path):
    sock = str(tmp_path / "z.sock")
    process = subprocess.Popen([sys.executable, "-m", "normcourse.grading.kernel_zygote", "serve", sock,
                                "numpy", "numpy.random", "ipykernel.kernelapp"], stdin=subprocess.PIPE)
    assert _wait_until(lambda: os.path.exists(sock)), "the zygote never listened"
    yield process, sock
    if process.poll() is None:
        process.stdin.close()
        process.wait(timeout=10)


@pytest.fixture
def kernelspec_dir(tmp_path, monkeypatch):
    folder = tmp_path / "jupyter"
    monkeypatch.setenv("JUPYTER_PATH", str(folder))
    return folder


def _start(cwd: Path) -> tuple[KernelManager, object]:
    km = KernelManager(kernel_name=GRADING_KERNEL)
    km.start_kernel(cwd=str(cwd))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


def _run(kc, code: str, timeout: float = 30) -> tuple[str, str | None]:
    """stdout of ``code`` and the name of the exception it raised (None if none)."""
    out, error = [], None

    def hook(msg):
        nonlocal error
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            error = msg["content"]["ename"]
    kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    return "".join(out), error


def _stop(km, kc) -> None:
    kc.stop_channels()
    km.shutdown_kernel(now=True)


@pytest.fixture
def forked(zygote, kernelspec_dir, tmp_path):
    """A running kernel forked by ``zygote``: (manager, client)."""
    write_grading_kernelspec(kernelspec_dir, LIMITS, zygote=zygote[1])
    km, kc = _start(tmp_path)
    yield km, kc
    _stop(km, kc)


def test_forked_kernel_is_isolated_limited_and_configured_by_its_client(zygote, kernelspec_dir, tmp_path,
                                                                        monkeypatch):
    process, sock = zygote
    write_grading_kernelspec(kernelspec_dir, LIMITS, zygote=sock)
    monkeypatch.setenv("NORMCOURSE_TEST_MARK", "from-the-client")
    probe = ("import os, sys, resource\n"
             "preloaded = 'numpy' in sys.modules\n"
             "import numpy as np\n"
             "print(os.getppid(), os.getsid(0) == os.getpid(), resource.getrlimit(resource.RLIMIT_AS)[0],\n"
             "      resource.getrlimit(resource.RLIMIT_FSIZE)[0], os.environ.get('NORMCOURSE_TEST_MARK'),\n"
             "      os.getcwd(), preloaded, np.random.random())\n")
    seen = []
    for _ in range(2):
        km, kc = _start(tmp_path)
        try:
            out, error = _run(kc, probe)
        finally:
            _stop(km, kc)
        assert error is None, out
        seen.append(out.split())
    for ppid, leader, address_cap, file_cap, mark, cwd, preloaded, _draw in seen:
        assert int(ppid) == process.pid  # forked by the zygote, not started by the stub
        assert leader == "True"          # its own session: killpg reaches it and its children only
        assert int(address_cap) == LIMITS.memory_mb << 20
        assert int(file_cap) == LIMITS.file_mb << 20
        assert mark == "from-the-client"
        assert Path(cwd).resolve() == tmp_path.resolve()
        assert preloaded == "True"
    assert seen[0][-1] != seen[1][-1], "two forked kernels drew the same numpy random number"


def test_interrupt_reaches_the_forked_kernel(forked):
    km, kc = forked
    kc.execute("while True:\n    pass\n")
    time.sleep(0.5)
    km.interrupt_kernel()  # SIGINT to the stub's process group; the stub forwards it
    reply = kc.get_shell_msg(timeout=10)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    out, error = _run(kc, "print(6 * 7)")  # and the kernel goes on
    assert (out.strip(), error) == ("42", None)


def test_a_kernel_that_exits_is_seen_dead_with_its_exit_code(forked):
    km, kc = forked
    kc.execute("import os\nos._exit(3)\n")
    assert _wait_until(lambda: not km.is_alive()), "the client still sees a kernel that exited"
    assert km.provisioner.process.returncode == 3


def test_killing_the_stub_kills_its_kernel(forked):
    km, kc = forked
    out, _ = _run(kc, "import os\nprint(os.getpid())")
    kernel = psutil.Process(int(out))
    os.kill(km.provisioner.process.pid, signal.SIGKILL)  # what nbclient's kill does (SIGKILL cannot be forwarded)
    assert _wait_until(lambda: not kernel.is_running() or kernel.status() == psutil.STATUS_ZOMBIE)


def test_closing_the_zygote_kills_its_kernels_and_ends_it(zygote, forked):
    process, sock = zygote
    out, _ = _run(forked[1], "import os\nprint(os.getpid())")
    kernel = psutil.Process(int(out))
    process.stdin.close()
    assert process.wait(timeout=10) == 0
    assert not kernel.is_running() or kernel.status() == psutil.STATUS_ZOMBIE
    assert not os.path.exists(sock)


def test_without_a_zygote_the_stub_becomes_a_fresh_limited_kernel(kernelspec_dir, tmp_path):
    write_grading_kernelspec(kernelspec_dir, LIMITS, zygote=str(tmp_path / "no-such.sock"))
    km, kc = _start(tmp_path)
    try:
        out, error = _run(kc, "import os, sys, resource\n"
                              "print(os.getpid(), 'numpy' in sys.modules, resource.getrlimit(resource.RLIMIT_AS)[0])")
        pid, preloaded, address_cap = out.split()
        assert error is None
        assert int(pid) == km.provisioner.process.pid  # the stub exec'd the ordinary launcher
        assert preloaded == "False"
        assert int(address_cap) == LIMITS.memory_mb << 20
    finally:
        _stop(km, kc)


def test_grading_manager_never_loses_the_first_cells_output(kernelspec_dir, tmp_path):
    """The quick readiness check must still wait for IOPub: a lost subscription would drop output."""
    from nbclient import NotebookClient

    write_grading_kernelspec(kernelspec_dir, LIMITS)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('first')"),
                                         nbformat.v4.new_code_cell("print('second')")])
    for _ in range(8):
        run = nbformat.from_dict(nb)
        NotebookClient(run, kernel_name=GRADING_KERNEL, kernel_manager_class=GradingKernelManager,
                       shutdown_kernel="immediate", timeout=30).execute()
        assert [c.outputs[0]["text"] for c in run.cells] == ["first\n", "second\n"]


def test_grading_manager_reports_a_kernel_that_dies_at_start(tmp_path, monkeypatch):
    folder = tmp_path / "jupyter" / "kernels" / "dies"
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(
        '{"argv": ["%s", "-c", "import sys; sys.exit(1)", "{connection_file}"], "display_name": "dies",'
        ' "language": "python"}' % sys.executable)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))

    async def start():
        km = GradingKernelManager(kernel_name="dies")
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=20)
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="Kernel died before replying to kernel_info"):
        # in a thread of its own: earlier tests may leave this thread's event loop running
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, start()).result()
    assert time.monotonic() - started < 10


def test_a_request_cannot_raise_the_zygotes_own_caps(tmp_path, kernelspec_dir):
    """Learner code can reach the zygote's socket; a kernel it asks for must still be capped."""
    sock = str(tmp_path / "capped.sock")
    process = subprocess.Popen([sys.executable, "-m", "normcourse.grading.kernel_zygote", "serve", sock,
                                "--memory-mb", "1536", "--cpu-seconds", "300", "--file-mb", "32", "numpy"],
                               stdin=subprocess.PIPE)
    try:
        assert _wait_until(lambda: os.path.exists(sock))
        write_grading_kernelspec(kernelspec_dir, Limits(memory_mb=8192, cpu_seconds=3600, file_mb=1024), zygote=sock)
        km, kc = _start(tmp_path)
        try:
            out, error = _run(kc, "import resource\nprint(*(v for r in (resource.RLIMIT_AS, resource.RLIMIT_CPU,"
                                  " resource.RLIMIT_FSIZE) for v in resource.getrlimit(r)))")
        finally:
            _stop(km, kc)
        assert error is None, out
        # soft and hard: the request's larger caps were clamped to the zygote's (even for root)
        assert [int(v) for v in out.split()] == [1536 << 20, 1536 << 20, 300, 300, 32 << 20, 32 << 20]
    finally:
        process.stdin.close()
        process.wait(timeout=10)


def test_limits_travel_as_flags_between_processes():
    """Orchestrator -> worker -> zygote -> stub -> launcher all pass the caps as these flags."""
    limits = Limits(memory_mb=1000, cpu_seconds=20, file_mb=3)
    assert Limits.from_args(["numpy", *limits.to_args(), "-f", "k.json"]) == (limits, ["numpy", "-f", "k.json"])
    assert Limits.from_args(["--memory-mb=512", "--IPKernelApp.log_level=ERROR"]) == (
        Limits(memory_mb=512), ["--IPKernelApp.log_level=ERROR"])
    assert Limits.from_args(["numpy", "torch"]) == (None, ["numpy", "torch"])  # no flags: no caps given

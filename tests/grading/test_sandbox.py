"""The sandbox host (normcourse.grading.host, .sandbox, .zygote): what a grading kernel and a re-check
process can see and do, checked from inside and from outside.

Kernels are started the way nbclient starts them (jupyter_client's KernelManager on the host's
kernelspec: the zygote's stub, ZeroMQ over Unix sockets), so what holds here holds in grading.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from jupyter_client.manager import KernelManager

from grading_helpers import PROBLEM_SET, solution_nb
from normcourse.grading.host import KERNEL_NAME, Host
from normcourse.grading.limits import Limits
from normcourse.grading.sandbox import availability

pytestmark = pytest.mark.slow

LIMITS = Limits(memory_mb=1536, cpu_seconds=300, file_mb=32, processes=48, scratch_mb=64)
ROOT = os.geteuid() == 0


def test_the_sandbox_is_available_on_this_machine():
    """CI installs bubblewrap (scripts/setup.sh): grading there must really be sandboxed."""
    ok, why = availability()
    assert ok, why


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    submission = tmp_path_factory.mktemp("submission")
    (submission / "data.txt").write_text("the learner's own data file")
    (submission / f"{PROBLEM_SET}.ipynb").write_text("{}")
    with Host(PROBLEM_SET, sandbox=True, limits=LIMITS) as host:
        host.reset(submission)
        yield host


def _kernel(host, tmp_path, manager=KernelManager):
    jupyter = tmp_path / "jupyter"
    host.kernelspec(jupyter)
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(jupyter)
    try:
        km = manager(kernel_name=KERNEL_NAME, transport="ipc", ip=str(host.ipc / f"k{time.monotonic_ns()}"))
        start = km.start_kernel()
        if hasattr(start, "__await__"):
            import asyncio
            asyncio.run(start)
    finally:
        os.environ.pop("JUPYTER_PATH") if old is None else os.environ.__setitem__("JUPYTER_PATH", old)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    return km, kc


def _run(kc, code: str, timeout: float = 60) -> tuple[str, str | None]:
    out, error = [], None

    def hook(msg):
        nonlocal error
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            error = msg["content"]["ename"] + ": " + msg["content"]["evalue"]
    kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    return "".join(out), error


@pytest.fixture
def kernel(host, tmp_path):
    km, kc = _kernel(host, tmp_path)
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    host.reset(None)


INSIDE = """
import os, json, resource, socket, numpy
def visible(path):
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        return type(exc).__name__
try:
    socket.create_connection(('127.0.0.1', 22), timeout=1)
    network = 'open'
except OSError as exc:
    network = type(exc).__name__
print(json.dumps({
    'uid': os.getuid(), 'pid': os.getpid(), 'cwd': os.getcwd(), 'cwd_files': visible('.'),
    'home': os.environ.get('HOME'), 'root': visible('/'), 'course': visible(%r), 'network': network,
    'as': resource.getrlimit(resource.RLIMIT_AS)[0], 'nproc': resource.getrlimit(resource.RLIMIT_NPROC)[0],
    'grading': os.environ.get('NBGRADER_EXECUTION'), 'env': sorted(os.environ),
    'random': float(numpy.random.random()), 'pids': sorted(int(p) for p in os.listdir('/proc') if p.isdigit())}))
"""


def test_a_kernel_sees_only_its_own_folder_and_is_capped(host, kernel):
    course_root = str(Path(__file__).resolve().parents[2])
    out, error = _run(kernel[1], INSIDE % course_root)
    assert error is None, error
    seen = json.loads(out)
    if ROOT:
        assert seen["uid"] == 65534 or seen["uid"] >= 61000, seen["uid"]  # never root
    assert seen["cwd"] == "/box/work" and seen["cwd_files"] == ["data.txt"]  # the data file, no notebook
    assert seen["home"] == "/box/home"
    # of the course folder only the installed software is there (the venv, the package): no sources,
    # releases, grading area or configuration
    assert not {"solutions", "exercises", "grading", "nbgrader_config.py"} & set(seen["course"]), seen["course"]
    # the venv and the package are bound at their own path, so the course's top folder is there too
    assert Path(course_root).parts[1] in seen["root"] and "box" in seen["root"], seen["root"]
    assert seen["network"] in ("ConnectionRefusedError", "OSError")
    assert seen["as"] == LIMITS.memory_mb << 20 and seen["nproc"] == LIMITS.processes
    assert seen["grading"] == "autograde"
    assert not any(k.startswith(("NORMCOURSE_GRADING", "SSH", "AWS")) for k in seen["env"])
    assert max(seen["pids"]) < 100  # its own PID namespace


def test_every_kernel_draws_different_random_numbers(host, tmp_path):
    draws = []
    for i in range(2):
        km, kc = _kernel(host, tmp_path / str(i))
        out, _ = _run(kc, "import numpy; print(numpy.random.random())")
        draws.append(out)
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    host.reset(None)
    assert draws[0] != draws[1]


def test_an_interrupt_reaches_the_kernel(kernel):
    km, kc = kernel
    msg_id = kc.execute("import time\nfor _ in range(600):\n    time.sleep(0.1)")
    time.sleep(1.0)
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=20)
    assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["ename"] == "KeyboardInterrupt"


def test_a_kernel_that_exits_is_seen_dead_with_its_exit_code(host, tmp_path):
    km, kc = _kernel(host, tmp_path)
    kc.execute("import os; os._exit(3)")
    deadline = time.monotonic() + 20
    while km.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not km.is_alive()
    assert km.provisioner.process.returncode == 3
    kc.stop_channels()
    host.reset(None)


def test_killing_the_stub_kills_its_kernel(host, tmp_path):
    km, kc = _kernel(host, tmp_path)
    out, _ = _run(kc, "import os; print(os.getpid())")
    km.provisioner.process.kill()  # SIGKILL: nothing can be forwarded; the zygote must notice
    kc.stop_channels()
    # the kernel lives in the sandbox's PID namespace: look for it by its marker from outside
    marker = f"{host.ipc}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [p for p in psutil.process_iter(["cmdline"]) if "ipykernel_launcher" in " ".join(p.info["cmdline"] or [])
                 and marker in " ".join(p.info["cmdline"] or [])]
        if not alive:
            break
        time.sleep(0.1)
    assert not alive
    host.reset(None)


def test_reset_ends_background_processes_and_empties_the_scratch_folders(host, kernel):
    _, kc = kernel
    out, error = _run(kc, "import subprocess, sys, os\n"
                          "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)  # NC_BG'], "
                          "start_new_session=True)\n"
                          "open('/box/home/planted.py', 'w').write('x = 1')\n"
                          "open('/tmp/planted', 'w').write('x')\n"
                          "print('ok')")
    assert error is None and out.strip() == "ok"
    assert any("NC_BG" in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
    host.reset(None)
    assert not any("NC_BG" in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
    # a new kernel sees none of it
    km, kc2 = _kernel(host, Path(host.root) / "again")
    out, _ = _run(kc2, "import os; print(os.path.exists('/box/home/planted.py'), os.path.exists('/tmp/planted'))")
    assert out.strip() == "False False"
    kc2.stop_channels()
    km.shutdown_kernel(now=True)


def test_a_fork_bomb_stops_at_the_process_cap(kernel):
    _, kc = kernel
    out, error = _run(kc, "import os, time\nn = 0\nfor _ in range(500):\n    try:\n        pid = os.fork()\n"
                          "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(20)\n"
                          "        os._exit(0)\n    n += 1\nprint(n)")
    assert error is None, error
    assert int(out) < LIMITS.processes


def test_the_scratch_space_is_capped(kernel):
    _, kc = kernel
    out, error = _run(kc, "chunk = b'x' * (1 << 20)\nwritten = 0\ntry:\n"
                          "    with open('/box/work/big', 'wb') as f:\n        for _ in range(1000):\n"
                          "            f.write(chunk); f.flush(); written += 1\nexcept OSError as exc:\n"
                          "    print(written, type(exc).__name__)")
    written, kind = out.split()
    assert int(written) <= LIMITS.scratch_mb and kind == "OSError"


def test_without_its_zygote_there_is_no_kernel_at_all(host, tmp_path):
    """No fallback to an unsandboxed kernel: the stub fails, and jupyter_client says so."""
    jupyter = tmp_path / "jupyter"
    host.kernelspec(jupyter)
    spec = json.loads((jupyter / "kernels" / KERNEL_NAME / "kernel.json").read_text())
    spec["argv"][spec["argv"].index("stub") + 1] = str(tmp_path / "nobody-listens.sock")
    (jupyter / "kernels" / KERNEL_NAME / "kernel.json").write_text(json.dumps(spec))
    os.environ["JUPYTER_PATH"] = str(jupyter)
    try:
        km = KernelManager(kernel_name=KERNEL_NAME, transport="ipc", ip=str(host.ipc / "nokernel"))
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        with pytest.raises(RuntimeError, match="Kernel died before replying"):
            kc.wait_for_ready(timeout=20)
        kc.stop_channels()
    finally:
        os.environ.pop("JUPYTER_PATH")


def test_the_grading_client_never_loses_the_first_cells_output(host, tmp_path):
    from nbclient import NotebookClient
    from traitlets.config import Config

    from normcourse.grading.kernel_manager import GRADING_EXECUTION
    from normcourse.grading.worker import _jupyter_path

    jupyter = tmp_path / "jupyter"
    kernel = host.kernelspec(jupyter)
    for attempt in range(4):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('first')")])
        with _jupyter_path(jupyter):
            NotebookClient(nb, kernel_name=kernel, timeout=60, config=Config(host.kernel_manager_config()),
                           **GRADING_EXECUTION).execute()
        assert nb.cells[0].outputs[0]["text"] == "first\n", attempt
    host.reset(None)


def _ask(host, hidden: dict, program: str, function: str, rlimits: dict | None = None):
    """Run ``program`` in a re-check child of ``host`` (speaking its protocol directly, optionally asking
    for ``rlimits``) and return what ``function()`` returned, or its error."""
    import pickle

    from normcourse.grading.recheck_child import decode, unpack

    zygote = host.recheck_zygote(hidden, ())
    c_r, c_w = os.pipe()
    r_r, r_w = os.pipe()
    e_r, e_w = os.pipe()
    conn, _ = zygote.request({"kind": "recheck", "rlimits": rlimits or LIMITS.rlimits(), "inbox": str(host.inbox)},
                             [c_r, r_w, e_w])
    for fd in (c_r, r_w, e_w):
        os.close(fd)

    def send(message):
        data = pickle.dumps(message)
        os.write(c_w, len(data).to_bytes(4, "big") + data)

    def receive():
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            chunk = os.read(r_r, 1 << 20)
            assert chunk, "the child ended without answering"
            data += chunk
        return unpack(data[4:4 + int.from_bytes(data[:4], "big")])

    try:
        send({"program": [program], "cell_timeout": 10, "hidden": hidden, "provided": []})
        assert receive()[0]["kind"] == "ready"
        send({"call": {"key": "probe:0", "function": function, "args": (), "kwargs": {}, "inplace": (),
                       "state_of": (), "repeat": 1}})
        head, arrays = receive()
    finally:
        conn.close()
        for fd in (c_w, r_r, e_r):
            os.close(fd)
    return head["error"] if "error" in head else decode(head["value"], arrays)["results"][0]


def test_a_request_cannot_raise_the_zygotes_caps(host):
    value = _ask(host, {"torch": "no"}, "import resource\ndef cap():\n    return resource.getrlimit(resource.RLIMIT_AS)[0]",
                 "cap", rlimits={"RLIMIT_AS": 64 << 40})
    assert value == LIMITS.memory_mb << 20
    host.reset(None)


def test_the_recheck_process_sees_neither_the_course_package_nor_forbidden_modules(host):
    program = ("import os\ndef look():\n    found = []\n"
               "    for name in ('normcourse.reference', 'torch'):\n"
               "        try:\n            __import__(name)\n            found.append(name)\n"
               "        except ImportError as exc:\n            found.append(str(exc))\n"
               "    found.append(os.path.exists(%r))\n    return found") % str(Path(__file__).resolve().parents[2] / "autograder")
    reference, torch, package_dir = _ask(host, {"torch": "torch: rule no-torch", "normcourse": "course: rule no-course-code"},
                                         program, "look")
    assert "no-course-code" in reference and "no-torch" in torch
    assert package_dir is False  # not merely refused by the import hook: the files are not there
    host.reset(None)


def test_an_unsandboxed_host_grades_the_same_way(tmp_path):
    from normcourse.grading.recheck import recheck_notebook

    with Host(PROBLEM_SET, sandbox=False, limits=LIMITS) as plain:
        plain.reset(None)
        result = recheck_notebook(solution_nb(), PROBLEM_SET, plain, salt=5)
    assert all(p.passed for p in result.parts.values()), {k: v.message for k, v in result.parts.items()}

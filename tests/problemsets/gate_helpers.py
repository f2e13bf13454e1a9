"""Shared names of the problem-set gate: the sets come from the registry, never from a list of names."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The suite's view of the problem sets lives beside the grading tests (tests/grading/problem_notebooks.py).
sys.path.insert(0, str(REPO / "tests" / "grading"))
from problem_notebooks import course_problem_sets  # noqa: E402

#: Every registered problem set with a source notebook in solutions/ (a new set joins the gate by existing).
PROBLEM_SETS = course_problem_sets()


def notebook_of(folder: Path, problem_set: str) -> Path:
    return folder / problem_set / f"{problem_set}.ipynb"


_VALIDATE = """
import json, sys
from nbgrader.validator import Validator
from normcourse.grading.course import load_config
from pathlib import Path
result = Validator(config=load_config(Path(sys.argv[2])), invert=sys.argv[3] == "1").validate(sys.argv[1])
print(json.dumps(result))
"""


def validate_in_subprocess(path: Path, invert: bool) -> dict:
    """nbgrader's ``Validator().validate(path)`` in its own process (it sets environment variables,
    so concurrent calls in one process would race)."""
    import json
    import subprocess

    done = subprocess.run([sys.executable, "-c", _VALIDATE, str(path), str(REPO), "1" if invert else "0"],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def self_check_in_subprocess(path: Path) -> dict:
    """``normcourse check --json path`` as a learner runs it; the parsed report."""
    import json
    import subprocess

    done = subprocess.run([sys.executable, "-m", "normcourse.cli", "check", "--json", str(path)],
                          capture_output=True, text=True, timeout=900)
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"error": done.stdout[-1000:] + done.stderr[-2000:], "score": None, "max_score": None}

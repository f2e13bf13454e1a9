"""normcourse.reference keeps torch out of the numpy-only problem sets: its torch-based names
(attention, measurements) are imported on first access, and the modules of ps01-ps04 never import torch.

Each check runs in a fresh interpreter, because this test process has long imported torch."""

import subprocess
import sys

import pytest

NUMPY_ONLY = ["normcourse.reference", "normcourse.grading.problems.ps01_scopes",
              "normcourse.grading.problems.ps02_batchnorm_state", "normcourse.grading.problems.ps03_backward",
              "normcourse.grading.problems.ps04_jacobians"]


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.parametrize("module", NUMPY_ONLY)
def test_importing_does_not_import_torch(module):
    assert _run(f"import sys, {module}; print('torch' in sys.modules)") == "False"


def test_torch_based_names_are_imported_on_first_access():
    out = _run(
        "import sys, normcourse.reference as ref\n"
        "from normcourse.reference import internal_covariate_shift\n"
        "from normcourse.reference.measurements import internal_covariate_shift as direct\n"
        "from normcourse.reference.attention import attention_entropy\n"
        "assert internal_covariate_shift is direct and ref.attention_entropy is attention_entropy\n"
        "assert ref.measurements.landscape_probe is ref.landscape_probe\n"
        "assert {'per_layer_grad_norms', 'compare_placements', 'layer_groups'} <= set(dir(ref))\n"
        "print('torch' in sys.modules)")
    assert out == "True"


def test_unknown_names_still_raise_attribute_error():
    out = _run("import normcourse.reference as ref\n"
               "try:\n    ref.no_such_name\nexcept AttributeError as e:\n    print(e)")
    assert "no_such_name" in out


@pytest.mark.parametrize("problem_set", ["ps01_scopes", "ps02_batchnorm_state", "ps03_backward", "ps04_jacobians"])
def test_a_numpy_only_sets_hidden_test_does_not_import_torch(problem_set):
    """A hidden-test cell calls check_part, which imports only that set's module (not ps05/ps06's)."""
    out = _run("import sys\n"
               "from normcourse.grading.parts import get_part, parts_of\n"
               f"parts = parts_of({problem_set!r})\n"
               f"assert get_part({problem_set!r}, parts[0].grade_id) is parts[0]\n"
               "print('torch' in sys.modules)")
    assert out == "False"

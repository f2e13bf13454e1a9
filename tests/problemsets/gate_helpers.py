"""Shared names of the problem-set gate."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBLEM_SETS = ["ps01_scopes", "ps02_batchnorm_state", "ps03_backward", "ps04_jacobians",
                "ps05_optimization", "ps06_transformers"]


def notebook_of(folder: Path, problem_set: str) -> Path:
    return folder / problem_set / f"{problem_set}.ipynb"

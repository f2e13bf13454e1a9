"""nbgrader preprocessors the course adds to nbgrader's pipeline (configured, never patched in).

:class:`StderrIsNotFailure`: nbgrader scores a test cell 0 when it has *any* stderr output
(``nbgrader.utils.determine_grade``), so a correct answer that also emits a ``RuntimeWarning`` or a
library deprecation notice loses its points. This preprocessor runs after ``Execute`` and before
``SaveAutoGrades`` and turns stderr *stream* outputs of autograded test cells into plain display
outputs marked as stderr: the learner still sees the text, and the cell's grade now depends only on
whether it raised (an ``error`` output), as intended. It cannot turn a failure into a pass: failures
are error outputs, which it leaves alone.
"""

from __future__ import annotations

from nbformat.notebooknode import NotebookNode
from nbgrader import utils
from nbgrader.preprocessors import NbGraderPreprocessor

__all__ = ["StderrIsNotFailure", "AUTOGRADE_PREPROCESSORS", "demote_stderr"]


def demote_stderr(cell: NotebookNode) -> int:
    """Replace stderr streams of an autograded test cell by marked display outputs; return how many."""
    if cell.cell_type != "code" or not utils.is_grade(cell) or utils.is_solution(cell):
        return 0
    outputs, changed = [], 0
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream" and output.get("name") == "stderr":
            outputs.append(NotebookNode(output_type="display_data",
                                        data={"text/plain": "[stderr] " + output.get("text", "")},
                                        metadata={"normcourse": {"stream": "stderr"}}))
            changed += 1
        else:
            outputs.append(output)
    cell.outputs = outputs
    return changed


class StderrIsNotFailure(NbGraderPreprocessor):  # nbgrader's base: enabled by default
    """Keep stderr text visible in test cells without letting it zero the cell's grade."""

    def preprocess_cell(self, cell, resources, index):
        if demote_stderr(cell):
            self.log.info("Test cell %s wrote to stderr; shown, not counted as a failure",
                          cell.metadata.get("nbgrader", {}).get("grade_id"))
        return cell, resources


def _autograde_preprocessors() -> list:
    """nbgrader's default autograde pipeline with :class:`StderrIsNotFailure` before the grades are saved."""
    from nbgrader.converters.autograde import Autograde
    default = list(Autograde.class_traits()["autograde_preprocessors"].default())
    names = [p.__name__ for p in default]
    default.insert(names.index("SaveAutoGrades"), StderrIsNotFailure)
    return default


AUTOGRADE_PREPROCESSORS = _autograde_preprocessors()

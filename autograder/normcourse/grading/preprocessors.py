"""nbgrader preprocessors the course adds to nbgrader's pipeline (configured, never patched in).

:class:`SandboxedExecute`: nbgrader's ``Execute`` with three limits nbgrader does not have. A
notebook-wide time budget (each cell's timeout is the smaller of the per-cell limit and what is left
of the budget; once it is spent, the remaining cells are not run); a cap on each cell's output
(stdout, stderr and display data beyond ``output_kb`` are dropped with a note in the cell, so 200 MB
of printing cannot make a 200 MB autograded notebook); and a kernel that dies (``os._exit`` in learner
code, a memory cap) ends the execution instead of the whole autograde: the remaining cells are
marked not run. Every cell it did not run carries ``metadata.normcourse.not_run`` (the reason), and
every cell it truncated ``metadata.normcourse.output_truncated`` (bytes dropped); the worker scores
not-run cells by the out-of-kernel re-check alone and flags truncation.

:class:`StderrIsNotFailure`: nbgrader scores a test cell 0 when it has *any* stderr output
(``nbgrader.utils.determine_grade``), so a correct answer that also emits a ``RuntimeWarning`` or a
library deprecation notice loses its points. This preprocessor runs after ``Execute`` and before
``SaveAutoGrades`` and turns stderr *stream* outputs of autograded test cells into plain display
outputs marked as stderr: the learner still sees the text, and the cell's grade now depends only on
whether it raised (an ``error`` output), as intended. It cannot turn a failure into a pass: failures
are error outputs, which it leaves alone.
"""

from __future__ import annotations

import json
import time

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode
from nbgrader import utils
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Integer

__all__ = ["SandboxedExecute", "StderrIsNotFailure", "AUTOGRADE_PREPROCESSORS", "demote_stderr", "mark_not_run"]


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


def mark_not_run(cell: NotebookNode, reason: str) -> None:
    """Record that the kernel did not run ``cell``, and why (an error output, so it scores 0 in kernel)."""
    cell.outputs = [NotebookNode(output_type="error", ename="NotRun", evalue=reason,
                                 traceback=[f"NotRun: {reason}"])]
    cell.execution_count = None
    cell.metadata.setdefault("normcourse", {})["not_run"] = reason


def _size(out: NotebookNode) -> int:
    if out.get("output_type") == "stream":
        return len(out.get("text", ""))
    return len(json.dumps(out.get("data", {}))) + len(json.dumps(out.get("traceback", [])))


class SandboxedExecute(Execute):
    """nbgrader's Execute with a notebook time budget, an output cap and survival of a dead kernel."""

    notebook_seconds = Integer(180, help="Wall-clock budget for executing the whole notebook.").tag(config=True)
    output_kb = Integer(1024, help="Output kept per cell (text and data), in KiB.").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        self._started = time.monotonic()
        self._stopped: str | None = None
        self._kept: dict[int, int] = {}
        return super().preprocess(nb, resources, km)

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        left = self.notebook_seconds - (time.monotonic() - self._started)
        if self._stopped is None and left <= 0:
            self._stopped = f"the notebook's time budget of {self.notebook_seconds} s was used up before this cell"
        if self._stopped is not None:
            mark_not_run(cell, self._stopped)
            return cell, resources
        self.timeout_func = lambda _cell: max(1, int(min(self.timeout or left, left) + 0.999))
        try:
            return super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            self._stopped = "the kernel died in an earlier cell (does the code exit the process or exhaust memory?)"
            mark_not_run(cell, "the kernel died while running this cell")
            cell.metadata["normcourse"]["kernel_died"] = True
            return cell, resources
        except CellTimeoutError as exc:  # nbclient gives up on the cell's output: it failed, the rest goes on
            cell.outputs.append(NotebookNode(output_type="error", ename="CellTimeoutError",
                                             evalue=str(exc).splitlines()[0], traceback=[str(exc).splitlines()[0]]))
            return cell, resources

    def output(self, outs, msg, display_id, cell_index):
        out = super().output(outs, msg, display_id, cell_index)
        if out is None:
            return out
        kept = self._kept.get(cell_index, 0) + _size(out)
        self._kept[cell_index] = kept
        limit = self.output_kb << 10
        if kept > limit:
            outs.remove(out)
            meta = self.nb.cells[cell_index].metadata.setdefault("normcourse", {})
            if "output_truncated" not in meta:
                outs.append(NotebookNode(output_type="stream", name="stdout",
                                         text=f"\n[normcourse: output beyond {self.output_kb} KiB in this cell "
                                              f"was dropped]\n"))
            meta["output_truncated"] = meta.get("output_truncated", 0) + _size(out)
            return None
        return out


def _autograde_preprocessors() -> list:
    """nbgrader's default autograde pipeline with :class:`SandboxedExecute` in place of Execute and
    :class:`StderrIsNotFailure` before the grades are saved."""
    from nbgrader.converters.autograde import Autograde
    default = list(Autograde.class_traits()["autograde_preprocessors"].default())
    names = [p.__name__ for p in default]
    default[names.index("Execute")] = SandboxedExecute
    default.insert(names.index("SaveAutoGrades"), StderrIsNotFailure)
    return default


AUTOGRADE_PREPROCESSORS = _autograde_preprocessors()

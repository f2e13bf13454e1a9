"""What learner code may not use for a part: forbidden shortcuts, as data.

Each :class:`~normcourse.grading.parts.Part` lists the :class:`Rule` objects it is graded under
(``Part(..., forbid=(NO_TORCH,))``); :data:`NO_COURSE_CODE` applies to every part. A rule names the
modules it takes away and says why, in words a learner can act on.

How the rules are enforced (see :mod:`normcourse.grading.recheck`): the out-of-kernel re-check calls
the learner's functions in a process where the forbidden modules *do not exist*: inside the sandbox
their files are not mounted (the course package) or are covered by an empty folder (torch), and an
import hook turns the attempt into an ``ImportError`` whose message names the rule. The learner's
program runs statement by statement there, so a forbidden ``import torch`` at the top of a cell
costs only what uses it, and a part that fails after such an attempt says which rule was broken.
Parts of one problem set with different rules are re-checked in separate processes (one per rule
set), so a part that may use torch does not lend it to a part that may not. Outside the sandbox (the
learner's own ``normcourse check``, or ``--no-sandbox``) only the import hook stands guard: the
verdicts are the same for honest code, but a determined learner could get around it there.

Some of the course's own modules are handed to the learner by the notebook itself (ps05's model
builders, ps06's ``TinyTransformer``): a problem set lists them with
``register(PARTS, provides=(...))`` and :data:`NO_COURSE_CODE` spares exactly those modules.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Rule", "NO_TORCH", "NO_COURSE_CODE", "RULES"]


@dataclass(frozen=True)
class Rule:
    """A forbidden shortcut.

    Attributes:
        name: a short identifier shown in reports (``"no-torch"``).
        modules: top-level or dotted module names taken away, with all their submodules.
        why: the learner-facing reason, completing "Your code used ... :".
    """

    name: str
    modules: tuple[str, ...]
    why: str

    def message(self, module: str = "{module}") -> str:
        """The learner-facing message for an attempt to import ``module``."""
        return f"{module} is not available to your code here (rule {self.name}): {self.why}"


NO_TORCH = Rule("no-torch", ("torch", "functorch"),
                "this part is numpy only; write the computation with numpy (no torch, no torch.autograd)")
NO_COURSE_CODE = Rule("no-course-code", ("normcourse",),
                      "the course's reference implementation and grading code are not available to your "
                      "code; implement the part yourself")

#: Every rule by name (the ledger and reports refer to rules by name).
RULES = {rule.name: rule for rule in (NO_TORCH, NO_COURSE_CODE)}


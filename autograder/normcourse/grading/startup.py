"""Start-up cost of the grading processes: skip one optional import that nothing here uses.

nbformat validates notebooks with ``jsonschema``, and ``jsonschema`` imports the optional package
``rfc3987_syntax`` whenever it is installed (jupyter-events installs it) to check the ``"iri"`` string
format. That import builds a Lark grammar and costs about 1.1 s of CPU in every process that imports
nbformat or nbgrader (``python -X importtime -c "import nbformat"``); ``import nbgrader.apps`` drops from
about 2.4 s to 0.8 s of CPU without it. No notebook schema declares a string ``format`` (a test checks
this), so validation is unchanged. The grading processes (the ``normcourse`` command and each autograde
worker) call :func:`skip_unused_format_checkers` before their first nbformat import.
"""

import sys

__all__ = ["skip_unused_format_checkers", "SKIPPED_MODULES"]

#: Optional jsonschema format checkers that notebook validation never calls.
SKIPPED_MODULES = ("rfc3987_syntax",)


def skip_unused_format_checkers() -> None:
    """Make ``import rfc3987_syntax`` fail fast (jsonschema then leaves the "iri" checker out).
    A no-op once jsonschema is imported, or if the module is already loaded."""
    if "jsonschema" in sys.modules:
        return
    for name in SKIPPED_MODULES:
        sys.modules.setdefault(name, None)  # None in sys.modules: "import name" raises ImportError

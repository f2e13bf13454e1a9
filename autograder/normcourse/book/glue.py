"""``glue``: store a value in a chapter's executed notebook so that the prose can show it.

The chapters write numbers into their text with MyST-NB's ``{glue:text}`name``` role, which reads
what ``myst_nb.glue(name, value)`` stored in the cell's outputs: the value's display formats (its
"mime bundle"), each under a key prefixed with ``application/papermill.record/`` when the value is
not to be shown in the cell, and a ``scrapbook`` entry in the output's metadata naming it.

This module writes exactly that output (``tests/book/test_glue.py`` compares it with MyST-NB's),
without what ``myst_nb.glue`` costs on its first call: it imports ``nbformat``, and with it
``jsonschema``'s format checkers, which take about 3 s to load, in every chapter's kernel.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HIDDEN_PREFIX", "glue"]

#: MyST-NB's prefix for a glued value that is stored but not displayed in the cell.
HIDDEN_PREFIX = "application/papermill.record/"


def glue(name: str, variable: Any, display: bool = True) -> None:
    """Store ``variable``'s display formats under ``name``, as ``myst_nb.glue`` does.

    Args:
        name: the key the prose uses, e.g. ``{glue:text}`name``` or ``{glue:text}`name:.2f```.
        variable: any object IPython can display (numbers are formatted later by the role).
        display: also show the value in the cell's output. Default: True.
    """
    from IPython.core.formatters import format_display_data
    from IPython.display import display as show

    bundle, metadata = format_display_data(variable)
    prefix = "" if display else HIDDEN_PREFIX
    metadata["scrapbook"] = {"name": name, "mime_prefix": prefix}
    show({prefix + mime: value for mime, value in bundle.items()}, raw=True, metadata=metadata)

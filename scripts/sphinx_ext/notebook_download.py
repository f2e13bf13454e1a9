"""Offer every executed chapter as a downloadable ``.ipynb`` (Sphinx extension for the book).

The chapters are MyST Markdown notebooks. MyST-NB writes each executed chapter, outputs included, to
``_build/jupyter_execute/<page>.ipynb``, but sphinx-book-theme only links that file from the download
menu when a launch provider (Binder, JupyterHub, Colab, Thebe) is configured, and this book configures
none: nothing is run or loaded from elsewhere. This extension does the theme's copy step itself, into
``_build/html/_sources/<page>.ipynb``, and sets ``ipynb_source`` so the download menu gets an
".ipynb" entry next to ".md" and ".pdf".

MyST-NB (1.4) writes that file *without outputs* when a chapter comes from the execution cache (it
merges the cached outputs into a copy it renders, then saves the original), so the outputs are merged
in again here from the same cache, the way MyST-NB does it for rendering.
"""

from contextlib import suppress
from pathlib import Path

import nbformat


def _offer_executed_notebook(app, pagename, templatename, context, doctree):
    if "kernelspec" not in app.env.metadata.get(pagename, {}):
        return  # a plain Markdown page, not a notebook
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not executed.is_file():
        return
    notebook = nbformat.read(executed, as_version=4)
    config = app.env.mystnb_config  # the resolved configuration (the cache path filled in)
    if config.execution_mode == "cache" and config.execution_cache_path:
        from jupyter_cache import get_cache

        with suppress(KeyError):  # not in the cache: it failed to execute, and the build fails anyway
            _, notebook = get_cache(config.execution_cache_path).merge_match_into_notebook(notebook)
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def setup(app):
    # Before sphinx-book-theme builds its header buttons (they run at priority 501).
    app.connect("html-page-context", _offer_executed_notebook, priority=500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

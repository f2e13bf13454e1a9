"""Serve MathJax 3 from the built site itself (Sphinx extension for the book).

Sphinx loads MathJax from a CDN by default, so offline every equation stays raw TeX. With
``mathjax_path: mathjax/tex-chtml.js`` in ``_config.yml`` the pages ask for
``_static/mathjax/tex-chtml.js`` instead; this extension puts the files there when the HTML build
finishes, copied from the installed ``django-static-mathjax`` package (importable as ``mathjax``,
MathJax 3.2.2), so nothing vendored goes stale and ``jupyter-book build .`` works without a wrapper.

What is copied (about 2 MB): ``es5/tex-chtml.js`` (TeX input, CommonHTML output, the menu and
assistive MathML in one file), the CommonHTML fonts ``es5/output/chtml/fonts/woff-v2/`` and the TeX
extensions ``es5/input/tex/extensions/`` that ``\\require`` or autoload may fetch.

There is deliberately no ``_static/`` folder in the book's sources: Jupyter Book would inject every
.js file found under it into every page.
"""

import shutil
from pathlib import Path

# Relative to the package's es5/ folder.
MATHJAX_FILES = ["tex-chtml.js"]
MATHJAX_FOLDERS = ["output/chtml/fonts/woff-v2", "input/tex/extensions"]


def mathjax_es5():
    """The es5/ folder of the installed MathJax 3 package."""
    import mathjax

    return Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"


def copy_mathjax(target):
    """Copy the MathJax files the book needs into ``target`` (replacing what is there)."""
    source, target = mathjax_es5(), Path(target)
    if target.exists():
        shutil.rmtree(target)
    for name in MATHJAX_FILES:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target / name)
    for folder in MATHJAX_FOLDERS:
        shutil.copytree(source / folder, target / folder)


def _after_build(app, exception):
    if exception is None and app.builder.format == "html":
        copy_mathjax(Path(app.outdir) / "_static" / "mathjax")


def setup(app):
    app.connect("build-finished", _after_build)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

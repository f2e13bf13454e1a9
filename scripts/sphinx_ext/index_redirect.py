"""Write the site's ``index.html``, the redirect to the book's root page, with the favicon (Sphinx extension).

The book's root page is ``intro``, so Sphinx writes no ``index.html``; sphinx-external-toc then writes
a one-line redirect (a bare ``<meta http-equiv="Refresh">``) when the build finishes, and only if the
file does not exist. A page without ``<link rel="icon">`` makes the browser ask for ``/favicon.ico``,
which the site does not have: a 404 on every visit to the site's address. This extension writes the
redirect first, as a complete page that declares the book's favicon.
"""

import html
from pathlib import Path


def _write_index(app, exception):
    if exception is not None or app.builder.format != "html" or app.config.root_doc == "index":
        return
    root = f"{app.config.root_doc}.html"
    favicon = app.config.html_favicon or ""
    if favicon and "://" not in favicon:
        favicon = f"_static/{Path(favicon).name}"  # where Sphinx copies a local favicon
    icon = f'<link rel="icon" href="{html.escape(favicon)}">\n' if favicon else ""
    title = html.escape(app.config.html_title or app.config.project)  # Jupyter Book sets html_title
    lang = (app.config.language or "en").replace("_", "-")  # a translated edition is built with its language
    Path(app.outdir, "index.html").write_text(
        f"<!DOCTYPE html>\n<html lang=\"{html.escape(lang)}\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{title}</title>\n{icon}"
        f'<meta http-equiv="Refresh" content="0; url={root}">\n</head>\n'
        f'<body><p><a href="{root}">{title}</a></p></body>\n</html>\n', encoding="utf-8")


def setup(app):
    # Before sphinx-external-toc's handler (default priority 500), which then leaves the file alone.
    app.connect("build-finished", _write_index, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

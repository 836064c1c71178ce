"""Sphinx configuration of the course's website (built by site/build.py; `make site`).

The sources are a staging copy of the repository's lessons, labs, solutions, reports and
workshop guide (build/site-src/, laid out as in the repository so that the notebooks'
relative links resolve). Notebooks are rendered from their stored outputs and never run.
Everything the pages need is in the output folder: no theme, script, font or image is
fetched from the internet, at build time or when a page is read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("graphlab_site_build", Path(__file__).with_name("build.py"))
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)
REPOSITORY_URL, REPOSITORY_BRANCH = _build.REPOSITORY_URL, _build.REPOSITORY_BRANCH
del _spec, _build  # modules are no configuration values

project = "CUDA Graph Lab"
author = "the CUDA Graph Lab authors"
copyright = "the CUDA Graph Lab authors"  # noqa: A001 (Sphinx's name)


extensions = ["myst_nb"]

# -- notebooks: stored outputs only -------------------------------------------------------
nb_execution_mode = "off"
nb_merge_streams = True  # consecutive prints of a cell read as one block, as in JupyterLab
# No widget JavaScript from a CDN: site/build.py replaces stored widget views by a sentence.
nb_ipywidgets_js: dict = {}
nb_output_stderr = "show"

# -- Markdown -----------------------------------------------------------------------------
# Anchors like reports/gpu/<report>.md#08_debugging_and_profiling, as GitHub makes them.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]
myst_links_external_new_tab = False

# -- strictness: sphinx-build runs with -W --keep-going -n --------------------------------
nitpicky = True
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
root_doc = "index"
language = "en"

# -- HTML ---------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"  # from the sphinx-book-theme wheel: nothing downloaded
html_title = "CUDA Graph Lab"
html_static_path = ["_static"]
html_css_files = ["graphlab-site.css"]
html_last_updated_fmt = None
html_show_sphinx = False
html_copy_source = True  # the theme's "download .ipynb" button links the copied notebook
html_theme_options = {
    "repository_url": REPOSITORY_URL,  # the same URL as the notebooks' Colab badges
    "repository_branch": REPOSITORY_BRANCH,
    "path_to_docs": "",  # a page's source path in the staging folder is its path in the repository
    "use_repository_button": True,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "launch_buttons": {"colab_url": "https://colab.research.google.com"},
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "navbar_persistent": [],  # the sidebar has the search field: no second one in a top bar
}

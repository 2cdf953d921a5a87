"""Sphinx configuration for the seis-sklearn documentation."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import seis_sklearn  # noqa: E402

project = "seis-sklearn"
author = "seis-sklearn developers"
copyright = "2026, seis-sklearn developers"
release = seis_sklearn.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
]
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_member_order = "bysource"
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = ["_static"]
html_theme_options = {
    "description": "Does your layer keep, re-encode or discard a transformation?"
}

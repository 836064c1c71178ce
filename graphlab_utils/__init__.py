"""graphlab_utils: the helper package of CUDA Graph Lab.

Every notebook starts with::

    import graphlab_utils as gl
    S = gl.setup()
    DEVICE = S.device

Importing this package is cheap: it does not import PyTorch, matplotlib or Jupyter; the
modules that need them import them when they are used.
"""

from __future__ import annotations

from .backend import BackendError, Session, setup
from .errors import GraphlabError

__all__ = ["BackendError", "GraphlabError", "Session", "setup"]
__version__ = "0.1.0"

# `gl.timing`, `gl.recipes`, ... work after a bare `import graphlab_utils as gl`: any submodule
# of the package is imported on first use (no list to keep in step).
def __getattr__(name: str):
    import importlib
    import importlib.util

    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'graphlab_utils' has no attribute {name!r}")

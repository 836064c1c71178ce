"""The base class of the errors the course's own code raises on purpose.

Each one carries a single sentence that says what went wrong and what to do; the
``graphlab`` command prints that sentence instead of a traceback.
"""

from __future__ import annotations

__all__ = ["GraphlabError"]


class GraphlabError(Exception):
    """An error of the course's helpers whose message is one sentence for the learner."""

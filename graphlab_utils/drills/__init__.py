"""Interview drills (lesson 10): the question bank, its runnable proofs, and the failure katas.

* ``bank``: the questions (``questions.json``), their checks, and the grading of an answer;
* ``render``: a question's card, the model answer, its proof (the claim of
  :mod:`graphlab_utils.claims` the question names), and the quiz widget;
* ``terminal``: ``graphlab drill``, the same questions in a terminal, with a score and a clock;
* ``katas``: broken snippets modelled on real bug reports, each with a check.

Lesson 10 uses the learner's functions straight from the package::

    from graphlab_utils import drills as quiz
    quiz.widget("q03_random_branch")
    quiz.prove("q03_random_branch")

Importing the package imports none of its modules (nor PyTorch); each is imported when it
is first used.
"""
from __future__ import annotations

import importlib

__all__ = ["bank", "card", "get", "grade", "katas", "proof_source", "prove", "render", "reveal", "run_proof",
           "select", "summary", "terminal", "widget"]

_MODULES = {"bank", "katas", "render", "terminal"}
_FUNCTIONS = {
    "get": "bank", "grade": "bank", "select": "bank",
    "card": "render", "proof_source": "render", "prove": "render", "reveal": "render", "run_proof": "render",
    "summary": "render", "widget": "render",
}


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(f"{__name__}.{_FUNCTIONS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

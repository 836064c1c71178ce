"""The ``graphlab`` command (also ``python -m graphlab_utils``).

Sub-commands delegate to the modules that own them:

* ``graphlab doctor``: :mod:`graphlab_utils.doctor`
* ``graphlab build-labs [--check] [--solutions DIR] [--labs DIR]``: :mod:`graphlab_utils.authoring.labs`
* ``graphlab build-lesson10 [--check]``: :mod:`graphlab_utils.authoring.lesson10`
* ``graphlab calibrate ...``: :mod:`graphlab_utils.authoring.calibrate` (on a GPU)
* ``graphlab drill [--module NN] [--count N] [--seed S] [--timed SECONDS]``: :mod:`graphlab_utils.drills.terminal`
* ``graphlab check NOTEBOOK [--timeout S] [--backend B] [--save PATH]``: :mod:`graphlab_utils.authoring.grading`

An error prints as one sentence and a non-zero exit status, never as a traceback
(set ``GRAPHLAB_DEBUG=1`` to see the traceback when working on the package itself).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import GraphlabError

__all__ = ["main"]

COMMANDS = {
    "doctor": ("graphlab_utils.doctor", "report the environment and say what to fix"),
    "build-labs": ("graphlab_utils.authoring.labs", "generate labs/ from solutions/ (--check: verify them)"),
    "build-lesson10": ("graphlab_utils.authoring.lesson10",
                       "generate lesson 10's notebook and solution (--check: verify them)"),
    "calibrate": ("graphlab_utils.authoring.calibrate", "measure the simulator's cost model on a GPU"),
    "drill": ("graphlab_utils.drills.terminal", "interview questions at random, with a score (--timed: a mock interview)"),
    "check": ("graphlab_utils.authoring.grading", "run a lab headless and print which exercises pass"),
}
EXIT_PACKAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphlab",
        description="CUDA Graph Lab: the course's command-line helpers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        # Each module parses its own options (so `graphlab build-labs --help` is its help).
        command = sub.add_parser(name, help=help_text, add_help=False)
        command.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _one_sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text.rstrip(".") if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv:
        parser.print_help()
        return EXIT_PACKAGE_ERROR
    if argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] not in COMMANDS:
        parser.parse_args(argv[:1])  # prints argparse's usage error and exits 2
    name, rest = argv[0], argv[1:]
    module_name = COMMANDS[name][0]
    debug = os.environ.get("GRAPHLAB_DEBUG", "") not in ("", "0")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            print(f"graphlab {name}: not available in this version of graphlab_utils.",
                  file=sys.stderr)
            return EXIT_PACKAGE_ERROR
        code = module.main(rest)
    except SystemExit as exc:  # argparse (or sys.exit) inside a sub-command
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(f"graphlab {name}: {_one_sentence(exc)}.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"graphlab {name}: interrupted.", file=sys.stderr)
        return 130
    except GraphlabError as exc:
        if debug:
            raise
        print(f"graphlab {name}: {_one_sentence(exc)}.", file=sys.stderr)
        return EXIT_PACKAGE_ERROR
    except Exception as exc:  # a bug or an environment problem: still one sentence
        if debug:
            raise
        print(
            f"graphlab {name}: unexpected {type(exc).__name__}: {_one_sentence(exc)} "
            f"(set GRAPHLAB_DEBUG=1 to see the traceback).",
            file=sys.stderr,
        )
        return 1
    return int(code or 0)

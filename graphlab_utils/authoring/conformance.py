"""The conformance suite's runner: every claim on a backend, a Markdown table, and the command.

The claims (:mod:`graphlab_utils.claims`) each hold the outcome a real GPU gives. This runs
them on one or both backends, each in a fresh process (the claims that end in a failed
capture each in a process of their own, the others together in one), and tabulates which
gave the expected outcome and whether the backends agree:

    python -m graphlab_utils.authoring.conformance --backend sim          # table on the simulator
    python -m graphlab_utils.authoring.conformance --backend real --backend sim --json out.json

``tests/conformance/`` runs the same on the simulator (and on a GPU, both backends); the GPU
verification (``tools/gpu/``) writes ``report(...)`` into its report.
"""
from __future__ import annotations

import argparse
import json
import sys

from graphlab_utils import claims

__all__ = ["main", "report", "run", "table", "verdict"]

BACKENDS = ("real", "sim")


def _observe_all(names: list, backend_name: str) -> dict:
    """In a fresh process: each claim's outcome, or one line saying why it crashed."""
    from graphlab_utils.recipes import error_line

    outcomes = {}
    for name in names:
        try:
            outcomes[name] = claims.observe(name, backend_name)
        except Exception as exc:  # noqa: BLE001 - a crash is reported as the outcome
            outcomes[name] = {"crashed": error_line(exc)}
    return outcomes


def _in_child(names: list, backend_name: str) -> dict:
    from graphlab_utils import isolation
    from graphlab_utils.recipes import error_line

    try:
        return isolation.run_function(_observe_all, names, backend_name, timeout=claims.CHILD_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - a process that died is the outcome of each of its claims
        return {name: {"crashed": error_line(exc)} for name in names}


def run(backend_name: str, names=None) -> dict:
    """Each claim's outcome on ``backend_name`` (``real`` or ``sim``), observed in fresh processes."""
    from graphlab_utils import backend

    names = list(names or claims.CLAIMS)
    try:
        backend.current()  # the fresh processes start from this process's backend
    except backend.BackendError:
        backend.setup(backend=backend_name, quiet=True)
    shared = [n for n in names if not claims.get(n).isolated]
    results = _in_child(shared, backend_name) if shared else {}
    for name in names:
        if claims.get(name).isolated:
            results.update(_in_child([name], backend_name))
    return {name: results[name] for name in names}


def verdict(name: str, outcome: dict) -> bool:
    """Whether an outcome is the one a real GPU gives."""
    return claims.public(outcome) == claims.get(name).expected


def _same(results_by_backend: dict, name: str) -> bool:
    return len({json.dumps(claims.public(r[name]), sort_keys=True) for r in results_by_backend.values()}) == 1


def table(results_by_backend: dict) -> str:
    """A Markdown table: one row per claim, one column per backend, and whether they agree."""
    backends = list(results_by_backend)
    lines = ["| lesson | claim | " + " | ".join(backends) + " | same outcome |", "|" + "---|" * (3 + len(backends))]
    for name, c in claims.CLAIMS.items():
        if not all(name in results_by_backend[b] for b in backends):
            continue
        cells = ["as expected" if verdict(name, results_by_backend[b][name])
                 else "DIFFERS: " + json.dumps(claims.public(results_by_backend[b][name]), ensure_ascii=False)
                 for b in backends]
        lines.append(f"| {c.lesson} | {c.statement} (`{name}`) | " + " | ".join(cells)
                     + f" | {'yes' if _same(results_by_backend, name) else 'NO'} |")
    return "\n".join(lines)


def report(results_by_backend: dict) -> dict:
    """What the GPU report shows: the outcomes, the table, and the two verdicts."""
    names = list(next(iter(results_by_backend.values())))
    return {
        "results": results_by_backend,
        "table": table(results_by_backend),
        "all_expected": all(verdict(n, r[n]) for r in results_by_backend.values() for n in r),
        "backends_agree": all(_same(results_by_backend, n) for n in names),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m graphlab_utils.authoring.conformance",
                                description="Run the course's claims on a backend and compare with what a real GPU gives.")
    p.add_argument("--backend", action="append", choices=BACKENDS, help="repeat to compare backends (default: sim)")
    p.add_argument("--json", metavar="PATH", help="write every outcome to this file")
    p.add_argument("names", nargs="*", help="claims to run (default: all)")
    a = p.parse_args(argv)
    unknown = [n for n in a.names if n not in claims.CLAIMS]
    if unknown:
        print(f"unknown claim(s): {', '.join(unknown)}; the claims are the functions of graphlab_utils/claims/lessonNN.py")
        return 2
    backends = a.backend or ["sim"]
    summary = report({b: run(b, a.names or None) for b in backends})
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump(summary["results"], fh, indent=1, sort_keys=True)
    print(summary["table"])
    agree = "" if len(backends) == 1 else "; backends agree" if summary["backends_agree"] else "; BACKENDS DISAGREE"
    print(f"{'all claims as expected' if summary['all_expected'] else 'some claims differ from the expected outcome'}{agree}")
    return 0 if summary["all_expected"] and summary["backends_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())

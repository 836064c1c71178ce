"""``graphlab build-lesson10 [--check]``: lesson 10's two generated notebooks, built together.

* ``notebooks/10_interview_drills.ipynb`` from the question bank and the claims
  (:mod:`graphlab_utils.authoring.drills_notebook`);
* ``solutions/10_interview_drills.ipynb`` from the katas (:mod:`graphlab_utils.authoring.katas_notebook`),
  after which ``graphlab build-labs`` makes ``labs/10_interview_drills.ipynb`` from it.

Both carry a first cell that says they are generated and by which command. Building executes
the notebooks (a few minutes on the simulator); ``--check`` only compares the committed
notebooks' sources with what would be generated, and fails when a hand edit would be lost or a
regeneration is due (``make test`` runs it).
"""
from __future__ import annotations

from graphlab_utils.authoring.generated import command_parser

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("graphlab build-lesson10",
                            "Generate lesson 10's notebook (drills) and solution (katas); --check: verify them.",
                            "compare the committed notebooks' sources with what would be generated, without executing")
    args, rest = parser.parse_known_args(argv)
    from graphlab_utils.authoring import drills_notebook, katas_notebook

    flags = (["--check"] if args.check else []) + rest
    codes = [drills_notebook.main(list(flags)), katas_notebook.main(list(flags))]
    return max(int(c or 0) for c in codes)


if __name__ == "__main__":
    raise SystemExit(main())

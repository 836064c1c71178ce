"""Tools for the course's authors, not its learners: they generate and verify course files.

Each module exposes ``main(argv) -> int`` for the ``graphlab`` command or ``python -m``.
"""

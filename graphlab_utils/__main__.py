"""``python -m graphlab_utils``: the same as the ``graphlab`` command."""

from .cli import main

raise SystemExit(main())

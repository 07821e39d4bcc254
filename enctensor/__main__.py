"""``python -m enctensor``: the command line (see :mod:`enctensor.cli`)."""

from .cli import main

raise SystemExit(main())

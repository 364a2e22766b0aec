"""``python -m pyrust`` is the ``pyrust`` command."""

from pyrust.cli import main

raise SystemExit(main())

"""``python -m diffcontrol``: the ``diffcontrol`` command."""

from diffcontrol.cli import main

raise SystemExit(main())

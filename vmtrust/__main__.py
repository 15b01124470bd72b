"""``python -m vmtrust`` is the ``vmtrust`` command."""

from vmtrust.cli.main import main

raise SystemExit(main())

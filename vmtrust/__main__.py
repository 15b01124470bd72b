"""``python -m vmtrust`` is the ``vmtrust`` command."""

from vmtrust.cli.main import main

__all__: list[str] = []  # a namespace: its modules are the API

raise SystemExit(main())

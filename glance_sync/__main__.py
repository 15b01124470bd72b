"""``python -m glance_sync`` is the ``vmtrust-sync`` command."""

from glance_sync.entrypoint import main

__all__: list[str] = []  # a namespace: its modules are the API

raise SystemExit(main())

"""``python -m glance_sync`` is the ``vmtrust-sync`` command."""

from glance_sync.cli import main

raise SystemExit(main())

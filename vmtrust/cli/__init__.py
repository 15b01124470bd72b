"""The ``vmtrust`` command: :mod:`~vmtrust.cli.main` maps errors to exit statuses, one
module per command group registers its verbs, and :mod:`~vmtrust.cli.plugins` adds the
commands other packages declare as ``vmtrust.commands`` entry points."""

__all__: list[str] = []  # a namespace: its modules are the API

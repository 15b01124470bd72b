"""Commands other packages add to ``vmtrust``: entry points in the group ``vmtrust.commands``.

The trust core may not import the sync service (docs/architecture.md, import
rules), yet ``vmtrust images`` and ``vmtrust status`` read the sync's store and
state.  So the sync side registers them, as entry points named after the
command whose object is a :class:`Command`; this module finds them when the
parser is built (never at import) and gives each a subparser.  A plug-in that
cannot be loaded, or that takes a name the command line already has, is one
warning line on standard error and is left out: ``vmtrust list verify`` keeps
working whatever else is installed.  The entry points are read only when the
command being run is not a built-in one (``vmtrust --help``, a plug-in's
command, a mistyped name): reading every installed distribution's metadata
is a noticeable part of start-up, which a built-in command does not pay
(docs/decisions/0009-cli-start-up-and-verification-speed.md).  See
docs/decisions/0004-store-and-command-registry.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from vmtrust.safetext import clean

__all__ = ["GROUP", "Command", "add_plugin_commands"]

GROUP = "vmtrust.commands"


@dataclass(frozen=True)
class Command:
    """One ``vmtrust`` command that lives in another package."""

    help: str  #: the line in ``vmtrust --help``
    description: str  #: the text of ``vmtrust COMMAND --help``
    arguments: Callable[[argparse.ArgumentParser], None]  #: adds the command's options
    run: Callable[[argparse.Namespace], int]  #: the handler; errors as VmtrustError


def add_plugin_commands(commands: argparse._SubParsersAction) -> None:
    """Give every command of the ``vmtrust.commands`` entry points a subparser."""
    # Imported here: reading the installed distributions' metadata is the slow part of
    # start-up, and a built-in command (vmtrust list verify) never needs it.
    from importlib.metadata import entry_points

    for plugin in sorted(entry_points(group=GROUP), key=lambda p: p.name):
        if plugin.name in commands.choices:
            _warn(f"command {plugin.name} ({plugin.value}) ignored: vmtrust has that command")
            continue
        try:
            command = plugin.load()
        except Exception as exc:  # third-party code: whatever it raises, the rest still works
            _warn(f"command {plugin.name} ({plugin.value}) not loaded: {type(exc).__name__}: {exc}")
            continue
        if not isinstance(command, Command):
            _warn(f"command {plugin.name} ({plugin.value}) ignored: not a vmtrust command")
            continue
        parser = commands.add_parser(
            plugin.name, help=command.help, description=command.description
        )
        command.arguments(parser)
        parser.set_defaults(handler=command.run)


def _warn(message: str) -> None:
    print(f"vmtrust: warning: {clean(message)}", file=sys.stderr)

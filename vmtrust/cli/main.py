"""The ``vmtrust`` command: argument parsing, dispatch, and the error contract.

Contract other tools script against: exit 0 on success; on failure one line
on standard error (``vmtrust: <what>: <problem>``) and the exit status of the
failed rule (see :mod:`vmtrust.errors`), always below 124; never a traceback
(``--debug`` shows one for bug reports).  Usage errors are one line too, with
status 2.  Messages quote untrusted data (identifiers, DNs, parser output), so
they are printed through :func:`~vmtrust.cli.render.clean`: a line break in a
list's identifier cannot turn one line into two.

Start-up is part of the contract too (issue 17: ``vmtrust --help`` and
``vmtrust list verify`` within 250 ms): only the module of the command being
run is imported (:data:`COMMANDS`), and the ``vmtrust.commands`` entry points
are read only when the command is not a built-in one (or for ``--help``), so
``list verify`` loads neither openstacksdk, nor keystoneauth, nor the sync
side's commands.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import logging
import sys
import typing
from collections.abc import Sequence

from vmtrust import __version__, errors
from vmtrust.cli.plugins import add_plugin_commands
from vmtrust.errors import VmtrustError
from vmtrust.safetext import clean

__all__ = ["INTERNAL_ERROR", "USAGE_ERROR", "build_parser", "main"]

INTERNAL_ERROR = errors.INTERNAL_ERROR
USAGE_ERROR = errors.USAGE

#: The built-in commands in the order ``--help`` lists them: name, the module whose
#: ``register(commands)`` adds it, and its line in ``vmtrust --help`` (the module
#: registers the same line; tests/test_cli_startup.py holds them equal).  A module is
#: imported only when its command runs or asks for its own ``--help``.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("list", "vmtrust.cli.listcmd", "image lists: verify, show, sign, create, edit"),
    ("image", "vmtrust.cli.imagecmd", "describe image files for a list"),
    ("keygen", "vmtrust.cli.keygencmd", "make the site's Ed25519 seal key pair"),
    ("context", "vmtrust.cli.contextcmd", "build or check cloud-init user-data for worker nodes"),
    ("launch", "vmtrust.cli.launchcmd", "boot worker nodes from the VO's current trusted image"),
    ("audit", "vmtrust.cli.auditcmd", "worker servers that do not run a trusted image now"),
    ("ec2", "vmtrust.cli.ec2cmd", "EC2 site tools: the enforcement documents"),
)


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (subcommand parsers inherit the class)."""

    def error(self, message: str) -> typing.NoReturn:
        command = self.prog.removeprefix("vmtrust").strip()
        where = f"{command}: " if command else ""
        self.exit(
            USAGE_ERROR,
            f"vmtrust: {clean(where)}{clean(message)} (see '{clean(self.prog)} --help')\n",
        )


def _fail(message: str) -> None:
    print(f"vmtrust: {clean(message)}", file=sys.stderr)


def _add_global_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, level: int
) -> None:
    """``--version``, ``--debug`` and ``--config-file``, at the top (``level`` 0) or after
    the command at ``level`` 1, 2 (``vmtrust images --config-file FILE``, as users type it).

    After a command they default to nothing, so that a subcommand does not undo what
    was given before it; each level's config files have their own name (a subcommand
    parses into a namespace of its own and would replace them) and :func:`_merge`
    joins them.
    """
    unset: dict[str, typing.Any] = {} if level == 0 else {"default": argparse.SUPPRESS}
    with contextlib.suppress(argparse.ArgumentError):  # 'list bump --version V' is its own
        parser.add_argument("--version", action="version", version=f"vmtrust {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug logs", **unset
    )
    parser.add_argument(
        "--config-file",
        action="append",
        dest=_CONFIG_FILES[level],
        metavar="FILE",
        help="vmtrust.conf to read (repeatable; default: the standard oslo.config places, "
        "e.g. /etc/vmtrust/vmtrust.conf)",
        **unset,
    )


#: where ``--config-file`` lands at each level: before the command, after it, after its verb
_CONFIG_FILES = ("config_file", "config_file_after_command", "config_file_after_verb")


def _after_commands(parser: argparse.ArgumentParser, level: int = 1) -> None:
    """Give every command and verb under ``parser`` the global options too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                group = sub.add_argument_group("global options (also before the command)")
                _add_global_options(group, level)
                _after_commands(sub, level + 1)


def _merge(args: argparse.Namespace) -> argparse.Namespace:
    """The config files of every level, in the order they were given."""
    files = [f for name in _CONFIG_FILES for f in (getattr(args, name, None) or [])]
    for name in _CONFIG_FILES[1:]:
        args.__dict__.pop(name, None)
    args.config_file = files or None
    return args


class _NoExit(Exception):
    pass


class _Peek(argparse.ArgumentParser):
    """Reads the global options the way the real parser does (abbreviations, ``--opt=V``)
    to find the command word, and never exits: a mistake is the real parser's to report."""

    def error(self, message: str) -> typing.NoReturn:
        raise _NoExit(message)


def command_word(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs (``list`` of ``--debug list verify F``), None if none
    or if the global options before it cannot be read."""
    peek = _Peek(add_help=False)
    peek.add_argument("--version", action="store_true")
    peek.add_argument("--debug", action="store_true")
    peek.add_argument("--config-file", action="append")
    try:
        _, rest = peek.parse_known_args(list(argv))
    except _NoExit:
        return None
    for word in rest:
        if word == "--":
            continue
        return None if word.startswith("-") else word
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``; every command, built fully when ``argv`` is None.

    With ``argv``, only the command it runs is built with its options (its module
    imported); the others are listed by name and help line, and the entry points of
    other packages' commands are read only when the command is none of the built-in
    ones (``vmtrust --help``, ``vmtrust images``, a mistyped name).
    """
    word = None if argv is None else command_word(argv)
    builtin = {name for name, _, _ in COMMANDS}
    parser = _Parser(
        prog="vmtrust",
        description="Create, sign, verify and inspect HEPiX endorsed VM image lists.",
        epilog="Run 'vmtrust COMMAND --help' for the options of a command.\n\n"
        + errors.help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser, 0)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, help_line in COMMANDS:
        if argv is None or name == word:
            importlib.import_module(module).register(commands)
        else:  # listed, not loaded: 'vmtrust NAME ...' would have built it
            commands.add_parser(name, help=help_line)
    if word not in builtin:
        add_plugin_commands(commands)  # images, status: the sync side's (import rules)
    _after_commands(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vmtrust ARGV`` and return its exit status (``argv`` None: the program's).

    As the program (``vmtrust``, ``python -m vmtrust``), the objects that exist when
    the command is done are frozen (:func:`gc.freeze`) before the interpreter exits:
    its final garbage collections would otherwise walk every object the imports made
    (cryptography, asn1crypto, oslo.config), a tenth of ``list verify``'s CPU time, to
    free memory the exit frees anyway.  Called with ``argv`` (tests, other programs),
    nothing changes.
    """
    if argv is not None:
        return _run(argv)
    try:
        return _run(sys.argv[1:])
    finally:  # also after --help and usage errors, which exit through SystemExit
        gc.freeze()


def _run(argv: Sequence[str]) -> int:
    parser = build_parser(argv)
    args = _merge(parser.parse_args(argv))
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="vmtrust: %(levelname)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except VmtrustError as exc:
        _fail(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _fail("interrupted")
        return errors.INTERRUPTED
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if args.debug:
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug and report it)")
        return INTERNAL_ERROR

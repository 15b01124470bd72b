"""Commands other packages add to ``vmtrust`` (entry points ``vmtrust.commands``).

The sync side's ``images`` and ``status`` come this way; here a package
installed for the test (``tests/plugin_dist.py``) adds its own, a broken one
and one that wants a built-in name, and ``vmtrust`` runs in-process as a user
would call it.
"""

from __future__ import annotations

import plugin_dist
import pytest
from cli_support import fails, ok, run

HELLO = """
from vmtrust.cli.plugins import Command
from vmtrust.errors import ConfigError


def arguments(parser):
    parser.add_argument("--name", required=True)


def hello(args):
    if args.name == "nobody":
        raise ConfigError("hello: --name nobody: say who")
    print(f"hello {args.name}")
    return 0


HELLO = Command(help="greet someone", description="Greets.", arguments=arguments, run=hello)
NOT_A_COMMAND = hello
"""


def install(tmp_path, monkeypatch, points: dict[str, str]) -> None:
    folder = plugin_dist.make(
        tmp_path / "plugin", {"vmtrust.commands": points}, {"hellocmd": HELLO}
    )
    monkeypatch.syspath_prepend(str(folder))


def test_a_plugin_command_is_listed_and_runs_under_the_error_contract(
    tmp_path, monkeypatch, capsys
):
    install(tmp_path, monkeypatch, {"hello": "hellocmd:HELLO"})
    with pytest.raises(SystemExit) as done:
        run(capsys, "--help")
    assert done.value.code == 0
    out, err = capsys.readouterr()
    assert "greet someone" in out and "images" in out and "status" in out and err == ""
    assert ok(capsys, "hello", "--name", "site") == "hello site\n"
    line = fails(capsys, 4, "hello", "--name", "nobody")
    assert line == "vmtrust: hello: --name nobody: say who\n"


def test_a_broken_or_clashing_plugin_is_one_warning_each_and_the_rest_works(
    tmp_path, monkeypatch, capsys
):
    install(
        tmp_path,
        monkeypatch,
        {
            "list": "hellocmd:HELLO",  # the built-in list stays
            "gone": "nosuchmodule:COMMAND",
            "odd": "hellocmd:NOT_A_COMMAND",
        },
    )
    # A built-in command does not read the entry points (start-up, issue 17): the
    # broken plug-ins cost it nothing, not even a warning.
    with pytest.raises(SystemExit) as done:
        run(capsys, "list", "--help")
    assert done.value.code == 0
    out, err = capsys.readouterr()
    assert "verify" in out and err == ""  # the built-in list command, not the plug-in
    # The overview reads them: one warning each, and every other command is listed.
    with pytest.raises(SystemExit) as done:
        run(capsys, "--help")
    assert done.value.code == 0
    out, err = capsys.readouterr()
    assert "images" in out and "status" in out and "gone" not in out and "odd" not in out
    assert sorted(err.splitlines()) == [
        "vmtrust: warning: command gone (nosuchmodule:COMMAND) not loaded: "
        "ModuleNotFoundError: No module named 'nosuchmodule'",
        "vmtrust: warning: command list (hellocmd:HELLO) ignored: vmtrust has that command",
        "vmtrust: warning: command odd (hellocmd:NOT_A_COMMAND) ignored: not a vmtrust command",
    ]
    # A mistyped command reads them too, and is refused in one line naming the choices.
    with pytest.raises(SystemExit) as done:
        run(capsys, "lsit", "verify")
    assert done.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and "invalid choice: 'lsit'" in err[-1] and "'status'" in err[-1]

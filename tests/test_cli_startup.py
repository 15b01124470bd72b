"""Start-up of the ``vmtrust`` command (issue 17): what each invocation imports.

How long start-up takes is the benchmark's business (``benchmarks/startup.py``,
medians beside ``python -c pass``); here the modules are counted instead, which
does not depend on the machine's load: a fresh interpreter runs the command in
process and prints what ``sys.modules`` holds afterwards.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vmtrust.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
#: Libraries a command must not load unless it uses them (openstacksdk, keystoneauth,
#: the AWS SDK, YAML, progress bars, cloud-init, SQL, HTTP).
HEAVY = frozenset(
    {
        "oslo_config",
        "openstack",
        "keystoneauth1",
        "boto3",
        "botocore",
        "yaml",
        "tqdm",
        "cloudinit",
        "sqlalchemy",
        "requests",
    }
)


def loaded(code: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter after ``code``: top-level names, and the
    full names of this project's modules."""
    probe = (
        f"{code}\n"
        "import json, sys\n"
        "names = {m.split('.')[0] for m in sys.modules}\n"
        "names |= {m for m in sys.modules if m.startswith(('vmtrust.', 'glance_sync.'))}\n"
        "print(json.dumps(sorted(names)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def run_command(*argv: str) -> str:
    """Python code that runs ``vmtrust ARGV`` in process and checks it succeeded."""
    return (
        "import contextlib, io\n"
        "from vmtrust.cli.main import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        f"        rc = main({list(argv)!r})\n"
        "    except SystemExit as exc:\n"
        "        rc = exc.code\n"
        "assert rc == 0, (rc, out.getvalue())\n"
    )


def command_modules(names: set[str]) -> set[str]:
    return {name for name in names if name.startswith("vmtrust.cli.") and name.endswith("cmd")}


def test_a_bare_import_of_vmtrust_loads_nothing_heavy():
    names = loaded("import vmtrust")
    assert names & HEAVY == set()
    assert {"cryptography", "OpenSSL", "glance_sync"} & names == set()


def test_list_verify_loads_only_what_verification_and_its_configuration_need(
    sign, ca_dir, tmp_path
):
    signed = tmp_path / "signed.list"
    signed.write_bytes(sign())
    conf = tmp_path / "vmtrust.conf"
    # A [store_glance] section the command does not read: no keystoneauth for it.
    conf.write_text(f"[trust]\nca_dir = {ca_dir}\n[store_glance]\nauth_type = password\n")
    names = loaded(run_command("list", "verify", str(signed), "--config-file", str(conf)))
    # [trust] is read through oslo.config, so that one is needed; nothing else heavy is.
    assert names & HEAVY == {"oslo_config"}
    assert command_modules(names) == {"vmtrust.cli.listcmd"}
    assert "glance_sync" not in names  # no entry point loaded for a built-in command
    assert "vmtrust.authoring" not in names  # the endorser's side


def test_help_loads_no_command_module_and_nothing_heavy():
    names = loaded(run_command("--help"))
    assert names & HEAVY == set()
    assert command_modules(names) == set()
    assert "glance_sync.sitecmd" in names  # images and status, from the entry points
    assert {"cryptography", "OpenSSL"} & names == set()


def test_the_listed_help_lines_are_the_ones_the_commands_register():
    """COMMANDS repeats each module's help line, so that --help need not import it."""

    def lines(parser: argparse.ArgumentParser) -> dict[str, str | None]:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return {choice.dest: choice.help for choice in sub._choices_actions}

    listed = lines(cli.build_parser(["--help"]))
    registered = lines(cli.build_parser())  # every module imported
    assert listed == registered
    assert [name for name, _, _ in cli.COMMANDS] == list(registered)[: len(cli.COMMANDS)]


@pytest.mark.parametrize("name", [name for name, _, _ in cli.COMMANDS])
def test_every_built_in_command_answers_its_own_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: vmtrust {name}") and "global options" in out


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["list", "verify", "f"], "list"),
        (["--debug", "list", "verify"], "list"),
        (["--config-file", "a.conf", "--config-file=b.conf", "audit"], "audit"),
        (["--conf", "a.conf", "ec2", "policy"], "ec2"),  # abbreviated, as argparse takes it
        (["--config-file", "list", "verify"], "verify"),  # the file is named list
        (["--", "list"], "list"),
        (["--help"], None),
        (["-h", "list"], None),
        (["--config-file"], None),  # no value: the real parser reports it
        ([], None),
    ],
)
def test_the_command_word_is_found_as_argparse_finds_it(argv, word):
    assert cli.command_word(argv) == word


def test_make_conf_with_groups_reads_and_checks_only_those_sections(tmp_path):
    """What list verify asks for: [trust] is read and checked; a section it never uses
    cannot stop it, and keystoneauth's options are not registered for it."""
    from vmtrust.conf import make_conf
    from vmtrust.errors import ConfigError

    path = tmp_path / "vmtrust.conf"
    path.write_text("[trust]\nclock_skew = 60\n[sync]\nparallel_downloads = 99\n")
    conf = make_conf([str(path)], groups=("trust",))
    assert conf.trust.clock_skew == 60
    assert not hasattr(conf, "sync") and not hasattr(conf, "store_glance")
    with pytest.raises(ConfigError, match=r"\[sync\] parallel_downloads"):
        make_conf([str(path)])  # every section, as the sync reads them
    path.write_text("[trust]\nclock_skew = soon\n")
    with pytest.raises(ConfigError, match=r"\[trust\] clock_skew"):
        make_conf([str(path)], groups=("trust",))
    glance = make_conf([], groups=("store_glance",))
    assert "auth_type" in glance.store_glance  # keystoneauth's, with the section that uses them


def test_only_the_program_freezes_its_objects_before_exiting(capsys):
    """As the program, main freezes what exists when the command is done (the exit's
    collections skip it); called with argv, as tests and other programs do, it does not."""
    import gc

    before = gc.get_freeze_count()
    with pytest.raises(SystemExit):
        cli.main(["list", "--help"])
    assert cli.main(["list", "verify", "/nonexistent", "--ca-dir", "/nonexistent"]) != 0
    assert gc.get_freeze_count() == before
    capsys.readouterr()
    code = (
        "import gc, sys\n"
        "from vmtrust.cli.main import main\n"
        "sys.argv = ['vmtrust', 'list', 'verify', '/nonexistent', '--ca-dir', '/nonexistent']\n"
        "rc = main()\n"
        "print(rc, gc.get_freeze_count() > 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.stdout.split() == ["4", "True"], done.stderr


def test_vmtrust_sync_loads_its_modules_with_the_collector_paused_then_runs_with_it():
    """The collector off while the sync's modules load (a fifth of its start-up), what they
    made frozen, and the collector on again for the pass; the command is that entry."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="vmtrust-sync")
    assert script.value == "glance_sync.entrypoint:main"
    probe = (
        "import gc, sys\n"
        "seen = {}\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'glance_sync.cli':\n"
        "            seen['loading'] = gc.isenabled()\n"
        "sys.meta_path.insert(0, Watch())\n"
        "from glance_sync import entrypoint\n"
        "try:\n"
        "    entrypoint.main(['--version'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(seen['loading'], gc.isenabled(), gc.get_freeze_count() > 10000)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split()[-3:] == ["False", "True", "True"]

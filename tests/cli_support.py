"""Helpers shared by the CLI tests: run ``vmtrust`` in-process and check its contract."""

from __future__ import annotations

from pathlib import Path

from vmtrust import imagelist
from vmtrust.cli.main import main


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def fails(capsys, code, *argv) -> str:
    """Run, expect exit ``code`` and exactly one 'vmtrust: ' line on stderr; return it."""
    rc, _, err = run(capsys, *argv)
    assert rc == code, err
    assert err.startswith("vmtrust: ")
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def ok(capsys, *argv) -> str:
    """Run, expect success with nothing on stderr but notes; return stdout."""
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    assert "Traceback" not in err
    return out


def write_list(path: Path, document: dict) -> Path:
    path.write_bytes(imagelist.dumps(document))
    return path


def no_tmp_files(directory: Path) -> bool:
    """True if no temporary file of an atomic write was left in ``directory``."""
    return not [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]

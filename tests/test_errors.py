"""The error catalogue: every error in vmtrust/errors.py, one meaning per exit status,
statuses that do not move, and --help and the README made from it and agreeing."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest
from cli_support import fails, write_list
from conftest import list_document

from glance_sync import cli as sync_cli
from vmtrust import errors
from vmtrust.cli import main as vmtrust_cli

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vmtrust", "glance_sync", "nova_filter")

#: The contract scripts rely on: the status of every error class.  A change here is a
#: change of the command-line interface (say so in the release notes), never a refactoring.
STABLE = {
    "VmtrustError": 1,
    "InputError": 3,
    "FileTooLarge": 3,
    "YamlRefused": 3,
    "ConfigError": 4,
    "InvalidConfiguration": 4,
    "UserDataError": 5,
    "FetchError": 10,
    "HttpError": 10,
    "RegistryError": 10,
    "RegistryNotFound": 10,
    "ManifestError": 40,
    "OciReferenceError": 40,
    "CosignError": 11,
    "DeadlineExceeded": 10,
    "SignatureError": 11,
    "SmimeFormatError": 11,
    "SignerCountError": 11,
    "WeakAlgorithm": 11,
    "BadSignature": 11,
    "EndorserMismatch": 12,
    "EndorserNotAllowed": 13,
    "UntrustedSigner": 14,
    "CertificateExpired": 14,
    "NamespaceViolation": 14,
    "KeyUsageError": 14,
    "CertificateRevoked": 15,
    "CrlError": 16,
    "RollbackError": 17,
    "PolicyError": 20,
    "ContextRefused": 20,
    "SigningError": 21,
    "SealError": 22,
    "IdentifierMismatch": 31,
    "ListFromFuture": 33,
    "ListExpired": 34,
    "InvalidJSON": 37,
    "ListFormatError": 38,
    "ListTooLarge": 38,
    "InvalidListStructure": 38,
    "TransferError": 40,
    "UnsafeImageError": 40,
    "ArchiveError": 40,
    "ExpansionError": 40,
    "LocalStoreError": 41,
    "GlanceError": 42,
    "EC2Error": 43,
    "LaunchError": 50,
    "NoTrustedImage": 51,
    "AuditError": 61,
    "StateError": 74,
    "LockError": 75,
    "CoordinationError": 69,
}


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch):
    monkeypatch.setattr("oslo_config.cfg.find_config_files", lambda *a, **k: [])
    monkeypatch.delenv("VMTRUST_KEY_PASSPHRASE", raising=False)


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_every_error_class_is_defined_in_the_catalogue():
    """Read every module's source (also those that need nova to import): a class that
    derives from a catalogue class outside vmtrust/errors.py is a second catalogue."""
    names = {cls.__name__ for cls in errors.catalogue()}
    strays = []
    for path in _sources():
        if path == ROOT / "vmtrust" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {
                b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
            }
            if bases & names:
                strays.append(f"{path.relative_to(ROOT)}: class {node.name}")
    assert not strays
    assert len(names) == len(STABLE)


def test_exit_statuses_are_stable():
    assert {cls.__name__: cls.exit_code for cls in errors.catalogue()} == STABLE
    assert errors.OUTCOMES.keys() == {0, 2, 60, 62, 70, 120}


def test_each_status_has_one_meaning_and_each_meaning_one_status():
    introduced: dict[int, list[str]] = {}
    for cls in errors.catalogue():
        own = vars(cls)
        # the meaning is said where the status is set, and only there
        assert ("exit_code" in own) == ("meaning" in own), cls.__name__
        if "exit_code" in own:
            introduced.setdefault(cls.exit_code, []).append(cls.__name__)
        else:  # inherits both from the same class
            origin = next(c for c in cls.__mro__ if "exit_code" in vars(c))
            assert "meaning" in vars(origin), cls.__name__
    assert {code: len(names) for code, names in introduced.items() if len(names) > 1} == {}
    assert not introduced.keys() & errors.OUTCOMES.keys()
    statuses = errors.exit_statuses()
    assert len(set(statuses.values())) == len(statuses)
    assert all(0 <= code < 124 for code in statuses)


def test_families_callers_catch():
    """The hierarchy callers rely on, and the fixes of issue 13: a lock held by another
    sync is no configuration error; a refused context is a policy refusal with problems."""
    assert not issubclass(errors.LockError, errors.ConfigError)
    assert issubclass(errors.ContextRefused, errors.PolicyError)
    refused = errors.ContextRefused(["a: refused", "b: refused"])
    assert refused.problems == ["a: refused", "b: refused"] and refused.exit_code == 20
    assert issubclass(errors.DeadlineExceeded, errors.FetchError)
    assert issubclass(errors.FileTooLarge, errors.InputError)
    assert not issubclass(errors.FileTooLarge, errors.ListFormatError)


def test_the_catalogue_module_imports_nothing():
    """Everything imports errors.py, the nova filter included: it must stay free."""
    tree = ast.parse((ROOT / "vmtrust" / "errors.py").read_text())
    imports = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    assert [ast.unparse(node) for node in imports] == ["from __future__ import annotations"]


# --- --help and the README are made from the catalogue ---------------------------------


def _help(main, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("main", [vmtrust_cli.main, sync_cli.main], ids=["vmtrust", "sync"])
def test_help_lists_every_exit_status(main, capsys):
    out = _help(main, capsys)
    assert errors.help_epilog() in out
    listed = {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"^  (\d+) +(.+)$", out.split("Exit status:")[1], re.M)
    }
    assert listed == errors.exit_statuses()
    assert max(len(line) for line in out.splitlines()) <= 79  # one status per line


def test_readme_table_is_the_catalogue():
    readme = (ROOT / "README.md").read_text()
    table = errors.markdown_table()
    assert table in readme, f"regenerate README's exit-status table:\n{table}"
    # the README's table, from its header to the blank line after it (other tables of the
    # README have numeric first columns too: benchmark figures)
    start = readme.index(table.splitlines()[0])
    section = readme[start : readme.index("\n\n", start)]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M)
    assert {int(code): meaning for code, meaning in rows} == errors.exit_statuses()


# --- files over their limit: their own error, not an image list's -------------------------


def test_key_passphrase_and_user_data_files_too_large_are_file_errors(capsys, tmp_path, pki):
    big = tmp_path / "big"
    big.write_bytes(b"x" * (2 << 20))
    doc = write_list(tmp_path / "list.json", list_document(pki.endorser))
    cert, key = pki.endorser.write(tmp_path, "endorser")
    sign = ["list", "sign", doc, "--cert", cert, "--key", key, "--out", tmp_path / "out"]
    cases = {
        "passphrase file": [*sign, "--passphrase-file", big],
        "private key": ["list", "sign", doc, "--cert", cert, "--key", big],
        "certificate": ["list", "sign", doc, "--cert", big, "--key", key],
        "chain file": [*sign, "--chain", big],
        "user-data": ["context", "check", big],
    }
    for what, argv in cases.items():
        err = fails(capsys, errors.FileTooLarge.exit_code, *argv)
        assert f"{what} {big}: larger than the limit of" in err, err
    write_list(big, list_document(pki.endorser, images=[]))
    big.write_bytes(big.read_bytes().rstrip(b"}\n") + b"," + b" " * (9 << 20) + b"}\n")
    assert "larger than the limit" in fails(capsys, 38, "list", "show", big)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_an_endless_key_file_is_refused_not_read_forever(capsys, tmp_path, pki):
    """``--key /dev/zero`` was read whole into memory before the limit existed."""
    doc = write_list(tmp_path / "list.json", list_document(pki.endorser))
    cert, _ = pki.endorser.write(tmp_path, "endorser")
    err = fails(capsys, 3, "list", "sign", doc, "--cert", cert, "--key", "/dev/zero")
    assert "private key /dev/zero: larger than the limit" in err

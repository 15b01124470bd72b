"""The ``vmtrust`` command as other tools script it: exit status, stdout, one-line stderr.

Most tests call :func:`vmtrust.cli.main.main` in-process (fast); a few run the
installed console script and ``python -m vmtrust`` to prove those entry points.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_support import fails, run, write_list
from conftest import list_document

from vmtrust import imagelist, smime
from vmtrust.cli.main import main
from vmtrust.truststore import subject_hash

NOW = datetime.now(UTC)
OTHER_DN = "/DC=org/DC=example/O=People/CN=Someone Else"


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch):
    """No vmtrust.conf of the machine and no passphrase from the environment."""
    monkeypatch.setattr("oslo_config.cfg.find_config_files", lambda *a, **k: [])
    monkeypatch.delenv("VMTRUST_KEY_PASSPHRASE", raising=False)


@pytest.fixture
def signed(tmp_path, sign):
    path = tmp_path / "site.list"
    path.write_bytes(sign())
    return path


# --- list verify: each failed rule, its exit status, one line --------------------------


def _tampered(pki, sign, ca_dir):
    data = sign()
    bad = data.replace(b'"hv:version": "3"', b'"hv:version": "9"')
    assert bad != data
    return bad, []


def _no_crls(pki, sign, ca_dir):
    for crl in ca_dir.glob("*.r0"):
        crl.unlink()
    return sign(), []


def _unknown_ca(pki, sign, ca_dir):
    for installed in ca_dir.glob(f"{subject_hash(pki.other_ca.cert)}.*"):
        installed.unlink()
    return sign(signer=pki.other_endorser), []


def _doc(**kw):
    return lambda pki, sign, ca_dir: (sign(list_document(pki.endorser, **kw)), [])


VERIFY_FAILURES = {
    "tampered": (11, _tampered),
    "unknown-ca": (14, _unknown_ca),
    "rogue-ca": (14, lambda pki, sign, ca_dir: (sign(signer=pki.rogue), [])),
    "revoked": (15, lambda pki, sign, ca_dir: (sign(signer=pki.revoked), [])),
    "missing-crl": (16, _no_crls),
    "rollback": (17, lambda pki, sign, ca_dir: (sign(), ["--min-version", "3.1"])),
    "dn-mismatch": (12, _doc(dn=OTHER_DN)),
    "pin-mismatch": (
        13,
        lambda pki, sign, ca_dir: (sign(), ["--endorser-dn", OTHER_DN, "--endorser-ca", pki.ca.dn]),
    ),
    "pin-other-ca": (
        13,
        lambda pki, sign, ca_dir: (
            sign(),
            ["--endorser-dn", pki.endorser.dn, "--endorser-ca", pki.other_ca.dn],
        ),
    ),
    "identifier": (31, lambda pki, sign, ca_dir: (sign(), ["--identifier", "another-list"])),
    "future": (33, _doc(created=NOW + timedelta(days=1), expires=NOW + timedelta(days=9))),
    "expired": (34, _doc(created=NOW - timedelta(days=30), expires=NOW - timedelta(days=1))),
    "not-json": (
        37,
        lambda pki, sign, ca_dir: (
            smime.sign(b"this is not JSON\n", pki.endorser.cert, pki.endorser.key),
            [],
        ),
    ),
    "structure": (38, _doc(images=[{"hv:image": {"dc:title": "no identifier"}}])),
    "pin-unpaired": (4, lambda pki, sign, ca_dir: (sign(), ["--endorser-dn", pki.endorser.dn])),
}


@pytest.mark.parametrize("case", VERIFY_FAILURES)
def test_verify_failure_exit_status(case, capsys, tmp_path, pki, sign, ca_dir):
    code, make = VERIFY_FAILURES[case]
    data, extra = make(pki, sign, ca_dir)
    path = tmp_path / "site.list"
    path.write_bytes(data)
    fails(capsys, code, "list", "verify", path, "--ca-dir", ca_dir, *extra)


def test_verify_missing_crl_accepted_with_no_require_crls(capsys, signed, ca_dir, tmp_path):
    for crl in ca_dir.glob("*.r0"):
        crl.unlink()
    fails(capsys, 16, "list", "verify", signed, "--ca-dir", ca_dir)
    assert run(capsys, "list", "verify", signed, "--ca-dir", ca_dir, "--no-require-crls")[0] == 0
    conf = tmp_path / "vmtrust.conf"
    conf.write_text(f"[trust]\nca_dir = {ca_dir}\nrequire_crls = false\n")
    assert run(capsys, "--config-file", conf, "list", "verify", signed)[0] == 0


def test_verify_accepts_matching_pin_and_version(capsys, signed, ca_dir, pki):
    pins = ["--endorser-dn", OTHER_DN, "--endorser-ca", pki.ca.dn]
    pins += ["--endorser-dn", pki.endorser.dn, "--endorser-ca", pki.ca.dn]
    identifier = ["--identifier", "65ef8feb-86d4-42ea-9960-f79bcc5a11b4"]
    argv = ["list", "verify", signed, "--ca-dir", ca_dir, "--min-version", "3", *pins, *identifier]
    rc, out, err = run(capsys, *argv)
    assert (rc, err) == (0, "") and out.startswith(f"OK: list {identifier[1]} ")


@pytest.mark.parametrize("kind", ["missing", "directory", "bad-config", "config-dir"])
def test_verify_input_and_config_errors(kind, capsys, tmp_path, signed, ca_dir):
    bad = tmp_path / "vmtrust.conf"
    bad.write_text("[trust\nca_dir = /x\n")
    argv = {
        "missing": (3, ["list", "verify", tmp_path / "nothere", "--ca-dir", ca_dir]),
        "directory": (3, ["list", "verify", ca_dir, "--ca-dir", ca_dir]),
        "bad-config": (4, ["--config-file", bad, "list", "verify", signed, "--ca-dir", ca_dir]),
        "config-dir": (4, ["--config-file", ca_dir, "list", "verify", signed, "--ca-dir", ca_dir]),
    }
    code, args = argv[kind]
    fails(capsys, code, *args)


def test_hostile_text_stays_on_one_line(capsys, tmp_path, pki, sign, ca_dir):
    """A signed list's identifier/title cannot add lines to stderr or drive the terminal."""
    doc = list_document(pki.endorser, created=NOW - timedelta(days=9), expires=NOW - timedelta(1))
    doc["hv:imagelist"]["dc:identifier"] = "x\nvmtrust: forged line\x1b[2J"
    doc["hv:imagelist"]["dc:title"] = "evil\x1b]0;owned\x07\u202etitle\nsecond"
    path = tmp_path / "evil.list"
    path.write_bytes(sign(doc))
    err = fails(capsys, 34, "list", "verify", path, "--ca-dir", ca_dir)
    assert "\x1b" not in err and "x\\nvmtrust: forged line\\x1b[2J: expired" in err
    rc, out, _ = run(capsys, "list", "show", path)
    assert rc == 0
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "evil\\x1b]0;owned\\x07\\u202etitle\\nsecond" in out
    assert not [line for line in out.splitlines() if line.startswith(("second", "vmtrust:"))]


def test_garbage_input_never_crashes(capsys, tmp_path, sign, ca_dir):
    rng = random.Random(1234)
    signed_bytes = sign()
    inputs = {
        "empty": b"",
        "random": bytes(rng.randrange(256) for _ in range(4096)),
        "json": b'{"some": "json", "but": ["not", "a", "list"]}',
        "json-list": imagelist.dumps(list_document()),
        "huge": b"{" + b" " * (9 * 1024 * 1024) + b"}",
        "mime-ish": b"Content-Type: multipart/signed\r\n\r\n--x\r\n",
        "truncated": signed_bytes[: len(signed_bytes) // 2],
    }
    for i in range(40):
        mutated = bytearray(signed_bytes)
        for _ in range(rng.randrange(1, 6)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        inputs[f"mutated-{i}"] = bytes(mutated)
    path = tmp_path / "input"
    for name, data in inputs.items():
        path.write_bytes(data)
        for argv in (["list", "verify", path, "--ca-dir", ca_dir], ["list", "show", path]):
            rc, _, err = run(capsys, *argv)
            assert "Traceback" not in err, (name, argv[1])
            if rc == 0 and (name.startswith("mutated") or (name, argv[1]) == ("json-list", "show")):
                continue  # a valid plain list shows; some header changes are harmless
            assert 1 <= rc <= 123, (name, argv[1], rc)
            assert err.count("\n") == 1 and err.startswith("vmtrust: "), (name, err)
    path.write_bytes(inputs["huge"])
    assert run(capsys, "list", "verify", path, "--ca-dir", ca_dir)[0] == 38  # size limit


@pytest.mark.parametrize("edit", ["non-ascii-encoding", "rfc2231-protocol"])
def test_malformed_smime_headers_are_signature_errors(edit, capsys, tmp_path, signed, ca_dir):
    data = signed.read_bytes()
    if edit == "non-ascii-encoding":
        i = data.index(b"Content-Transfer-Encoding: base64")
        bad = data[:i] + data[i:].replace(b"base64", b"base\xe964", 1)
    else:
        bad = data.replace(
            b'protocol="application/x-pkcs7-signature"',
            b"protocol*=us-ascii''application%2Fx-pkcs7-signature",
            1,
        )
    assert bad != data
    signed.write_bytes(bad)
    fails(capsys, 11, "list", "verify", signed, "--ca-dir", ca_dir)


# --- list show -----------------------------------------------------------------------------


def test_show_plain_list(capsys, tmp_path, pki):
    path = write_list(tmp_path / "list.json", list_document(pki.endorser))
    rc, out, err = run(capsys, "list", "show", path)
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    fields = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in lines[:8]}
    assert fields["Title"] == "Example site images"
    assert fields["Identifier"] == "65ef8feb-86d4-42ea-9960-f79bcc5a11b4"
    assert fields["Version"] == "3"
    assert fields["Endorser"] == pki.endorser.dn
    assert "Signature    none (plain JSON list)" in lines
    header = next(i for i, line in enumerate(lines) if line.startswith("IDENTIFIER"))
    assert lines[header].split() == ["IDENTIFIER", "VERSION", "SIZE", "FORMAT", "OS", "TITLE"]
    assert lines[header + 1].split()[:4] == [
        "85bfb313-a852-444b-89e7-9cdf8c23dc91",
        "1.2",
        "20",
        "B",
    ]
    assert lines[header + 1].endswith("Example worker node")


def test_show_signed_list(capsys, signed, pki):
    rc, out, _ = run(capsys, "list", "show", signed)
    assert rc == 0
    assert f"matches the content, by {pki.endorser.dn}" in out
    assert "NOT checked against any CA" in out
    assert "Example site images" in out and "85bfb313-a852-444b-89e7-9cdf8c23dc91" in out


def test_show_tampered_signed_list_says_invalid(capsys, signed, pki, sign, ca_dir):
    signed.write_bytes(_tampered(pki, sign, ca_dir)[0])
    rc, out, _ = run(capsys, "list", "show", signed)
    assert rc == 0
    signature = next(line for line in out.splitlines() if line.startswith("Signature"))
    assert "INVALID" in signature and "NOT checked" not in signature


def test_show_json(capsys, tmp_path, signed, pki):
    document = list_document(pki.endorser)
    plain = write_list(tmp_path / "list.json", document)
    for path in (plain, signed):
        rc, out, _ = run(capsys, "list", "show", path, "--json")
        assert rc == 0
        assert json.loads(out) == document


def test_show_empty_list_and_invalid_list(capsys, tmp_path, pki):
    path = write_list(tmp_path / "list.json", list_document(pki.endorser, images=[]))
    rc, out, _ = run(capsys, "list", "show", path)
    assert rc == 0 and "No images" in out and "IDENTIFIER" not in out
    broken = list_document(pki.endorser)
    del broken["hv:imagelist"]["dc:title"]
    write_list(path, broken)
    rc, out, err = run(capsys, "list", "show", path)
    assert rc == 38 and "not a valid image list (1 problem, each printed above)" in err
    assert "NOT A VALID IMAGE LIST: 1 problem:\n  dc:title: missing\n" in out


# --- help, usage, entry points -----------------------------------------------------------


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "list" in out and "image" in out and "Exit status" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["list", "verify", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for option in (
        "SIGNED_FILE",
        "--ca-dir",
        "--endorser-dn",
        "--endorser-ca",
        "--min-version",
        "--json",
        "--no-require-crls",
    ):
        assert option in out


@pytest.mark.parametrize(
    "argv", [[], ["list"], ["list", "verify"], ["list", "verify", "f", "--bogus"]]
)
def test_usage_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("vmtrust: ") and err.count("\n") == 1, err


def _console(*args, **kw):
    return subprocess.run(
        [*args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, **kw
    )


def test_console_script_and_module(tmp_path, signed, ca_dir, pki, sign):
    script = Path(sys.executable).with_name("vmtrust")
    assert script.exists(), "the vmtrust console script is not installed"
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = _console(script, "list", "verify", signed, "--ca-dir", ca_dir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK: list 65ef8feb-86d4-42ea-9960-f79bcc5a11b4")

    tampered = tmp_path / "tampered.list"
    tampered.write_bytes(_tampered(pki, sign, ca_dir)[0])
    for command in ([script], [sys.executable, "-m", "vmtrust"]):
        proc = _console(*command, "list", "verify", tampered, "--ca-dir", ca_dir, env=env)
        assert proc.returncode == 11
        assert proc.stderr.startswith("vmtrust: ") and proc.stderr.count("\n") == 1
        assert "Traceback" not in proc.stderr

    proc = _console(sys.executable, "-m", "vmtrust", "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("vmtrust ")

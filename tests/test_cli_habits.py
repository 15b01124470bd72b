"""Habits of the command line (issue 13 item 5): global options where users type them,
``list show`` that names every problem and the signer mismatch, opaque S/MIME named as
such, and refusals that name the flag that relaxes them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import fails, ok, run, write_list
from conftest import image_entry, list_document
from test_sync_local import IMAGE_A, entry, publish
from test_verify_smime import openssl_sign

requires_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not on PATH")
OTHER_DN = "/DC=org/DC=example/O=People/CN=Someone Else"


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch):
    """No vmtrust.conf of the machine: only the --config-file the test gives counts."""
    monkeypatch.setattr("oslo_config.cfg.find_config_files", lambda *a, **k: [])
    monkeypatch.delenv("VMTRUST_KEY_PASSPHRASE", raising=False)


# --- global options after the command ----------------------------------------------------


@pytest.fixture
def synced_conf(tmp_path, sync, site, pki) -> Path:
    """A vmtrust.conf for the store and state of one real sync pass."""
    publish(site, pki, [entry("wn", IMAGE_A, site)], "1")
    assert sync.run(sync.subs).exit_code == 0
    (tmp_path / "subs.yaml").write_text(
        "subscriptions:\n  - name: example\n"
        f"    url: {site.url('/site.list')}\n"
        f"    endorsers:\n      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n"
        "    approve: all\n"
    )
    conf = tmp_path / "vmtrust.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
        f"[trust]\nseal_key = {tmp_path}/seal.key\n"
        f"[sync]\nsubscriptions_file = {tmp_path}/subs.yaml\n"
        f"[store_local]\npath = {tmp_path}/store\n"
    )
    return conf


@pytest.mark.parametrize("command", ["images", "status"])
def test_config_file_after_the_command_is_the_config_file(capsys, synced_conf, command):
    before = ok(capsys, "--config-file", synced_conf, command, "--json")
    assert json.loads(before)  # the synced image, the subscription: not an empty default
    assert ok(capsys, command, "--config-file", synced_conf, "--json") == before
    assert ok(capsys, command, "--json", f"--config-file={synced_conf}") == before


def test_global_options_after_a_verb_and_repeated(capsys, tmp_path, signed_list, ca_dir):
    """Every level takes them; config files of every level are read, the later winning."""
    good = tmp_path / "good.conf"
    good.write_text(f"[trust]\nca_dir = {ca_dir}\n")
    bad = tmp_path / "bad.conf"
    bad.write_text(f"[trust]\nca_dir = {tmp_path}/nowhere\n")
    ok(capsys, "list", "verify", signed_list, "--config-file", good)
    ok(capsys, "--config-file", bad, "list", "verify", signed_list, "--config-file", good)
    assert "nowhere" in fails(capsys, 4, "--config-file", good, "list", "--config-file", bad,
                              "verify", signed_list)  # fmt: skip
    rc, out, _ = run(capsys, "list", "verify", signed_list, "--config-file", good, "--debug")
    assert rc == 0 and out.startswith("OK: ")


def test_version_and_help_after_the_command(capsys):
    with pytest.raises(SystemExit) as info:
        run(capsys, "images", "--version")
    assert info.value.code == 0 and capsys.readouterr().out.startswith("vmtrust ")
    with pytest.raises(SystemExit):
        run(capsys, "status", "--help")
    out = capsys.readouterr().out
    assert "global options" in out and "--config-file FILE" in out and "--debug" in out
    with pytest.raises(SystemExit):  # 'list bump --version V' keeps its own meaning
        run(capsys, "list", "bump", "--help")
    assert "--version V" in capsys.readouterr().out


# --- list show -----------------------------------------------------------------------------


@pytest.fixture
def signed_list(tmp_path, sign) -> Path:
    path = tmp_path / "site.list"
    path.write_bytes(sign())
    return path


def test_show_prints_an_invalid_list_with_every_problem(capsys, tmp_path, pki):
    document = list_document(pki.endorser)
    fields = document["hv:imagelist"]
    fields["hv:endorser"]["hv:x509"]["hv:dn"] = ""
    del fields["dc:title"]
    fields["hv:images"][0]["hv:image"]["hv:size"] = "12x"
    path = write_list(tmp_path / "bad.json", document)
    rc, out, err = run(capsys, "list", "show", path)
    assert rc == 38
    assert err == f"vmtrust: list {path}: not a valid image list (3 problems, each printed above)\n"
    problems = out.split("NOT A VALID IMAGE LIST: 3 problems:\n")[1].splitlines()
    assert problems == [
        "  dc:title: missing",
        "  hv:endorser.hv:x509.hv:dn: is empty",
        '  hv:images[0].hv:size: not a non-negative integer: "12x"',
    ]
    assert "Identifier   65ef8feb-86d4-42ea-9960-f79bcc5a11b4" in out  # the rest is shown
    assert "Title        (missing)" in out and "Endorser     (empty)" in out
    row = next(line for line in out.splitlines() if line.startswith("85bfb313"))
    assert row.split()[:3] == ["85bfb313-a852-444b-89e7-9cdf8c23dc91", "1.2", "12x"]


def test_show_of_a_list_whose_fields_have_the_wrong_types(capsys, tmp_path, pki):
    """Nothing in an invalid list may be assumed: not a type, not a size that fits a float."""
    document = list_document(pki.endorser)
    fields = document["hv:imagelist"]
    fields["dc:title"] = {"nested": ["x"] * 3}
    huge = image_entry("huge", **{"hv:size": "9" * 4000})
    enormous = image_entry("enormous", **{"hv:size": 10**400})
    fields["hv:images"] = [7, {"hv:image": []}, huge, enormous]
    path = write_list(tmp_path / "bad.json", document)
    rc, out, err = run(capsys, "list", "show", path)
    assert rc == 38 and err.count("\n") == 1, err
    assert "Title        {...}" in out
    assert "hv:images[0]: not an object" in out and "hv:images[1]: not an object" in out
    assert "9" * 4000 in out and str(10**400) in out  # shown as they are, not as sizes


def test_show_says_when_hv_dn_is_not_the_signer(capsys, tmp_path, pki, sign):
    path = tmp_path / "other.list"
    path.write_bytes(sign(list_document(pki.endorser, dn=OTHER_DN)))
    rc, out, _ = run(capsys, "list", "show", path)
    assert rc == 0
    signature = out.split("Signature")[1].split("\n\n")[0].splitlines()
    assert signature[0].strip().startswith(f"matches the content, by {pki.endorser.dn}")
    assert signature[1].strip() == (
        f"DIFFERS from hv:dn/hv:ca: the signer is {pki.endorser.dn} issued by {pki.ca.dn} "
        "('vmtrust list verify' refuses the list)"
    )
    path.write_bytes(sign(list_document(pki.endorser, ca="/DC=org/DC=other/CN=Other CA")))
    assert "DIFFERS from hv:dn/hv:ca" in run(capsys, "list", "show", path)[1]
    path.write_bytes(sign())
    assert "DIFFERS" not in run(capsys, "list", "show", path)[1]


@requires_openssl
@pytest.mark.openssl
@pytest.mark.parametrize("verb", ["show", "verify"])
def test_opaque_smime_is_named_not_called_invalid_json(capsys, tmp_path, pki, ca_dir, verb):
    cert, key = pki.endorser.write(tmp_path, "endorser")
    write_list(tmp_path / "list.json", list_document(pki.endorser))
    subprocess.run(
        ["openssl", "smime", "-sign", "-nodetach", "-in", "list.json", "-out", "opaque.list",
         "-signer", cert, "-inkey", key],
        cwd=tmp_path, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    extra = ["--ca-dir", ca_dir] if verb == "verify" else []
    err = fails(capsys, 11, "list", verb, tmp_path / "opaque.list", *extra)
    assert "opaque S/MIME (application/pkcs7-mime) is not supported" in err
    assert "JSON" not in err


# --- refusals that name the flag -------------------------------------------------------------


def test_missing_crl_names_the_config_option_and_the_flag(capsys, signed_list, ca_dir):
    for crl in ca_dir.glob("*.r0"):
        crl.unlink()
    err = fails(capsys, 16, "list", "verify", signed_list, "--ca-dir", ca_dir)
    assert "[trust] require_crls = false" in err and "--no-require-crls" in err


@requires_openssl
@pytest.mark.openssl
def test_sha1_refusal_names_the_config_option_and_the_flag(capsys, tmp_path, pki, ca_dir):
    path = tmp_path / "sha1.list"
    path.write_bytes(openssl_sign(tmp_path, pki.endorser, "-md", "sha1"))
    err = fails(capsys, 11, "list", "verify", path, "--ca-dir", ca_dir)
    assert "[trust] allow_sha1 = true" in err and "--allow-sha1" in err
    assert ok(capsys, "list", "verify", path, "--ca-dir", ca_dir, "--allow-sha1")


def test_the_console_script_takes_options_after_the_command(tmp_path, signed_list, ca_dir):
    """As a site types it, in a process of its own."""
    conf = tmp_path / "vmtrust.conf"
    conf.write_text(f"[trust]\nca_dir = {ca_dir}\n")
    result = subprocess.run(
        [Path(sys.executable).parent / "vmtrust", "list", "verify", signed_list,
         "--config-file", conf],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "")

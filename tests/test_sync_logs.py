"""The sync's log: one line per event with subscription, image and version in fixed keys,
text or JSON lines, and nothing secret in either."""

from __future__ import annotations

import base64
import json
import logging
import re

import pytest
from httpserve import Behaviour
from ops_support import BAD, image, make_site, publish, run, subscription

from glance_sync.eventlog import KEYS, JsonFormatter, TextFormatter, log_event
from glance_sync.report import Event

JSON_KEYS = {"time", "level", "logger", "event", *KEYS, "message"}
TEXT_EVENT = re.compile(
    r"^\S+ \S+ vmtrust\.sync\.event (INFO|ERROR) event=(\S+) subscription=(\S+) "
    r'image=("(?:[^"\\]|\\.)*"|\S+) version=(\S+) rule=(\S+) (.*)$'
)


def json_lines(text: str) -> list[dict]:
    records = [json.loads(line) for line in text.strip().splitlines()]
    for record in records:
        assert set(record) - {"traceback"} == JSON_KEYS, record
    return records


def test_json_lines_give_every_event_its_keys(tmp_path, ca_dir, site, pki):
    conf = make_site(tmp_path, ca_dir, site, pki)
    result = run("vmtrust-sync", conf, "--log-format", "json", "-v")
    assert result.returncode == 1
    records = json_lines(result.stderr)  # every line of stderr is one JSON object
    events = {(r["event"], r["subscription"], r["image"]): r for r in records if r["event"]}
    stored = events[("stored", "example", "wn")]
    assert stored["version"] == "1.0" and stored["level"] == "info" and stored["rule"] is None
    assert stored["message"] == "stored wn 1.0 (Example worker node)"
    bad = events[("image-failed", "example", "bad")]
    assert bad["level"] == "error" and bad["rule"] == "transfer" and bad["version"] == "1.0"
    assert "SHA-512" in bad["message"]
    assert events[("list-failed", "broken", None)]["rule"] == "fetch"
    assert events[("list-failed", "revoked", None)]["rule"] == "revoked"
    verified = events[("list-verified", "example", None)]
    assert verified["version"] == "7" and verified["level"] == "info"
    # the failures are the events: no text summary after the pass
    assert not [r for r in records if r["message"].startswith("vmtrust-sync:")]
    assert len([r for r in records if r["level"] == "error"]) == 3


def test_json_without_verbose_shows_each_failure_once(tmp_path, ca_dir, site, pki):
    conf = make_site(tmp_path, ca_dir, site, pki, sync="log_format = json\n")
    result = run("vmtrust-sync", conf)  # the option, not the flag
    records = json_lines(result.stderr)
    assert sorted((r["event"], r["subscription"]) for r in records) == [
        ("image-failed", "example"),
        ("list-failed", "broken"),
        ("list-failed", "revoked"),
    ]


def test_text_events_lead_with_fixed_keys_and_the_summary_stays(tmp_path, ca_dir, site, pki):
    conf = make_site(tmp_path, ca_dir, site, pki)
    quiet = run("vmtrust-sync", conf)
    assert quiet.returncode == 1
    assert all(line.startswith("vmtrust-sync: ") for line in quiet.stderr.splitlines())
    assert len(quiet.stderr.splitlines()) == 3  # the summary: one line per failure
    publish(site, "/example.list", pki.endorser, [image(site, "nw", BAD)], version="8")
    result = run("vmtrust-sync", conf, "-v")
    events = [m.groups() for m in map(TEXT_EVENT.match, result.stderr.splitlines()) if m]
    by_kind = {(e[1], e[3]): e for e in events}
    level, _, sub, _, version, rule, text = by_kind[("stored", "nw")]
    assert (level, sub, version, rule) == ("INFO", "example", "1.0", "-")
    assert text.startswith("stored nw 1.0")
    retired = by_kind[("retired", "wn")]  # left the list of version 8
    assert retired[2] == "example" and retired[4] == "1.0"
    assert by_kind[("list-verified", "-")][4] == "8"
    failed = by_kind[("list-failed", "-")]
    assert failed[0] == "ERROR" and failed[5] in {"fetch", "revoked"}
    summary = [line for line in result.stderr.splitlines() if line.startswith("vmtrust-sync: ")]
    assert len(summary) == 2  # broken and revoked, after the pass as before


def test_a_hostile_identifier_cannot_forge_a_key(tmp_path, ca_dir, site, pki):
    conf = make_site(tmp_path, ca_dir, site, pki)
    hostile = 'x subscription=other image="y" \x1b[31m\nforged'
    entry = image(site, hostile, b"z", path="/img/hostile.img")
    publish(site, "/example.list", pki.endorser, [entry], version="8")
    result = run("vmtrust-sync", conf, "-v")
    (line,) = [ln for ln in result.stderr.splitlines() if "event=stored" in ln]
    match = TEXT_EVENT.match(line)
    assert match, line
    assert match.group(3) == "example"
    assert match.group(4) == '"x subscription=other image=\\"y\\" \\\\x1b[31m\\\\nforged"'
    assert "\x1b" not in result.stderr and "\nforged" not in result.stderr


SECRET_TOKEN = "tok-3f9a1c7e-never-log-me"
SECRET_PASSWORD = "pw-hunter2-never-log-me"


@pytest.mark.parametrize("form", ["text", "json"])
def test_nothing_secret_in_either_log_form(tmp_path, ca_dir, site, pki, form):
    """Credentials of a subscription (a token file) and a password in an image URI of a
    list never reach the log, at the most verbose level, in either form."""
    token = tmp_path / "token"
    token.write_text(SECRET_TOKEN + "\n")
    token.chmod(0o600)
    conf = make_site(tmp_path, ca_dir, site, pki)
    entry = image(site, "wn", BAD)
    url = entry["hv:image"]["hv:uri"]
    entry["hv:image"]["hv:uri"] = url.replace("http://", f"http://jane:{SECRET_PASSWORD}@")
    site.behaviour["/img/wn.img"] = Behaviour(status=404)  # its URI is in the failure line
    publish(site, "/example.list", pki.endorser, [entry], version="8")
    (tmp_path / "subs.yaml").write_text(
        "subscriptions:\n"
        + subscription(
            "example",
            site.url("/example.list"),
            pki.endorser,
            f"    credentials: {{token_file: {token}}}\n",
        )
        + subscription("broken", site.url("/missing.list") + "?x=1", pki.endorser)
    )
    result = run("vmtrust-sync", conf, "--log-format", form, "-vv")
    basic = base64.b64encode(f"{SECRET_TOKEN}:x-oauth-basic".encode()).decode()
    assert f"Basic {basic}" in site.authorization  # the token was used, so it was read
    output = result.stdout + result.stderr
    for secret in (SECRET_TOKEN, SECRET_PASSWORD, basic):
        assert secret not in output
    assert "jane:" not in output and "***@127.0.0.1" in output
    if form == "json":
        json_lines(result.stderr)


def test_formatters_redact_and_keep_one_line():
    event = Event("image-failed", "image a: https://u:pw@h/x: HTTP 500\nnext", "s", "a\nb", "1")
    records = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("vmtrust.sync.event")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # whatever an in-process command left
    try:
        log_event(event)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    (record,) = records
    text = TextFormatter("%(levelname)s %(message)s").format(record)
    assert text == (
        'ERROR event=image-failed subscription=s image="a\\\\nb" version=1 rule=- '
        "image a: https://***@h/x: HTTP 500\\nnext"
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line and "pw" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "image a: https://***@h/x: HTTP 500\nnext"
    assert parsed["image"] == "a\nb" and parsed["level"] == "error"

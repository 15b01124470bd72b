"""Bounded YAML: every YAML vmtrust reads is refused fast, in bounded memory, when it is a bomb.

The attacks run the real commands in a subprocess under an address-space
limit and a timeout; a small wrapper process reports the child's peak memory
(``getrusage``), so the measurement is the command's own and not this test's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from vmtrust import yamlsafe
from vmtrust.context import load_site
from vmtrust.policy import load_subscriptions, parse_subscriptions
from vmtrust.record import generate_key_pair

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "etc" / "vmtrust" / "context"

#: 9 levels of 9 aliases: about 400 bytes that stand for 9^9 (387 million) strings
LAUGHS = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{c}: &{c} [{','.join(['*' + p] * 9)}]"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)

#: runs argv[3:] under an address-space limit and a timeout; prints what happened as JSON
_MEASURE = textwrap.dedent(
    """
    import json, resource, subprocess, sys
    limit, timeout = int(sys.argv[1]), float(sys.argv[2])
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        done = subprocess.run(sys.argv[3:], capture_output=True, text=True,
                              timeout=timeout, preexec_fn=cap, stdin=subprocess.DEVNULL)
        status, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired:
        status, stderr = "timeout", ""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"status": status, "stderr": stderr, "peak_kib": usage.ru_maxrss,
                      "cpu": usage.ru_utime + usage.ru_stime}))
    """
)
ADDRESS_SPACE = 512 * 1024 * 1024  #: the bombs took 5.5 and 8.3 GB
TIMEOUT = 10.0  #: they took two minutes and 83 s
PEAK = 100 * 1024  #: KiB: the brief's 100 MiB, for the whole command (startup is ~50)


def measured(*argv: str | Path) -> dict:
    """Run a command of this checkout under the limits; its status, stderr, peak memory."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    wrapper = [sys.executable, "-c", _MEASURE, str(ADDRESS_SPACE), str(TIMEOUT)]
    done = subprocess.run(
        [*wrapper, sys.executable, *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT * 3,
        check=True,
    )
    return json.loads(done.stdout)


def assert_refused_fast(result: dict, names: str) -> None:
    """Exit 3 with one line naming the document and the limit, within time and memory."""
    assert result["status"] == 3, result
    lines = result["stderr"].splitlines()
    assert len(lines) == 1, result["stderr"]
    assert names in lines[0] and "YAML refused: expands to more than" in lines[0], lines[0]
    assert result["peak_kib"] < PEAK, f"peak {result['peak_kib']} KiB"


# --- the three inputs, attacked through the real commands ---------------------------------


def test_alias_bomb_in_user_data_is_refused_by_context_check(tmp_path):
    user_data = tmp_path / "bomb.yaml"
    user_data.write_text(f"#cloud-config\n{LAUGHS}\npackages: *i\n")
    assert len(user_data.read_bytes()) < 400
    for site in ([], ["--site", SAMPLES / "site.yaml"]):
        result = measured("-m", "vmtrust", "context", "check", user_data, *site)
        assert_refused_fast(result, "user-data part part-001: line ")


def test_alias_bomb_in_a_gzipped_multipart_user_data_is_refused(tmp_path):
    """The same bomb as the second part of a gzipped MIME message: found where cloud-init looks."""
    import gzip
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    message = MIMEMultipart()
    message.attach(MIMEText("#!/bin/sh\necho hello\n", "x-shellscript"))
    part = MIMEText(f"#cloud-config\n{LAUGHS}\nruncmd: *i\n", "cloud-config")
    part.add_header("Content-Disposition", "attachment", filename="evil.cfg")
    message.attach(part)
    user_data = tmp_path / "bomb.gz"
    user_data.write_bytes(gzip.compress(message.as_bytes()))
    result = measured("-m", "vmtrust", "context", "check", user_data)
    assert_refused_fast(result, "user-data part evil.cfg: line ")


def test_gzip_bomb_in_user_data_is_refused_by_context_check(tmp_path):
    """A megabyte of gzip that unpacks to a gigabyte: refused while unpacking, not after."""
    import zlib

    engine = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1024 * 1024)
    bomb = b"".join([engine.compress(b"#cloud-config\n")] +
                    [engine.compress(zeros) for _ in range(1024)] + [engine.flush()])  # fmt: skip
    user_data = tmp_path / "bomb.gz"
    user_data.write_bytes(bomb)
    assert len(bomb) < 2 * 1024 * 1024
    result = measured("-m", "vmtrust", "context", "check", user_data)
    assert result["status"] == 5, result
    lines = result["stderr"].splitlines()
    assert len(lines) == 1 and "unpacks to more than" in lines[0], result["stderr"]
    assert result["peak_kib"] < PEAK, f"peak {result['peak_kib']} KiB"


def _sync_config(tmp_path: Path, subscriptions: Path) -> Path:
    generate_key_pair(tmp_path / "seal.key")
    conf = tmp_path / "vmtrust.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path / 'state'}\n"
        f"[trust]\nseal_key = {tmp_path / 'seal.key'}\nca_dir = {tmp_path}\n"
        f"[sync]\nsubscriptions_file = {subscriptions}\n"
        f"[store_local]\npath = {tmp_path / 'store'}\n"
    )
    return conf


def test_alias_bomb_in_the_subscriptions_file_is_refused_by_the_sync(tmp_path):
    subscriptions = tmp_path / "subscriptions.yaml"
    subscriptions.write_text(
        f"{LAUGHS}\nsubscriptions:\n"
        "  - {name: x, url: 'https://example.org/x.list', approve_all: true, new_images: *i}\n"
    )
    conf = _sync_config(tmp_path, subscriptions)
    result = measured("-m", "glance_sync", "--config-file", conf, "--dry-run")
    assert result["stderr"].startswith("vmtrust-sync: ")
    assert_refused_fast(result, f"{subscriptions}: line ")
    assert not (tmp_path / "store").exists()  # refused before anything was touched


@pytest.mark.parametrize("which", ["site", "vo"])
def test_alias_bomb_in_a_profile_is_refused_by_context_build(tmp_path, which):
    site, vo = SAMPLES / "site.yaml", SAMPLES / "vo.yaml"
    bomb = tmp_path / f"{which}.yaml"
    sample = (site if which == "site" else vo).read_text()
    bomb.write_text(f"{sample}\n{LAUGHS}\npackages: *i\n")
    site, vo = (bomb, vo) if which == "site" else (site, bomb)
    result = measured("-m", "vmtrust", "context", "build", "--site", site, "--vo", vo)
    assert_refused_fast(result, f"{ {'site': 'site', 'vo': 'VO'}[which] } profile {bomb}")


# --- each limit, through the loader the commands share ------------------------------------


def refused(text: str) -> str:
    with pytest.raises(yamlsafe.YamlRefused) as caught:
        yamlsafe.load(text, source="doc.yaml")
    message = str(caught.value)
    assert message.startswith("doc.yaml: ") and "\n" not in message
    return message


@pytest.mark.parametrize(
    "text",
    [
        "".join(f"{' ' * i}k{i}:\n" for i in range(200)) + " " * 200 + "end",
        "- " * 200 + "x",
        "a: " + "[" * 200 + "]" * 200,
    ],
    ids=["block-mapping", "block-sequence", "flow"],
)
def test_deep_nesting_is_refused_not_a_recursion_error(text):
    assert f"nested deeper than {yamlsafe.MAX_DEPTH} levels" in refused(text)


def test_very_deep_flow_nesting_is_an_error_not_a_recursion_error():
    # libyaml's scanner stops at 1000 levels before the composer sees the 65th
    with pytest.raises((yamlsafe.YamlRefused, yaml.YAMLError)):
        yamlsafe.load("[" * 100_000 + "]" * 100_000, source="doc.yaml")


def test_depth_counts_what_an_alias_repeats():
    inner = "[" * 40 + "]" * 40
    message = refused(f"a: &a {inner}\nb: {'[' * 30}*a{']' * 30}\n")
    assert "line 2: YAML refused: nested deeper than" in message
    yamlsafe.load(f"a: &a {inner}\nb: {'[' * 20}*a{']' * 20}\n", source="doc.yaml")


def test_too_many_aliases_are_refused_even_when_each_is_small():
    text = "a: &a x\nb: [" + ", ".join(["*a"] * (yamlsafe.MAX_ALIASES + 1)) + "]\n"
    assert f"more than {yamlsafe.MAX_ALIASES} aliases" in refused(text)
    yamlsafe.load(text.replace("*a]", "x]"), source="doc.yaml")  # one fewer alias: accepted


def test_expansion_through_merge_keys_is_counted():
    lines = ["a0: &a0 {" + ", ".join(f"k{i}: {i}" for i in range(20)) + "}"]
    for level in range(1, 8):
        merged = ", ".join([f"*a{level - 1}"] * 8)
        lines.append(f"a{level}: &a{level} {{<<: [{merged}], x{level}: 1}}")
    assert "expands to more than" in refused("\n".join(lines))


def test_an_alias_inside_its_own_node_is_refused():
    assert "alias *a is inside the node it names" in refused("a: &a [1, *a]\n")
    assert "alias *m is inside the node it names" in refused("m: &m {x: {y: *m}}\n")


def test_a_document_over_the_size_limit_is_refused_before_parsing(tmp_path):
    big = "x: '" + "y" * yamlsafe.MAX_BYTES + "'\n"
    assert "larger than the limit of" in refused(big)
    path = tmp_path / "big.yaml"
    path.write_text(big)
    with pytest.raises(yamlsafe.YamlRefused, match=r"^big profile .*larger than the limit"):
        yamlsafe.load_file(path, source=f"big profile {path}")


def test_huge_integers_are_refused_not_computed():
    base60 = "a: " + ":".join(["59"] * 200_000) + "\n"  # quadratic to build
    assert "an integer of" in refused(base60)
    assert "an integer of" in refused("a: " + "9" * 5000 + "\n")  # over int's digit limit
    assert yamlsafe.load("a: 1:30\nb: 0x1F\nc: 1_000\n", source="x") == {
        "a": 90,
        "b": 31,
        "c": 1000,
    }


def test_a_value_that_cannot_be_built_is_a_yaml_error_with_its_line():
    with pytest.raises(yaml.YAMLError) as caught:
        yamlsafe.load("a: 1\nb: 2001-13-45\n", source="x")
    assert caught.value.problem_mark.line == 1  # type: ignore[attr-defined]  # a MarkedYAMLError
    assert "month must be in 1..12" in caught.value.problem  # type: ignore[attr-defined]  # a MarkedYAMLError


def test_unsafe_tags_and_syntax_errors_are_yaml_errors_as_with_safe_load():
    for text in ("a: !!python/object/apply:os.system ['true']\n", "a: [1\n", "a: *nowhere\n"):
        with pytest.raises(yaml.YAMLError):
            yamlsafe.load(text, source="x")


def test_ordinary_documents_with_a_few_anchors_load_as_safe_load_loads_them():
    text = textwrap.dedent(
        """
        defaults: &defaults {owner: root, permissions: '0644'}
        write_files:
          - {<<: *defaults, path: /etc/a, content: "a\\n"}
          - {<<: *defaults, path: /etc/b, content: "b\\n", permissions: '0600'}
        when: 2024-05-01
        big: 123456789012345678901234567890
        list: &l [1, 2.5, true, null, "text"]
        again: *l
        """
    )
    assert yamlsafe.load(text, source="x") == yaml.safe_load(text)
    for sample in sorted(SAMPLES.glob("*.yaml")):
        content = sample.read_text()
        assert yamlsafe.load(content, source=str(sample)) == yaml.safe_load(content)
    assert yamlsafe.load("", source="x") is None
    assert yamlsafe.load(b"a: 1\n", source="x") == {"a": 1}


def test_profiles_and_subscriptions_report_a_bomb_as_one_line_naming_the_file(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(f"{(SAMPLES / 'site.yaml').read_text()}\n{LAUGHS}\n")
    with pytest.raises(yamlsafe.YamlRefused, match=rf"^site profile {site}: line \d+: YAML"):
        load_site(site)
    subscriptions = tmp_path / "subscriptions.yaml"
    subscriptions.write_text(f"{LAUGHS}\nsubscriptions: []\n")
    with pytest.raises(yamlsafe.YamlRefused, match=rf"^{subscriptions}: line 6: YAML refused"):
        load_subscriptions(subscriptions)
    with pytest.raises(yamlsafe.YamlRefused, match=r"^subscriptions: line 1: .*inside the node"):
        parse_subscriptions("subscriptions: &s [*s]\n")

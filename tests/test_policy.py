"""Site policy: the subscriptions file, approval of images, credentials."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import image_entry, list_document

from vmtrust import imagelist
from vmtrust.errors import ConfigError
from vmtrust.policy import Credentials, load_subscriptions, parse_subscriptions

ID_A = "85bfb313-a852-444b-89e7-9cdf8c23dc91"
ID_B = "0b0c6a3e-6b3e-4e4b-9a52-0f5ad7b1e001"
ENDORSERS = """\
    endorsers:
      - dn: /DC=org/DC=example/O=People/CN=Jane Endorser
        ca: /DC=org/DC=example/CN=Example Test CA
"""


def subs(body: str = "", *, approve: str = "all", name: str = "example") -> str:
    """A one-subscription file; ``body`` adds (indented) keys to the subscription."""
    extra = textwrap.indent(textwrap.dedent(body).rstrip("\n") + "\n", "    ") if body else ""
    return (
        "subscriptions:\n"
        f"  - name: {name}\n"
        "    url: https://images.example.org/lists/site.list\n"
        f"{ENDORSERS}"
        "    vo: vo.example.org\n"
        f"    approve: {approve}\n"
        f"{extra}"
    )


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_subscriptions(text, "subs.yaml")
    return info.value.problems


def one(text: str):
    (sub,) = parse_subscriptions(text, "subs.yaml")
    return sub


def the_list(*images):
    return imagelist.validate(list_document(images=list(images) or [image_entry()]))


# --- parsing ------------------------------------------------------------------------


def test_the_smallest_file_from_the_issue_parses():
    sub = one(subs())
    assert sub.name == "example"
    assert sub.url == "https://images.example.org/lists/site.list"
    assert [(e.dn, e.ca) for e in sub.endorsers] == [
        ("/DC=org/DC=example/O=People/CN=Jane Endorser", "/DC=org/DC=example/CN=Example Test CA")
    ]
    assert sub.vo == "vo.example.org"
    assert sub.approve_all and sub.new_images == "accept" and not sub.site
    assert sub.identifier is None and sub.tls_ca is None


def test_identifiers_rules_and_options_are_read(tmp_path: Path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    sub = one(
        subs(
            f"""\
            identifier: 65ef8feb-86d4-42ea-9960-f79bcc5a11b4
            new_images: refuse
            site: true
            tls_ca: {ca}
            credentials: {{username: jane, password_env: PW}}
            """,
            approve=f"[{ID_A}, {{os: Linux, osversion: 9}}]",
        )
    )
    assert not sub.approve_all and sub.identifiers == {ID_A}
    assert [(r.index, r.match) for r in sub.rules] == [(1, (("os", "Linux"), ("osversion", "9")))]
    assert sub.identifier == "65ef8feb-86d4-42ea-9960-f79bcc5a11b4"
    assert (sub.new_images, sub.site, sub.tls_ca) == ("refuse", True, str(ca))
    assert sub.credentials == Credentials(username="jane", password_env="PW")


def test_message_names_file_key_path_and_problem():
    text = subs().replace("https://images.example.org/lists/site.list", "ftp://x")
    message = "subs.yaml: subscriptions[0].url: not an http, https or file URL: ftp://x"
    with pytest.raises(ConfigError) as info:
        parse_subscriptions(text, "subs.yaml")
    assert str(info.value) == message and info.value.problems == [message]


BAD = [
    (subs().replace("  - name: example\n", "  - url: x\n", 1), "name", "missing"),
    (subs(name="'bad name'"), "name", "'bad name': use letters"),
    (subs(name="'-x'"), "name", "use letters"),
    (subs(name="123"), "name", "not a non-empty string: 123"),
    (subs().replace("https://images", "HTTPS://images"), "url", "not an http"),
    (subs().replace("https://images", "https//images"), "url", "not an http"),
    (subs().replace("images.example.org", "'[::1'"), "url", "not a valid URL"),
    (subs().replace("https://images.example.org", "https://"), "url", "no host"),
    (subs().replace(ENDORSERS, "    endorsers: []\n"), "endorsers", "non-empty"),
    (subs().replace(ENDORSERS, "    endorsers: [x]\n"), "endorsers[0]", "mapping"),
    (subs().replace("dn: /DC", "dn: DC"), "endorsers[0].dn", "slash-form"),
    (subs().replace("    ca: /DC=org", "    cb: /DC=org"), "endorsers[0].ca", "missing"),
    (subs().replace("    approve: all\n", ""), "approve", "missing"),
    (subs(approve="everything"), "approve", "must be 'all' or a list"),
    (subs(approve="[{colour: red}]"), "approve[0]", "unknown rule key 'colour'"),
    (subs(approve="[{os: [a]}]"), "approve[0]", "rule values must be strings"),
    (subs(approve="[{os: yes}]"), "approve[0]", "rule values must be strings"),
    (subs(approve="[{osversion: 8.10}]"), "approve[0]", "rule values must be strings"),
    (subs(approve="[7]"), "approve[0]", "not an image identifier or a rule"),
    (subs("new_images: maybe"), "new_images", "must be accept or refuse"),
    (subs("site: 'yes'"), "site", "must be true or false"),
    (subs("tls_ca: /nonexistent/ca.pem"), "tls_ca", "no such file"),
    (subs("colour: red"), "colour", "unknown key"),
    (subs("credentials: [x]"), "credentials", "must be a mapping"),
    (subs("credentials: {password_file: a, password_env: B}"), "credentials", "not both"),
    (subs("credentials: {token_file: a, token_env: B}"), "credentials", "not both"),
    (subs("vo: 5").replace("    vo: vo.example.org\n", ""), "vo", "not a non-empty"),
    (subs("identifier: ''"), "identifier", "not a non-empty string"),
]


@pytest.mark.parametrize(("text", "path", "fragment"), BAD)
def test_each_problem_names_its_key_path(text: str, path: str, fragment: str):
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert f"subs.yaml: subscriptions[0].{path}: " in problems[0] and fragment in problems[0]


def test_inline_secret_is_refused_without_echoing_it():
    problems = problems_of(subs("credentials: {username: u, password: hunter2}"))
    assert problems == [
        "subs.yaml: subscriptions[0].credentials.password: "
        "unknown key (secrets come from *_file or *_env keys, never inline)"
    ]
    assert "hunter2" not in problems[0]


def test_all_problems_are_collected_across_keys_and_subscriptions():
    bad_first = subs("vo: 5\nnew_images: later").replace("    vo: vo.example.org\n", "")
    bad_first = bad_first.replace("https://images", "gopher://images")
    second = subs(name="second", approve="nope").replace("subscriptions:\n", "")
    with pytest.raises(ConfigError) as info:
        parse_subscriptions(bad_first + second, "subs.yaml")
    problems = info.value.problems
    assert [p.split(": ")[1] for p in problems] == [
        "subscriptions[0].url",
        "subscriptions[0].new_images",
        "subscriptions[0].vo",
        "subscriptions[1].approve",
    ]
    assert str(info.value) == problems[0] + " (and 3 more problems)"


def test_duplicate_names_are_a_problem():
    text = subs() + subs(approve="[x]").replace("subscriptions:\n", "")
    assert problems_of(text) == [
        "subs.yaml: subscriptions[1].name: 'example' is already used by subscriptions[0]"
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("subscriptions: [a\n  b: c", "not valid YAML at line"),
        ("- just a list", "must be a mapping with a 'subscriptions' list"),
        ("subscriptions: {name: x}", "must be a mapping with a 'subscriptions' list"),
        ("", "must be a mapping"),
        ("subscriptions: [x]", r"subscriptions\[0\]: not a mapping"),
    ],
)
def test_document_level_problems(text: str, fragment: str):
    with pytest.raises(ConfigError, match=fragment) as info:
        parse_subscriptions(text, "subs.yaml")
    assert str(info.value).startswith("subs.yaml: ")


def test_load_subscriptions_names_the_file(tmp_path: Path):
    path = tmp_path / "subs.yaml"
    path.write_text(subs())
    assert load_subscriptions(path)[0].name == "example"
    path.write_text(subs("site: 1"))
    with pytest.raises(ConfigError, match=rf"^{path}: subscriptions\[0\]\.site: "):
        load_subscriptions(path)


@pytest.mark.parametrize("kind", ["missing", "directory", "not utf-8"])
def test_load_subscriptions_unreadable(tmp_path: Path, kind: str):
    path = tmp_path / "subs.yaml"
    if kind == "directory":
        path.mkdir()
    elif kind == "not utf-8":
        path.write_bytes(b"subscriptions: \xff\xfe\n")
    with pytest.raises(ConfigError, match=f"^subscriptions file {path}: "):
        load_subscriptions(path)


# --- approval -------------------------------------------------------------------------


def test_approve_all():
    lst = the_list()
    assert one(subs()).approval(lst.images[0], lst, None) == "all"


def test_site_list_images_are_recorded_as_the_sites_own():
    lst = the_list(image_entry(ID_A), image_entry(ID_B))
    sub = one(subs("site: true", approve=f"[{ID_B}]"))
    assert sub.site
    # the site's own list still needs approval; what it approves is marked "site"
    assert [sub.approval(img, lst, None) for img in lst.images] == [None, "site"]
    assert one(subs("site: true")).approval(lst.images[0], lst, None) == "site"


def test_approve_by_identifier_only_the_listed_images():
    lst = the_list(image_entry(ID_A), image_entry(ID_B))
    sub = one(subs(approve=f"[{ID_B}]"))
    assert [sub.approval(img, lst, None) for img in lst.images] == [None, "identifier"]


@pytest.mark.parametrize(
    ("rule", "approved"),
    [
        ("{os: linux, arch: X86_64, hypervisor: kvm}", True),  # case-insensitive
        ("{osname: alma*, osversion: '9'}", True),  # globs
        ("{osversion: 9}", True),  # a YAML number is compared as text
        ("{format: qcow2, title: '*worker*'}", True),
        (f"{{identifier: '{ID_A[:8]}*'}}", True),
        ("{os: Linux, arch: aarch64}", False),  # every key must match
        ("{hypervisor: xen}", False),
        ("{vo: vo.example.org}", True),
        ("{vo: other.vo}", False),
    ],
)
def test_approval_rules(rule: str, approved: bool):
    lst = the_list()
    sub = one(subs(approve=f"[{ID_B}, {rule}]"))
    assert sub.approval(lst.images[0], lst, None) == ("rule:1" if approved else None)
    first = one(subs(approve=f"[{{os: windows}}, {rule}, {{os: linux}}]"))
    assert first.approval(lst.images[0], lst, None) == ("rule:1" if approved else "rule:2")


def test_vo_rule_uses_the_subscription_vo_before_the_list_vo():
    lst = the_list()  # the list says ad:vo vo.example.org
    sub = one(subs(approve="[{vo: cms}]").replace("vo: vo.example.org", "vo: cms"))
    assert sub.approval(lst.images[0], lst, None) == "rule:0"
    without_vo = one(subs(approve="[{vo: vo.example.org}]").replace("    vo: vo.example.org\n", ""))
    assert without_vo.vo is None
    assert without_vo.approval(lst.images[0], lst, None) == "rule:0"


def test_new_images_refuse_holds_back_images_not_known_at_first_use():
    lst = the_list(image_entry(ID_A), image_entry(ID_B))
    sub = one(subs("new_images: refuse"))
    known = frozenset({ID_A})
    assert [sub.approval(img, lst, known) for img in lst.images] == ["all", None]
    # first use: nothing is known yet, so everything approved is taken
    assert [sub.approval(img, lst, None) for img in lst.images] == ["all", "all"]


def test_new_images_refuse_applies_to_rules_but_not_to_listed_identifiers():
    lst = the_list(image_entry(ID_A), image_entry(ID_B))
    ruled = one(subs("new_images: refuse", approve="[{os: linux}]"))
    assert [ruled.approval(img, lst, frozenset()) for img in lst.images] == [None, None]
    named = one(subs("new_images: refuse", approve=f"[{ID_B}, {{os: linux}}]"))
    assert [named.approval(img, lst, frozenset()) for img in lst.images] == [None, "identifier"]


def test_new_images_accept_ignores_known():
    lst = the_list(image_entry(ID_A), image_entry(ID_B))
    sub = one(subs())
    assert [sub.approval(img, lst, frozenset({ID_A})) for img in lst.images] == ["all", "all"]


# --- credentials ----------------------------------------------------------------------


def test_token_from_file_is_appdb_form(tmp_path: Path):
    assert one(subs()).credentials.basic_auth() is None
    token = tmp_path / "token"
    token.write_text("s3cr3t-token\n")
    sub = one(subs(f"credentials: {{token_file: {token}}}"))
    assert sub.credentials.basic_auth() == ("s3cr3t-token", "x-oauth-basic")


def test_password_from_env_or_file_and_token_first(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("VMT_TOKEN", "tok")
    creds = Credentials(username="jane", password_env="VMT_PW", token_env="VMT_TOKEN")
    assert creds.basic_auth() == ("tok", "x-oauth-basic")
    monkeypatch.setenv("VMT_PW", "pa ss")
    assert Credentials(username="jane", password_env="VMT_PW").basic_auth() == ("jane", "pa ss")
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    assert Credentials(username="jane", password_file=str(pw)).basic_auth() == ("jane", "from-file")


def test_secret_is_never_held_in_the_subscription(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VMT_PW", "hunter2-secret")
    sub = one(subs("credentials: {username: jane, password_env: VMT_PW}"))
    assert "hunter2-secret" not in repr(sub)
    assert sub.credentials.basic_auth() == ("jane", "hunter2-secret")


def test_missing_secret_sources_are_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("VMT_NOPE", raising=False)
    with pytest.raises(ConfigError, match="token environment variable VMT_NOPE is not set"):
        Credentials(token_env="VMT_NOPE").basic_auth()
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=f"password file {missing}: No such file"):
        Credentials(username="u", password_file=str(missing)).basic_auth()


def test_empty_secret_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=f"token file {empty}: empty"):
        Credentials(token_file=str(empty)).basic_auth()
    monkeypatch.setenv("VMT_EMPTY", "")
    with pytest.raises(ConfigError, match="password environment variable VMT_EMPTY: empty"):
        Credentials(username="u", password_env="VMT_EMPTY").basic_auth()

"""The systemd units in ``etc/systemd``: valid, hardened, and the hardening lets the sync work.

``systemd-analyze verify`` checks the units as systemd would load them (in a
root made of the system's own units, with the sync installed where the units
expect it); ``systemd-analyze security --offline`` rates their exposure.  A
real pass then runs the way the units run it — an unprivileged user, no new
privileges, no capabilities — converting an image with qemu-img under Landlock,
traced with strace: every system call it makes must be one the units'
``SystemCallFilter`` allows, and every socket family one
``RestrictAddressFamilies`` allows.
"""

from __future__ import annotations

import configparser
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from ops_support import WN, image, make_site, publish, subscription

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "etc" / "systemd"
SERVICES = ("vmtrust-sync.service", "vmtrust-sync-once.service")
INSTALLED = "/usr/local/bin/vmtrust-sync"  #: where the units expect the command


def _need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        if os.environ.get("VMTRUST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{program} is required here (.ci/run installs it)")
        pytest.skip(f"{program} not installed")
    return path


@pytest.fixture(scope="module")
def system_root(tmp_path_factory) -> Path:
    """A root with the system's units, ours installed, and the command where they expect it."""
    _need("systemd-analyze")
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(Path("/usr/lib/systemd/system").resolve(), root / "usr/lib/systemd/system",
                    symlinks=True)  # fmt: skip
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in (*SERVICES, "vmtrust-sync.timer"):
        shutil.copy(UNITS / unit, root / "etc/systemd/system" / unit)
    command = root / INSTALLED.lstrip("/")
    command.parent.mkdir(parents=True)
    shutil.copy(Path(sys.executable).parent / "vmtrust-sync", command)
    return root


def verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *units],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_units_verify(system_root):
    result = verify(system_root, *SERVICES, "vmtrust-sync.timer")
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr


def test_verify_would_catch_a_broken_unit(system_root):
    """The check above can fail: the same root with a mistyped setting or a missing command."""
    unit = system_root / "etc/systemd/system/vmtrust-sync.service"
    good = unit.read_text()
    try:
        unit.write_text(good.replace("ProtectSystem=strict", "ProtectSystem=strictly"))
        assert "strictly" in verify(system_root, "vmtrust-sync.service").stderr
        unit.write_text(good.replace(INSTALLED, "/usr/local/bin/vmtrust-nosync"))
        result = verify(system_root, "vmtrust-sync.service")
        assert result.returncode != 0 and "is not executable" in result.stderr
    finally:
        unit.write_text(good)


@pytest.mark.parametrize("unit", SERVICES)
def test_exposure_is_low(system_root, unit):
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={system_root}", unit],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def service_section(unit: str) -> dict[str, list[str]]:
    """[Service] of a unit, each key with all its values (systemd keys repeat)."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in (UNITS / unit).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_both_services_are_hardened_alike():
    daemon, once = (service_section(u) for u in SERVICES)
    own = {"Type", "ExecStart", "Restart", "RestartSec", "TimeoutStopSec", "TimeoutStartSec"}
    assert {k: v for k, v in daemon.items() if k not in own} == {
        k: v for k, v in once.items() if k not in own
    }
    assert daemon["ExecStart"] == [f"{INSTALLED} --daemon -v"]
    assert once["ExecStart"] == [f"{INSTALLED} -v"] and once["Type"] == ["oneshot"]
    for key, value in {"User": "vmtrust", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "PrivateTmp": "yes", "StateDirectory": "vmtrust", "UMask": "0077",
                       "CapabilityBoundingSet": ""}.items():  # fmt: skip
        assert daemon[key] == [value], key


def test_timer_runs_the_one_shot_service():
    timer = configparser.ConfigParser(strict=False)
    timer.read(UNITS / "vmtrust-sync.timer")
    assert timer["Timer"]["Unit"] == "vmtrust-sync-once.service"
    assert (
        timer["Timer"]["Persistent"] == "true" and timer["Install"]["WantedBy"] == "timers.target"
    )


def test_sysusers_makes_an_unprivileged_user(tmp_path):
    _need("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(UNITS / "vmtrust.sysusers")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (entry,) = [
        line.split(":")
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
        if line.startswith("vmtrust:")
    ]
    assert 0 < int(entry[2]) < 1000  # a system user, not root
    assert entry[5:] == ["/var/lib/vmtrust", "/usr/sbin/nologin"]


# --- a real pass as the units run it, traced -----------------------------------------------


def _expand(group: str, seen: set[str]) -> set[str]:
    """System calls of a systemd filter group (nested groups expanded)."""
    if group in seen:
        return set()
    seen.add(group)
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", group], capture_output=True, text=True, check=True
    ).stdout
    calls: set[str] = set()
    for line in out.splitlines():
        word = line.strip()
        if not word or word.startswith("#") or word == group:
            continue
        calls |= _expand(word, seen) if word.startswith("@") else {word}
    return calls


def allowed_syscalls() -> set[str]:
    """What the units' SystemCallFilter lines allow (allow lists, then ~ deny lists)."""
    allowed = _expand("@default", set())  # always allowed with an allow list
    denied: set[str] = set()
    for value in service_section("vmtrust-sync.service")["SystemCallFilter"]:
        deny = value.startswith("~")
        names = set()
        for word in value.lstrip("~").split():
            names |= _expand(word, set()) if word.startswith("@") else {word}
        (denied if deny else allowed).update(names)
    return allowed - denied


@pytest.fixture
def unprivileged(tmp_path_factory):
    """A folder the unprivileged user owns, and how that user runs the sync's Python.

    pytest's own folders are private to root.  This Python may sit where the user
    cannot reach it (pyenv under /root); then the system's Python of the same version
    runs the same packages, as a site's would.
    """
    _need("setpriv")
    _need("strace")
    if os.geteuid() != 0:
        pytest.skip("needs root to become an unprivileged user")
    nobody = pwd.getpwnam("nobody")
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site_packages}",
           "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    python = None
    for candidate in (sys.executable, f"/usr/bin/python{version}"):
        probe = subprocess.run(
            _confined(nobody, "sh", "-c", 'exec "$0" -c "import glance_sync.cli"', candidate),
            capture_output=True, env=env,
        )  # fmt: skip
        if probe.returncode == 0:
            python = candidate
            break
    if python is None:
        pytest.fail(f"no Python {version} the unprivileged user can run with these packages")
    folder = Path(tempfile.mkdtemp(prefix="vmtrust-unit-"))
    os.chmod(folder, 0o755)
    yield folder, nobody, python, {**env, "HOME": str(folder)}
    shutil.rmtree(folder, ignore_errors=True)


def _site(folder: Path, ca_dir: Path, site, pki, owner) -> Path:
    """A site converting to qcow2 (qemu-img under Landlock), writing a metrics textfile."""
    shutil.copytree(ca_dir, folder / "certificates")
    conf = make_site(
        folder, folder / "certificates", site, pki, sync=f"metrics_textfile = {folder}/v.prom\n"
    )
    text = conf.read_text().replace("[store_local]\n", "[store_local]\ndisk_format = qcow2\n")
    conf.write_text(text)
    publish(site, "/example.list", pki.endorser, [image(site, "wn", WN)])
    (folder / "subs.yaml").write_text(
        "subscriptions:\n" + subscription("example", site.url("/example.list"), pki.endorser)
    )
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, owner.pw_uid, owner.pw_gid, follow_symlinks=False)
    return conf


def _confined(user, *command: str) -> list[str]:
    """``command`` as systemd runs the units: as ``user``, no capabilities, no_new_privs."""
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
            "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", *command]  # fmt: skip


def test_a_pass_as_the_units_run_it_converts_and_makes_only_allowed_calls(
    unprivileged, ca_dir, site, pki
):
    """An unprivileged user without capabilities and with no_new_privs (what the units
    set) runs a real pass that converts an image with qemu-img, confined by Landlock,
    traced with strace: every system call of the sync, its prlimit wrapper, the
    confinement and qemu-img is in the units' SystemCallFilter, and every socket in
    RestrictAddressFamilies."""
    _need("qemu-img")
    folder, nobody, python, env = unprivileged
    conf = _site(folder, ca_dir, site, pki, nobody)
    trace = folder / "trace"
    result = subprocess.run(
        ["strace", "-f", "-qq", "-o", str(trace),
         *_confined(nobody, python, "-m", "glance_sync", "--config-file", str(conf), "-v")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "no Landlock" not in result.stderr  # confined, not the fallback
    stored = list((folder / "store").glob("images/wn/*.img"))
    assert len(stored) == 1 and stored[0].read_bytes()[:4] == b"QFI\xfb"  # qcow2 now
    assert stored[0].stat().st_uid == nobody.pw_uid
    assert "vmtrust_sync_images" in (folder / "v.prom").read_text()
    lines = trace.read_text().splitlines()
    # what setpriv did before it ran the sync is systemd's part
    start = next(i for i, ln in enumerate(lines) if f'execve("{python}"' in ln and "= 0" in ln)
    lines = lines[start:]
    calls = {m.group(1) for m in map(re.compile(r"^\d+\s+(\w+)\(").match, lines) if m}
    assert {"landlock_restrict_self", "execve", "prlimit64"} <= calls
    assert any("qemu-img" in line and "execve(" in line and "= 0" in line for line in lines)
    assert sorted(calls - allowed_syscalls()) == []
    families = {m.group(1) for line in lines for m in [re.search(r"socket\((AF_\w+)", line)] if m}
    allowed = set(service_section("vmtrust-sync.service")["RestrictAddressFamilies"][0].split())
    assert families and families <= allowed, families

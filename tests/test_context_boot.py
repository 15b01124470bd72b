"""A worker node's boot, run: the scripts vmtrust writes, in cloud-init's order, for real.

cloud-init's own part handlers and modules write the files and the scripts and
run them in its order (:mod:`context_boot`), in a scratch root, with the real
``/bin/sh``, ``runuser`` and ``setpriv``; the pilot is a shell probe that
records what it sees when it starts.  Systemd, disks and the CVMFS client are
what a test machine lacks: the scripts take their no-systemd path (the same
start script, the same user, no new privileges), and ``cvmfs_config`` is a
stub that answers ``setup`` and ``probe``.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from context_boot import INSTANCE_ID, RECORD, Booted, boot, cleanup, halt, scratch_root
from context_support import DROP, SECRET, SITE, VO, changed, write_yaml
from httpserve import Server, Site

from vmtrust import context
from vmtrust.context import scripts

USER = "vmtpilot"
#: the pilot: records what it sees when it starts, then exits with $PROBE_STATUS
PROBE = r"""
R=${MACHINEFEATURES%/etc/machinefeatures}
out=$JOBOUTPUTS/seen
{
  echo "uid=$(id -u)"
  echo "nnp=$(awk '/^NoNewPrivs/ { print $2 }' /proc/self/status)"
  echo "pwd=$(pwd)"
  echo "now=$(date +%s)"
  for f in "$MACHINEFEATURES"/* "$JOBFEATURES"/*; do
    echo "$(basename "$(dirname "$f")")/$(basename "$f")=$(cat "$f")"
  done
  pid=$(cat "$R/run/vmtrust/watchdog.pid")
  if [ -d "/proc/$pid" ]; then echo "watchdog=running"; fi
  if [ -e "$R/run/vmtrust/armed" ]; then echo "armed=yes"; fi
  if [ -e "$R/opt/vo/commands-ran" ]; then echo "vo_commands=before"; fi
  if [ -e "$R/run/runcmd-ran" ]; then echo "runcmd=before"; fi
  echo "cvmfs=$(tr '\n' , < "$R/run/stubs/cvmfs_config")"
  echo "credential=$(cat "$R/etc/vo/token")"
  if touch "$MACHINEFEATURES/forged" 2>/dev/null; then echo "features=writable"; fi
  if touch "$R/etc/vmtrust-pilot-was-here" 2>/dev/null; then echo "system=writable"; fi
} > "$out"
env > "$JOBOUTPUTS/env"
if [ -n "$PROBE_MESSAGE" ]; then echo "$PROBE_MESSAGE" > "$JOBOUTPUTS/shutdown_message"; fi
exit "${PROBE_STATUS:-0}"
"""

BOOT_SITE: dict[str, Any] = changed(
    SITE,
    {
        "pilot_user": USER,
        "cvmfs.cache_base": "/var/lib/cvmfs",
        "machine_features": {"hs06_per_cpu": 10, "jobslots": 1, "extra": {"site_tag": "t1"}},
        "joboutputs": {"heartbeat_seconds": 10},
    },
)
BOOT_VO: dict[str, Any] = changed(
    VO,
    {
        "packages": DROP,
        "write_files": DROP,
        "runcmd": ['mkdir -p "$R/opt/vo" && touch "$R/opt/vo/commands-ran"'],
        "pilot.command": "/bin/sh",
        "pilot.arguments": ["-c", PROBE],
        "pilot.environment": {"QUEUE": "T2_XX", "PROBE_MESSAGE": "300 No more work"},
    },
)


@pytest.fixture
def machine():
    """A scratch root for one machine, cleaned (its watchdog stopped by process id) after."""
    roots: list[Path] = []

    def make() -> Path:
        roots.append(scratch_root())
        return roots[-1]

    yield make
    for root in roots:
        cleanup(root)


def user_data(tmp_path: Path, site: dict | None = None, vo: dict | None = None, **kw) -> bytes:
    site_path = write_yaml(tmp_path / "site.yaml", site or BOOT_SITE)
    vo_path = write_yaml(tmp_path / "vo.yaml", vo or BOOT_VO)
    token = tmp_path / "pilot.token"
    token.write_text(SECRET, encoding="utf-8")
    token.chmod(0o600)
    s = context.load_site(site_path)
    return context.build(s, context.load_vo(vo_path, s), **kw)


def seen(booted: Booted) -> dict[str, str]:
    text = booted.read("/var/lib/vmtrust/joboutputs/seen")
    return dict(line.split("=", 1) for line in text.splitlines())


def wait_for(booted: Booted, path: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not booted.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear:\n{booted.output}"
        time.sleep(0.1)


def require_tools() -> None:
    for tool in ("unshare", "runuser", "setpriv", "setsid"):
        if shutil.which(tool) is None:
            if os.environ.get("VMTRUST_REQUIRE_SERVICES") == "1":
                pytest.fail(f"{tool} is missing (util-linux)")
            pytest.skip(f"{tool} is missing (util-linux)")


def test_the_pilot_starts_on_an_armed_machine_and_sees_its_features(tmp_path, machine):
    require_tools()
    data = user_data(tmp_path, flavour=context.Flavour(vcpus=4, ram_mb=8000, swap_mb=0))
    started = time.time()
    booted = boot(data, machine(), USER)
    assert booted.returncode == 0, booted.output
    # cloud-init's own order: the lifetime first, the pilot last, no runcmd
    assert booted.result["scripts"] == [
        scripts.MACHINE,
        scripts.SOFTWARE,
        scripts.VO_COMMANDS,
        scripts.PILOT,
    ]
    assert booted.result["failure"] == "", booted.output
    view = seen(booted)
    # the machine's limits exist before the pilot starts, and the watchdog runs
    assert view["armed"] == "yes" and view["watchdog"] == "running"
    shutdown = int(view["machinefeatures/shutdowntime"])
    assert started + 43200 - 300 - 5 <= shutdown <= time.time() + 43200 - 300
    assert view["machinefeatures/grace_secs"] == "300"
    assert view["machinefeatures/total_cpu"] == "4"  # from the flavour
    assert view["machinefeatures/hs06"] == "40"
    assert view["machinefeatures/jobslots"] == "1"
    assert view["machinefeatures/site_tag"] == "t1"
    assert view["jobfeatures/allocated_cpu"] == "4"
    assert view["jobfeatures/max_rss_bytes"] == str(8000 * 2**20)
    assert view["jobfeatures/max_swap_bytes"] == "0"
    assert int(view["jobfeatures/scratch_limit_bytes"]) > 0  # measured: no flavour disk
    assert view["jobfeatures/job_id"] == INSTANCE_ID
    start = int(view["jobfeatures/jobstart_secs"])
    assert started - 1 <= start <= int(view["now"])
    assert int(view["jobfeatures/wall_limit_secs"]) == shutdown - start
    assert int(view["jobfeatures/cpu_limit_secs"]) == 4 * (shutdown - start)
    # as the unprivileged user, without new privileges, after CVMFS and the VO's commands
    assert view["uid"] == str(booted.uid)
    assert view["nnp"] == "1"
    assert view["pwd"] == f"{booted.root}/home/{USER}"
    assert view["cvmfs"] == "setup,probe,"
    assert view["vo_commands"] == "before"
    assert view["credential"] == SECRET
    assert "features" not in view and "system" not in view  # read-only to the pilot
    env = dict(
        line.split("=", 1) for line in booted.read("/var/lib/vmtrust/joboutputs/env").splitlines()
    )
    assert env["MACHINEFEATURES"] == f"{booted.root}/etc/machinefeatures"
    assert env["JOBFEATURES"] == f"{booted.root}/etc/jobfeatures"
    assert env["JOBOUTPUTS"] == f"{booted.root}/var/lib/vmtrust/joboutputs"
    assert env["QUEUE"] == "T2_XX" and env["USER"] == USER
    assert set(env) <= {"HOME", "USER", "LOGNAME", "SHELL", "PATH", "PWD", "MACHINEFEATURES",
                        "JOBFEATURES", "JOBOUTPUTS", "QUEUE", "PROBE_MESSAGE"}  # fmt: skip
    # the pilot's own shutdown_message is kept; the machine powers off after it
    assert booted.read("/var/lib/vmtrust/joboutputs/shutdown_message") == "300 No more work\n"
    assert booted.exists("/run/vmtrust/powered-off")
    outputs = booted.root / "var/lib/vmtrust/joboutputs"
    assert (outputs.stat().st_uid, oct(outputs.stat().st_mode & 0o777)) == (booted.uid, "0o755")
    assert (outputs / "vm-heartbeat").stat().st_uid == booted.uid
    assert not booted.exists("/etc/vmtrust-pilot-was-here")


@pytest.mark.parametrize(
    ("status", "message"), [("0", "200 Pilot finished"), ("3", "700 Pilot exited with status 3")]
)
def test_without_its_own_message_the_pilots_exit_is_recorded(tmp_path, machine, status, message):
    require_tools()
    vo = changed(BOOT_VO, {"pilot.environment": {"PROBE_STATUS": status}})
    booted = boot(user_data(tmp_path, vo=vo), machine(), USER)
    assert booted.read("/var/lib/vmtrust/joboutputs/shutdown_message") == message + "\n"
    assert booted.exists("/run/vmtrust/powered-off")


def test_a_fifo_for_a_shutdown_message_does_not_hold_the_machine(tmp_path, machine):
    """The pilot owns $JOBOUTPUTS: a FIFO there would block whoever writes the message."""
    require_tools()
    vo = changed(BOOT_VO, {"pilot.arguments": ["-c", 'mkfifo "$JOBOUTPUTS/shutdown_message"'],
                           "runcmd": DROP})  # fmt: skip
    started = time.monotonic()
    booted = boot(user_data(tmp_path, vo=vo), machine(), USER, timeout=60)
    assert booted.exists("/run/vmtrust/powered-off"), booted.output
    assert time.monotonic() - started < 40
    fifo = booted.root / "var/lib/vmtrust/joboutputs/shutdown_message"
    assert fifo.is_fifo()
    assert not _writers(booted.uid)  # the blocked writer was stopped, not left behind


def _writers(uid: int) -> list[str]:
    """Processes of ``uid`` still trying to write a shutdown_message."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if (
                os.stat(f"/proc/{pid}").st_uid == uid
                and b"shutdown_message" in Path(f"/proc/{pid}/cmdline").read_bytes()
            ):
                found.append(pid)
        except OSError:  # gone meanwhile
            pass
    return found


def test_a_hung_pilot_is_stopped_at_the_shutdown_time(tmp_path, machine):
    """The machine's end no longer waits for the pilot: the watchdog ends it on time."""
    require_tools()
    site = changed(BOOT_SITE, {"lifetime": {"max_seconds": 62, "grace_seconds": 60}})
    vo = changed(BOOT_VO, {"lifetime": DROP, "runcmd": DROP, "pilot.arguments": [
        "-c", 'echo "$$" > "$JOBOUTPUTS/pid"; exec sleep 600']})  # fmt: skip
    started = time.monotonic()
    booted = boot(user_data(tmp_path, site=site, vo=vo), machine(), USER, timeout=60)
    wait_for(booted, "/run/vmtrust/powered-off")
    assert time.monotonic() - started < 30  # not the pilot's 600 s
    message = booted.read("/var/lib/vmtrust/joboutputs/shutdown_message")
    assert message == "700 Passed shutdowntime\n"
    pid = booted.read("/var/lib/vmtrust/joboutputs/pid").strip()
    assert not Path(f"/proc/{pid}").exists()  # stopped, not left behind


def test_cvmfs_failure_stops_the_machine_before_the_pilot(tmp_path, machine):
    require_tools()
    booted = boot(user_data(tmp_path), machine(), USER, env={"FAILING_REPOSITORIES": "cms.cern.ch"})
    assert not booted.exists("/var/lib/vmtrust/joboutputs/seen")  # the pilot never ran
    assert booted.read("/var/lib/vmtrust/joboutputs/shutdown_message") == (
        "500 CVMFS: Probing /cvmfs/cms.cern.ch... Failed! \n"
    )
    assert booted.exists("/run/vmtrust/powered-off")
    assert "30-vmtrust-pilot.sh" in booted.result["failure"]


def test_preinstalled_cvmfs_that_is_missing_is_a_site_problem(tmp_path, machine):
    require_tools()
    if shutil.which("cvmfs_config"):
        pytest.skip("this machine has a CVMFS client")
    site = changed(BOOT_SITE, {"cvmfs.install": "preinstalled"})
    booted = boot(user_data(tmp_path, site=site), machine(), USER, stubs={"cvmfs_config": None})
    message = booted.read("/var/lib/vmtrust/joboutputs/shutdown_message")
    assert message.startswith("500 CVMFS: the image has no cvmfs client")


def test_a_scratch_slot_and_a_labelled_cache_outside_var_lib(tmp_path, machine):
    """The pilot works on the scratch disk; the CVMFS cache there gets its SELinux label."""
    require_tools()
    site = changed(BOOT_SITE, {"scratch": {"device": "ephemeral0", "mount": "/scratch"},
                               "cvmfs.cache_base": "/scratch/cvmfs"})  # fmt: skip
    booted = boot(
        user_data(tmp_path, site=site), machine(), USER,
        stubs={"selinuxenabled": "#!/bin/sh\nexit 0\n", "chcon": RECORD},
    )  # fmt: skip
    view = seen(booted)
    assert view["pwd"] == f"{booted.root}/scratch/{USER}"
    work = booted.root / "scratch" / USER
    assert work.stat().st_uid == booted.uid
    assert (booted.root / "scratch/cvmfs").is_dir()
    assert booted.read("/run/stubs/chcon") == (
        f"-R --type=cvmfs_cache_t {booted.root}/scratch/cvmfs\n"
    )
    assert int(view["jobfeatures/scratch_limit_bytes"]) > 0


#: a package manager that records its calls and, for 'install cvmfs', installs the client
DNF = (
    RECORD
    + """case " $* " in *" cvmfs "*) cp "$(dirname "$0")/cvmfs_config.later" \\
  "$(dirname "$0")/cvmfs_config" ;; esac
"""
)
CURL = RECORD + 'while [ $# -gt 1 ]; do [ "$1" = -o ] && : > "$2"; shift; done\n'


def test_an_el_machine_installs_through_the_site_proxy(tmp_path, machine):
    require_tools()
    from context_boot import DEFAULT_STUBS

    site = changed(BOOT_SITE, {"package_sources": {"proxy": "http://squid.example.org:3128",
                                                   "epel": True},
                               "vo_may.packages": ["apptainer"]})  # fmt: skip
    vo = changed(BOOT_VO, {"packages": ["apptainer"]})
    booted = boot(
        user_data(tmp_path, site=site, vo=vo), machine(), USER,
        stubs={"dnf": DNF, "curl": CURL, "cvmfs_config": None,
               "cvmfs_config.later": DEFAULT_STUBS["cvmfs_config"]},
    )  # fmt: skip
    calls = booted.read("/run/stubs/dnf").splitlines()
    proxy = "--setopt=proxy=http://squid.example.org:3128"
    assert calls == [
        f"-y {proxy} install epel-release",
        f"-y {proxy} install apptainer",
        f"-y {proxy} install {booted.root}/run/vmtrust/cvmfs-release.noarch.rpm",
        f"-y {proxy} install cvmfs",
    ]
    assert booted.read("/run/stubs/curl") == (
        "-fsSL --proxy http://squid.example.org:3128 -o "
        f"{booted.root}/run/vmtrust/cvmfs-release.noarch.rpm "
        "https://ecsft.cern.ch/dist/cvmfs/cvmfs-release/cvmfs-release-latest.noarch.rpm\n"
    )
    assert seen(booted)["cvmfs"] == "setup,probe,"  # the client installed, then set up


def test_a_debian_machine_with_a_site_mirror_fetches_nothing_from_cern(tmp_path, machine):
    require_tools()
    from context_boot import DEFAULT_STUBS

    mirror = {"debian": "https://mirror.example.org/cvmfs/apt bookworm-prod main",
              "gpg_key": "-----BEGIN PGP PUBLIC KEY BLOCK-----\nx\n-----END PGP PUBLIC KEY "
                         "BLOCK-----\n"}  # fmt: skip
    site = changed(BOOT_SITE, {"package_sources": {"proxy": "http://squid.example.org:3128",
                                                   "cvmfs_mirror": mirror}})  # fmt: skip
    booted = boot(
        user_data(tmp_path, site=site), machine(), USER,
        stubs={"apt-get": DNF, "curl": CURL, "cvmfs_config": None,
               "cvmfs_config.later": DEFAULT_STUBS["cvmfs_config"]},
    )  # fmt: skip
    options = ("-q -o Acquire::http::Proxy=http://squid.example.org:3128 "
               "-o Acquire::https::Proxy=http://squid.example.org:3128")  # fmt: skip
    assert booted.read("/run/stubs/apt-get").splitlines() == [
        f"{options} update",
        f"{options} -y install cvmfs",
    ]
    assert not booted.exists("/run/stubs/curl")
    assert booted.read("/etc/apt/sources.list.d/vmtrust-cvmfs.list").startswith(
        "deb [signed-by=/etc/apt/keyrings/vmtrust-cvmfs.asc] https://mirror.example.org/"
    )
    assert seen(booted)["cvmfs"] == "setup,probe,"


def test_the_job_outputs_are_uploaded_before_power_off(tmp_path, machine):
    require_tools()
    with Server(Site()) as web:
        site = changed(BOOT_SITE, {"joboutputs.upload_url": web.url("/outputs/site")})
        booted = boot(user_data(tmp_path, site=site), machine(), USER)
        uploaded = web.files.get(f"/outputs/site/{INSTANCE_ID}.tar.gz")
    assert uploaded is not None, booted.output
    with tarfile.open(fileobj=io.BytesIO(uploaded)) as archive:
        names = {name.removeprefix("./") for name in archive.getnames()}
        message = archive.extractfile("./shutdown_message").read()
    assert {"shutdown_message", "seen", "env", "vm-heartbeat"} <= names
    assert message == b"300 No more work\n"


# --- after a reboot --------------------------------------------------------------------


def reboot(booted: Booted, *argv: str, **kw: Any) -> Booted:
    """The same machine after a reboot: nothing runs, /run is empty, then ``argv`` runs."""
    halt(booted.root)
    shutil.rmtree(booted.root / "run", ignore_errors=True)
    return boot(b"", booted.root, USER, uid=booted.uid, command=list(argv), **kw)


def watchdog(booted: Booted) -> list[str]:
    """What systemd starts at boot for the enabled watchdog unit (its ExecStart)."""
    unit = booted.read(f"/etc/systemd/system/{scripts.WATCHDOG_UNIT}")
    program, *args = next(
        line.split("=", 1)[1].split() for line in unit.splitlines() if line.startswith("ExecStart=")
    )
    assert "WantedBy=multi-user.target" in unit  # enabled: it runs on every boot
    return [f"{booted.root}{program}", *args]


def test_a_machine_rebooted_after_its_pilot_started_ends_at_once(tmp_path, machine):
    require_tools()
    booted = boot(user_data(tmp_path), machine(), USER)
    shutdown = booted.read("/var/lib/vmtrust/shutdowntime")
    # it went down while the pilot ran: no message, and the pilot will not start again
    (booted.root / "var/lib/vmtrust/joboutputs/shutdown_message").unlink()
    again = reboot(booted, *watchdog(booted))
    assert again.result["returncode"] == 0, again.output
    assert again.read("/var/lib/vmtrust/joboutputs/shutdown_message") == (
        "700 Rebooted after the pilot started\n"
    )
    assert again.exists("/run/vmtrust/powered-off")
    assert again.read("/var/lib/vmtrust/shutdowntime") == shutdown


def test_a_reboot_never_extends_the_lifetime(tmp_path, machine):
    require_tools()
    booted = boot(user_data(tmp_path), machine(), USER)
    shutdown = booted.read("/var/lib/vmtrust/shutdowntime")
    (booted.root / "var/lib/vmtrust/pilot.started").unlink()
    # cloud-init runs the scripts again when a boot did not finish them: the machine script
    machine_script = booted.root / "var/lib/cloud/instance/scripts" / scripts.MACHINE
    again = reboot(booted, str(machine_script))
    assert again.result["returncode"] == 0, again.output
    assert again.read("/var/lib/vmtrust/shutdowntime") == shutdown
    assert again.read("/etc/machinefeatures/shutdowntime") == shutdown


def test_a_machine_rebooted_past_its_shutdown_time_ends_at_once(tmp_path, machine):
    require_tools()
    booted = boot(user_data(tmp_path), machine(), USER)
    (booted.root / "var/lib/vmtrust/pilot.started").unlink()
    (booted.root / "var/lib/vmtrust/joboutputs/shutdown_message").unlink()
    (booted.root / "var/lib/vmtrust/shutdowntime").write_text(f"{int(time.time()) - 5}\n")
    again = reboot(booted, *watchdog(booted))
    assert again.read("/var/lib/vmtrust/joboutputs/shutdown_message") == (
        "700 Passed shutdowntime\n"
    )
    assert again.exists("/run/vmtrust/powered-off")


def test_within_its_lifetime_a_rebooted_machine_waits_and_keeps_its_heartbeat(tmp_path, machine):
    require_tools()
    booted = boot(user_data(tmp_path), machine(), USER)
    (booted.root / "var/lib/vmtrust/pilot.started").unlink()
    heartbeat = booted.root / "var/lib/vmtrust/joboutputs/vm-heartbeat"
    heartbeat.unlink()
    again = reboot(booted, "timeout", "3", *watchdog(booted))
    assert again.result["returncode"] == 124  # still watching when stopped
    assert not again.exists("/run/vmtrust/powered-off")
    assert abs(int(heartbeat.read_text()) - time.time()) < 10
    assert heartbeat.stat().st_uid == booted.uid


# --- the harness itself follows cloud-init ------------------------------------------------


def test_cloud_init_runs_runcmd_after_every_user_script(tmp_path, machine):
    """Why vmtrust arms the lifetime in a script part: runcmd would come after the pilot."""
    require_tools()
    parts = context.unpack(user_data(tmp_path))
    config = yaml.safe_load(parts[0].body)
    config["runcmd"] = ['touch "$VMTRUST_ROOT/run/runcmd-ran"']
    from vmtrust.context.userdata import package

    booted = boot(package(config, parts[1:]), machine(), USER)
    assert booted.result["scripts"][-1] == "runcmd"
    assert "runcmd" not in seen(booted)  # it had not run when the pilot started
    assert booted.exists("/run/runcmd-ran")

"""Boot a user-data the way cloud-init does, in a scratch root, with the real shell and runuser.

cloud-init's own code decides everything that matters here: its
``UserDataProcessor`` splits the message, its part handlers (cloud-config,
shell script) write the scripts, its ``write_files``, ``runcmd``,
``write_files_deferred`` and ``scripts_user`` modules write the files and run
every script in its order.  What a real machine has and a test cannot —
block devices, systemd, the network — is left out; files are written under
the scratch root (each ``write_files`` path prefixed with it), and the scripts
see that root as ``$VMTRUST_ROOT``.

The pilot user exists only inside a private mount namespace (``unshare
--mount``): copies of ``/etc/passwd`` and ``/etc/group`` with the user added
are bind-mounted over the real ones, so ``runuser``, ``install -o`` and
cloud-init's ``chown`` find it and nothing on the host changes.

Run as a program (by :func:`boot`) inside that namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CLOUD_INIT = (
    Path(__file__).resolve().parent.parent / ".cloud-init/root/usr/lib/python3/dist-packages"
)
INSTANCE_ID = "i-0123456789vmtrust"


@dataclass
class Booted:
    root: Path
    returncode: int
    output: str
    result: dict  #: what the runner saw: the merged config, the scripts run, failures
    uid: int

    def read(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text(encoding="utf-8")

    def exists(self, path: str) -> bool:
        return (self.root / path.lstrip("/")).exists()


def free_uid() -> int:
    while True:
        uid = random.randint(62000, 64999)
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid


def scratch_root() -> Path:
    """A directory every user can traverse (pytest's tmp_path is root-only)."""
    root = Path(tempfile.mkdtemp(prefix="vmtrust-root-"))
    root.chmod(0o755)
    return root


#: programs a test machine must never run for real (they would change the host), and
#: the boundary ones it lacks: each records its arguments under $VMTRUST_ROOT/run/stubs/
RECORD = """#!/bin/sh
mkdir -p "$VMTRUST_ROOT/run/stubs"
echo "$*" >> "$VMTRUST_ROOT/run/stubs/$(basename "$0")"
"""
DEFAULT_STUBS = {
    "apt-get": RECORD + "exit 1\n",
    "dpkg": RECORD + "exit 1\n",
    "logger": RECORD,
    # the CVMFS client: setup works, probe reports each repository of default.local
    "cvmfs_config": RECORD
    + """[ "$1" = probe ] || exit 0
. "$VMTRUST_ROOT/etc/cvmfs/default.local"
status=0
for repo in $(echo "$CVMFS_REPOSITORIES" | tr , ' '); do
  case " ${FAILING_REPOSITORIES:-} " in
    *" $repo "*) echo "Probing /cvmfs/$repo... Failed!"; status=1 ;;
    *) echo "Probing /cvmfs/$repo... OK" ;;
  esac
done
exit $status
""",
}


def boot(
    user_data: bytes,
    root: Path,
    user: str,
    *,
    uid: int | None = None,
    stubs: dict[str, str | None] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    command: list[str] | None = None,
) -> Booted:
    """Process ``user_data`` as cloud-init would on a first boot, under ``root``.

    With ``command``, run that instead in the same machine (a later boot: the pilot user
    exists, nothing of cloud-init runs).  ``stubs`` adds to or (with None) removes from
    :data:`DEFAULT_STUBS`.
    """
    uid = uid or free_uid()
    work = root.parent / f"{root.name}.boot"
    work.mkdir(exist_ok=True)
    (work / "user-data").write_bytes(user_data)
    stub_dir = work / "bin"
    shutil.rmtree(stub_dir, ignore_errors=True)
    stub_dir.mkdir()
    for name, text in (DEFAULT_STUBS | (stubs or {})).items():
        if text is not None:
            (stub_dir / name).write_text(text, encoding="utf-8")
            (stub_dir / name).chmod(0o755)
    (work / "result.json").unlink(missing_ok=True)
    spec = {"root": str(root), "work": str(work), "user": user, "uid": uid, "command": command}
    environment = {
        "PATH": f"{stub_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "VMTRUST_ROOT": str(root),
        **(env or {}),
    }
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, __file__,
         json.dumps(spec)],
        env=environment, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    result_file = work / "result.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return Booted(root, proc.returncode, proc.stdout + proc.stderr, result, uid)


def halt(root: Path) -> None:
    """Stop what a boot left running: the watchdog, by its process id (as a reboot would)."""
    pid_file = root / "run/vmtrust/watchdog.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text().split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, 9)  # setsid made it a group leader: its sleep goes too
        pid_file.unlink()


def cleanup(root: Path) -> None:
    halt(root)
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(root.parent / f"{root.name}.boot", ignore_errors=True)


# --- the runner, inside the private mount namespace --------------------------------------


def _add_user(work: Path, root: Path, user: str, uid: int) -> None:
    home = root / "home" / user
    passwd = Path("/etc/passwd").read_text() + f"{user}:x:{uid}:{uid}::{home}:/bin/sh\n"
    group = Path("/etc/group").read_text() + f"{user}:x:{uid}:\n"
    for name, text in (("passwd", passwd), ("group", group)):
        (work / name).write_text(text)
        (work / name).chmod(0o644)
        subprocess.run(["mount", "--bind", str(work / name), f"/etc/{name}"], check=True)
    # what cloud-init's users_groups module does for the pilot user
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, uid, uid)
    home.chmod(0o755)


def _rerooted(config: dict, root: Path) -> dict:
    files = [dict(item, path=f"{root}{item['path']}") for item in config.get("write_files", [])]
    return dict(config, write_files=files)


def _run(spec: dict) -> dict:
    sys.path.insert(0, str(CLOUD_INIT))
    from cloudinit import handlers, helpers, user_data, util
    from cloudinit.config import (
        cc_runcmd,
        cc_scripts_user,
        cc_write_files,
        cc_write_files_deferred,
    )
    from cloudinit.handlers.cloud_config import CloudConfigPartHandler
    from cloudinit.handlers.shell_script import ShellScriptPartHandler
    from cloudinit.settings import PER_INSTANCE

    root, work = Path(spec["root"]), Path(spec["work"])
    _add_user(work, root, spec["user"], spec["uid"])
    if spec["command"]:  # a later boot of the same machine
        proc = subprocess.run(spec["command"], check=False)
        return {"returncode": proc.returncode}
    cloud_dir = root / "var/lib/cloud"
    instance = cloud_dir / "instances" / INSTANCE_ID
    instance.mkdir(parents=True)
    (cloud_dir / "instance").symlink_to(instance)  # as cloud-init links the current instance
    (cloud_dir / "data").mkdir()
    (cloud_dir / "data/instance-id").write_text(INSTANCE_ID + "\n")

    class Datasource:  # the boundary: which instance this is
        def get_instance_id(self) -> str:
            return INSTANCE_ID

    paths = helpers.Paths({"cloud_dir": str(cloud_dir), "run_dir": str(root / "run/cloud-init")},
                          ds=Datasource())  # fmt: skip

    class Cloud:  # what modules ask of cloud-init's Cloud object
        distro = type("Distro", (), {"default_owner": "root:root"})()

        def get_ipath(self, name: str | None = None) -> str:
            return paths.get_ipath(name)

        def get_ipath_cur(self, name: str | None = None) -> str:
            return paths.get_ipath_cur(name)

    # --- user-data: cloud-init's processor and part handlers ---------------------------
    message = user_data.UserDataProcessor(paths).process((work / "user-data").read_bytes())
    registry = helpers.ContentHandlers()
    config_handler = CloudConfigPartHandler(paths=paths)
    part_handlers = (config_handler, ShellScriptPartHandler(paths=paths))
    for handler in part_handlers:
        registry.register(handler)
        handlers.call_begin(handler, None, PER_INSTANCE)
    part_data = {"handlers": registry, "handlerdir": None, "data": None,
                 "frequency": PER_INSTANCE, "handlercount": 0, "excluded": []}  # fmt: skip
    handlers.walk(message, handlers.walker_callback, data=part_data)
    for handler in part_handlers:
        handlers.call_end(handler, None, PER_INSTANCE)
    # the merged configuration, read back from the file the handler wrote (as cloud-init does)
    config = util.read_conf(paths.get_ipath("cloud_config")) or {}
    log = __import__("logging").getLogger("vmtrust-boot")
    cloud = Cloud()
    # --- init stage: write_files (users_groups: the pilot user above) ------------------
    cc_write_files.handle("write_files", _rerooted(config, root), cloud, log, [])
    # --- config stage: runcmd is written as one more script ----------------------------
    cc_runcmd.handle("runcmd", config, cloud, log, [])
    # --- final stage: deferred files, then every script in cloud-init's order ----------
    cc_write_files_deferred.handle("write_files_deferred", _rerooted(config, root), cloud, log,
                                   [])  # fmt: skip
    scripts = sorted(os.listdir(Path(paths.get_ipath_cur()) / "scripts"))
    failure = ""
    try:
        cc_scripts_user.handle("scripts_user", config, cloud, log, [])
    except RuntimeError as exc:
        failure = str(exc)
    return {"config": config, "scripts": scripts, "failure": failure}


if __name__ == "__main__":
    options = json.loads(sys.argv[1])
    outcome = _run(options)
    Path(options["work"], "result.json").write_text(json.dumps(outcome))

"""The shell scripts and systemd units of a worker node, rendered from the profiles.

cloud-init runs user-data scripts in the final stage, in file-name order, and
writes ``runcmd`` as one more script named ``runcmd`` (after every digit):

- ``10-vmtrust-machine.sh`` — first: the shutdown time (fixed once per
  instance in ``/var/lib/vmtrust``, so a reboot never extends it), machine and
  job features, ``$JOBOUTPUTS`` owned by the pilot user, and the watchdog
  (``vmtrust-node watch``, an enabled unit: it also runs after a reboot);
- ``20-vmtrust-software.sh`` — packages through the site's proxy or mirror,
  the CernVM-FS client, its cache, setup and probe;
- ``25-vmtrust-vo.sh`` — the VO's root commands, only where the site allows;
- ``30-vmtrust-pilot.sh`` — the pilot, only once the lifetime is armed and
  the software is ready, from the unit vmtrust writes (``vmtrust-pilot.service``:
  unprivileged user, ``NoNewPrivileges``, read-only system, private /tmp).

Every script starts with ``R=${VMTRUST_ROOT:-}``: empty on a worker node, a
scratch root when the tests run the scripts.  Each script is a fixed body
below a block of ``NAME=value`` lines; values are shell-quoted here, so no
profile text is ever shell code (except the VO's own ``runcmd``, which the
site allowed).  Templates use ``@NAME@`` for what Python fills in.
"""

from __future__ import annotations

import re
import shlex

__all__ = [
    "CVMFS_RELEASE",
    "JOBFEATURES",
    "JOBOUTPUTS",
    "LAUNCHER",
    "LAUNCHER_SCRIPT",
    "LIBEXEC",
    "MACHINE",
    "MACHINEFEATURES",
    "NODE",
    "NODE_SCRIPT",
    "PILOT",
    "PILOT_UNIT",
    "SOFTWARE",
    "STATE",
    "UNITS",
    "VO_COMMANDS",
    "WATCHDOG_UNIT",
    "WATCHDOG_UNIT_TEXT",
    "assign",
    "fill",
    "launcher",
    "machine",
    "node",
    "pilot",
    "pilot_unit",
    "software",
    "vo_commands",
]

LIBEXEC = "/usr/local/libexec/vmtrust"
NODE = f"{LIBEXEC}/vmtrust-node"
LAUNCHER = f"{LIBEXEC}/pilot-start"
STATE = "/var/lib/vmtrust"
JOBOUTPUTS = f"{STATE}/joboutputs"
MACHINEFEATURES = "/etc/machinefeatures"
JOBFEATURES = "/etc/jobfeatures"
UNITS = "/etc/systemd/system"
WATCHDOG_UNIT = "vmtrust-watchdog.service"
PILOT_UNIT = "vmtrust-pilot.service"
#: CernVM-FS release packages, as the client documentation installs them
#: (cvmfs/doc-cvmfs@96e6b34 cpt-quickstart.rst)
CVMFS_RELEASE = "https://ecsft.cern.ch/dist/cvmfs/cvmfs-release"

MACHINE = "10-vmtrust-machine.sh"
SOFTWARE = "20-vmtrust-software.sh"
VO_COMMANDS = "25-vmtrust-vo.sh"
PILOT = "30-vmtrust-pilot.sh"

_ROOT = "R=${VMTRUST_ROOT:-}  # empty on a worker node; a scratch root when tests run this\n"


def assign(name: str, value: str | int) -> str:
    """``NAME=value`` with the value quoted for /bin/sh."""
    return f"{name}={shlex.quote(str(value))}\n"


def fill(template: str, **values: str) -> str:
    """``template`` with each ``@NAME@`` replaced (values are never scanned again)."""
    parts = re.split(r"@([A-Z]+)@", template)
    for index in range(1, len(parts), 2):
        parts[index] = values[parts[index]]
    return "".join(parts)


_MACHINE = """#!/bin/sh
# vmtrust: the machine's lifetime and its machine/job features, armed before anything else
# of vmtrust runs (cloud-init runs user scripts in file-name order, its runcmd after them).
@PARAMETERS@set -u
STATE=$R/var/lib/vmtrust
RUN=$R/run/vmtrust
MF=$R/etc/machinefeatures
JF=$R/etc/jobfeatures
NODE=$R/usr/local/libexec/vmtrust/vmtrust-node
mkdir -p "$STATE" "$RUN" "$MF" "$JF"
chmod 0755 "$STATE" "$MF" "$JF"
# fixed once per instance: a reboot never extends the machine's life
if [ ! -s "$STATE/shutdowntime" ]; then
  echo $(( $(date +%s) + LIFETIME - GRACE )) > "$STATE/shutdowntime"
fi
SHUTDOWNTIME=$(cat "$STATE/shutdowntime")
# $JOBOUTPUTS belongs to the pilot (shutdown_message, heartbeat, its logs)
install -d -o "$PILOT" -g "$PILOT" -m 0755 "$STATE/joboutputs"
WORKDIR=$R/home/$PILOT
if [ -n "$SCRATCH_DIR" ]; then
  install -d -o "$PILOT" -g "$PILOT" -m 0755 "$R$SCRATCH_DIR"
  WORKDIR=$R$SCRATCH_DIR
fi
if [ -z "$SCRATCH_BYTES" ]; then
  SCRATCH_BYTES=$(df -P -k "$WORKDIR" | awk 'NR == 2 { printf "%.0f", $2 * 1024 }')
fi
put() { printf '%s\\n' "$3" > "$1/$2" && chmod 0644 "$1/$2"; }
put "$MF" total_cpu "$TOTAL_CPU"
put "$MF" jobslots "$JOBSLOTS"
put "$MF" shutdowntime "$SHUTDOWNTIME"
put "$MF" grace_secs "$GRACE"
if [ -n "$HS06_PER_CPU" ]; then
  put "$MF" hs06 "$(awk -v c="$TOTAL_CPU" -v h="$HS06_PER_CPU" 'BEGIN { printf "%g", c * h }')"
fi
@EXTRA@put "$JF" allocated_cpu "$TOTAL_CPU"
put "$JF" max_rss_bytes "$MAX_RSS_BYTES"
put "$JF" max_swap_bytes "$MAX_SWAP_BYTES"
put "$JF" scratch_limit_bytes "$SCRATCH_BYTES"
put "$JF" job_id "$(cat "$R/var/lib/cloud/data/instance-id" 2>/dev/null || hostname)"
"$NODE" heartbeat
if [ -z "$R" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload && systemctl enable --now vmtrust-watchdog.service || exit 1
else
  setsid "$NODE" watch </dev/null >/dev/null 2>&1 &
  echo $! > "$RUN/watchdog.pid"
fi
touch "$RUN/armed"
"""

_SOFTWARE = """#!/bin/sh
# vmtrust: packages and the CernVM-FS client as the site configures them (its package proxy
# or mirror), probed before the pilot starts; a failure is recorded in /run/vmtrust/failed
# and the pilot does not start.  Steps: the client documentation's (cvmfs_config setup, probe).
@PARAMETERS@set -u
RUN=$R/run/vmtrust
mkdir -p "$RUN"
fail() {
  echo "vmtrust: $*" >&2
  printf '%s\\n' "$*" >> "$RUN/failed"
  logger -t vmtrust "$*" 2>/dev/null || true
}
if command -v dnf >/dev/null 2>&1; then PM=dnf
elif command -v yum >/dev/null 2>&1; then PM=yum
elif command -v apt-get >/dev/null 2>&1; then PM=apt-get
else PM=none
fi
apt() {
  if [ -n "$PROXY" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get -q -o "Acquire::http::Proxy=$PROXY" \\
      -o "Acquire::https::Proxy=$PROXY" "$@"
  else
    DEBIAN_FRONTEND=noninteractive apt-get -q "$@"
  fi
}
install_packages() {
  case $PM in
    dnf|yum)
      if [ -n "$PROXY" ]; then "$PM" -y --setopt=proxy="$PROXY" install "$@"
      else "$PM" -y install "$@"
      fi ;;
    apt-get) apt update && apt -y install "$@" ;;
    *) echo "vmtrust: no dnf, yum or apt-get" >&2; return 1 ;;
  esac
}
fetch() {
  if [ -n "$PROXY" ]; then curl -fsSL --proxy "$PROXY" -o "$2" "$1"
  else curl -fsSL -o "$2" "$1"
  fi
}
if [ -n "$VO_PACKAGES" ]; then
  if [ "$EPEL" = yes ] && [ "$PM" != apt-get ]; then
    install_packages epel-release || fail "cannot install epel-release"
  fi
  # shellcheck disable=SC2086  # package names, each checked by vmtrust
  install_packages $VO_PACKAGES || fail "cannot install the VO's packages: $VO_PACKAGES"
fi
if [ "$CVMFS" != none ]; then
  if ! command -v cvmfs_config >/dev/null 2>&1; then
    if [ "$CVMFS" = preinstalled ]; then
      fail "CVMFS: the image has no cvmfs client (the site profile says it is preinstalled)"
    else
      case $PM in
        dnf|yum)
          if [ "$MIRROR_EL" = no ]; then
            fetch "$RELEASE/cvmfs-release-latest.noarch.rpm" "$RUN/cvmfs-release.noarch.rpm" \\
              && install_packages "$RUN/cvmfs-release.noarch.rpm"
          fi && install_packages cvmfs ;;
        apt-get)
          if [ "$MIRROR_DEBIAN" = no ]; then
            fetch "$RELEASE/cvmfs-release-latest_all.deb" "$RUN/cvmfs-release_all.deb" \\
              && dpkg -i "$RUN/cvmfs-release_all.deb"
          fi && install_packages cvmfs ;;
        *) false ;;
      esac || fail "CVMFS: cannot install the cvmfs package ($PM)"
    fi
  fi
  if command -v cvmfs_config >/dev/null 2>&1; then
    if [ "$CACHE_BASE" != /var/lib/cvmfs ]; then
      mkdir -p "$R$CACHE_BASE"
      # SELinux: a cache outside /var/lib/cvmfs needs the cvmfs_cache_t label
      if command -v selinuxenabled >/dev/null 2>&1 && selinuxenabled; then
        chcon -R --type=cvmfs_cache_t "$R$CACHE_BASE" || fail "CVMFS: cannot label $CACHE_BASE"
      fi
    fi
    cvmfs_config setup || fail "CVMFS: cvmfs_config setup failed"
    if ! probe=$(cvmfs_config probe 2>&1); then
      fail "CVMFS: $(printf '%s\\n' "$probe" | grep -i fail | tr '\\n' ' ')"
    fi
  fi
fi
"""

_VO_COMMANDS = """#!/bin/sh
# vmtrust: the VO's commands, run as root because the site allows it (vo_may.runcmd), after
# the software and before the pilot.
@PARAMETERS@if [ -s "$R/run/vmtrust/failed" ]; then exit 1; fi
@COMMANDS@"""

_PILOT = """#!/bin/sh
# vmtrust: the VO's pilot, started only once the machine's lifetime is armed and its software
# is ready; it runs as the site's unprivileged user, and the machine powers off when it exits.
@PARAMETERS@set -u
STATE=$R/var/lib/vmtrust
RUN=$R/run/vmtrust
JF=$R/etc/jobfeatures
NODE=$R/usr/local/libexec/vmtrust/vmtrust-node
if [ ! -e "$RUN/armed" ]; then
  "$NODE" end "500 The machine's lifetime is not armed"
  exit 1
fi
if [ -s "$RUN/failed" ]; then
  "$NODE" end "500 $(head -n 1 "$RUN/failed")"
  exit 1
fi
now=$(date +%s)
wall=$(( $(cat "$STATE/shutdowntime") - now ))
printf '%s\\n' "$now" > "$JF/jobstart_secs"
printf '%s\\n' "$wall" > "$JF/wall_limit_secs"
printf '%s\\n' "$(( wall * $(cat "$JF/allocated_cpu") ))" > "$JF/cpu_limit_secs"
chmod 0644 "$JF/jobstart_secs" "$JF/wall_limit_secs" "$JF/cpu_limit_secs"
touch "$STATE/pilot.started" "$RUN/pilot.started"
if [ -z "$R" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl start --wait vmtrust-pilot.service
  status=$(systemctl show --value -p ExecMainStatus vmtrust-pilot.service)
else
  # without systemd: the same start script, the same user, no new privileges
  runuser -u "$PILOT" -- setpriv --no-new-privs "$R/usr/local/libexec/vmtrust/pilot-start" &
  echo $! > "$RUN/pilot.pid"
  wait $!
  status=$?
fi
if [ "$status" = 0 ]; then
  "$NODE" end "200 Pilot finished"
else
  "$NODE" end "700 Pilot exited with status $status"
fi
"""

NODE_SCRIPT = """#!/bin/sh
# vmtrust-node: how a worker node ends.  'watch' (the vmtrust-watchdog unit, also after a
# reboot) ends it at its shutdown time, or at once after a reboot that came after the pilot
# started (a pilot never starts twice), refreshing $JOBOUTPUTS/vm-heartbeat meanwhile.
# 'end MESSAGE' stops the pilot (grace_secs to finish), keeps the pilot's own
# shutdown_message or writes MESSAGE, uploads the job outputs if the site asks, powers off.
# Everything in $JOBOUTPUTS is done as the pilot user: that directory is the pilot's.
# shellcheck disable=SC2016  # inner scripts run as the pilot take their values as "$1", "$2"
@PARAMETERS@set -u
STATE=$R/var/lib/vmtrust
RUN=$R/run/vmtrust
OUT=$STATE/joboutputs
booted() { [ -z "$R" ] && [ -d /run/systemd/system ]; }
# as the pilot, and never for long: a FIFO in $JOBOUTPUTS must not hold the machine's end
as_pilot() {
  limit=$1
  shift
  timeout -k 5 "$limit" runuser -u "$PILOT" -- "$@"
}
log() {
  echo "vmtrust: $*" >&2
  logger -t vmtrust "$*" 2>/dev/null || true
}
heartbeat() {
  as_pilot 10 /bin/sh -c 'date +%s > "$1/vm-heartbeat"' sh "$OUT"
}
stop_pilot() {
  if booted; then
    systemctl stop vmtrust-pilot.service
  elif [ -s "$RUN/pilot.pid" ]; then
    as_pilot 10 /bin/sh -c 'kill -TERM -1' 2>/dev/null
    waited=0
    while kill -0 "$(cat "$RUN/pilot.pid")" 2>/dev/null && [ "$waited" -lt "$GRACE" ]; do
      sleep 1
      waited=$((waited + 1))
    done
    as_pilot 10 /bin/sh -c 'kill -KILL -1' 2>/dev/null
  fi
  return 0
}
upload() {
  [ -n "$UPLOAD_URL" ] || return 0
  id=$(cat "$R/var/lib/cloud/data/instance-id" 2>/dev/null || hostname)
  as_pilot 360 /bin/sh -c 't=$(mktemp) || exit 1
    tar -C "$1" -czf "$t" . && curl -fsS --max-time 300 -T "$t" "$2"
    s=$?; rm -f "$t"; exit "$s"' sh "$OUT" "$UPLOAD_URL/$id.tar.gz" \\
    || log "the job outputs could not be uploaded to $UPLOAD_URL"
}
end() {
  mkdir -p "$RUN"
  mkdir "$RUN/ending" 2>/dev/null || return 0  # once
  log "ending the machine: $1"
  stop_pilot
  # the pilot's own message is kept: written as the pilot, never over an existing file
  as_pilot 10 /bin/sh -c 'set -C; printf "%s\\n" "$1" > "$2/shutdown_message"' sh "$1" "$OUT" \\
    2>/dev/null
  upload
  if [ -n "$R" ]; then
    date +%s > "$RUN/powered-off"
  else
    systemctl poweroff || poweroff
  fi
}
watch() {
  if [ -e "$STATE/pilot.started" ] && [ ! -e "$RUN/pilot.started" ]; then
    end "700 Rebooted after the pilot started"
    return
  fi
  while :; do
    shutdown=$(cat "$STATE/shutdowntime") || shutdown=0  # lost: end rather than run on
    left=$(( shutdown - $(date +%s) ))
    if [ "$left" -le 0 ]; then
      end "700 Passed shutdowntime"
      return
    fi
    period=60
    if [ "$HEARTBEAT" -gt 0 ]; then
      heartbeat
      period=$HEARTBEAT
    fi
    if [ "$left" -lt "$period" ]; then period=$left; fi
    sleep "$period"
  done
}
case ${1:-} in
  watch) watch ;;
  end) end "${2:-700 Ended by the site}" ;;
  heartbeat) if [ "$HEARTBEAT" -gt 0 ]; then heartbeat; fi ;;
  *) echo "usage: vmtrust-node watch | end MESSAGE | heartbeat" >&2; exit 2 ;;
esac
"""

LAUNCHER_SCRIPT = """#!/bin/sh
# vmtrust: starts the VO's pilot as the site's unprivileged user (vmtrust-pilot.service, or
# runuser without systemd) with a clean environment: machine/job features, job outputs and
# the VO's variables; below, the VO's variables, command and arguments.
@PARAMETERS@cd "$WORKDIR" || exit 1
# shellcheck disable=SC2016  # the VO's words are quoted: literal, never expanded
exec env -i HOME="${HOME:-/}" USER="$(id -un)" LOGNAME="$(id -un)" SHELL=/bin/sh \\
  PATH=/usr/local/bin:/usr/bin:/bin \\
  MACHINEFEATURES="$R/etc/machinefeatures" JOBFEATURES="$R/etc/jobfeatures" \\
  JOBOUTPUTS="$R/var/lib/vmtrust/joboutputs" \\
@COMMAND@
"""

WATCHDOG_UNIT_TEXT = """# Written by vmtrust: ends the machine at its shutdown time, also after a
# reboot.
[Unit]
Description=vmtrust: the machine's lifetime (shutdown time, heartbeat, shutdown message)

[Service]
Type=simple
ExecStart=/usr/local/libexec/vmtrust/vmtrust-node watch
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
"""

_PILOT_UNIT = """# Written by vmtrust: the VO's pilot, as the site's unprivileged user on a
# read-only system; the VO gives only its command, arguments and environment (pilot-start).
[Unit]
Description=vmtrust: the VO's pilot
Wants=network-online.target
After=network-online.target autofs.service

[Service]
Type=exec
User=@USER@
Group=@USER@
ExecStart=/usr/local/libexec/vmtrust/pilot-start
KillMode=control-group
TimeoutStopSec=@GRACE@
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=@WRITABLE@
PrivateTmp=yes
CapabilityBoundingSet=
AmbientCapabilities=
RestrictSUIDSGID=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
LockPersonality=yes
RestrictRealtime=yes
"""


def machine(parameters: str, extra_features: tuple[tuple[str, str], ...]) -> str:
    extra = "".join(
        f'put "$MF" {shlex.quote(name)} {shlex.quote(value)}\n' for name, value in extra_features
    )
    return fill(_MACHINE, PARAMETERS=_ROOT + parameters, EXTRA=extra)


def software(parameters: str) -> str:
    return fill(_SOFTWARE, PARAMETERS=_ROOT + parameters)


def vo_commands(commands: tuple[str, ...]) -> str:
    return fill(_VO_COMMANDS, PARAMETERS=_ROOT, COMMANDS="".join(f"{c}\n" for c in commands))


def pilot(user: str) -> str:
    return fill(_PILOT, PARAMETERS=_ROOT + assign("PILOT", user))


def node(parameters: str) -> str:
    return fill(NODE_SCRIPT, PARAMETERS=_ROOT + parameters)


def launcher(workdir: str, environment: tuple[tuple[str, str], ...], argv: list[str]) -> str:
    """The pilot's start script: one quoted word per line after the fixed environment."""
    words = [f"{name}={value}" for name, value in environment] + argv
    command = " \\\n".join(f"  {shlex.quote(word)}" for word in words)
    parameters = _ROOT + assign("WORKDIR", workdir).replace("=", '="$R"', 1)
    return fill(LAUNCHER_SCRIPT, PARAMETERS=parameters, COMMAND=command)


def pilot_unit(user: str, grace: int, writable: list[str]) -> str:
    return fill(_PILOT_UNIT, USER=user, GRACE=str(grace), WRITABLE=" ".join(writable))

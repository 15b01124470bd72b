"""``vmtrust status --nagios``: the sync's health as a Nagios/ARGO probe sees it.

Grid monitoring (ARGO, Nagios, Icinga) runs plugins that print **one status
line** with performance data after a ``|`` and exit **0** OK, **1** WARNING,
**2** CRITICAL or **3** UNKNOWN.  The probe reads what the sync left (the state
database, read-only) and the CA directory, and judges each subscription:

* a **stale last success**: no list verified and applied for ``stale`` hours
  (never: CRITICAL);
* **failing images**: images that failed in the last pass that reached them;
* a list **close to expiry**: its images leave the store when it expires, so an
  endorser who stopped re-signing is worth knowing days before;
* a **CRL close to its next update**: past it, every list of that CA fails.

The worst verdict wins; the status line names each problem.  This module is
pure: the command gathers the values (:mod:`vmtrust.cli.sitecmd`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vmtrust.anchors import CrlState
from vmtrust.errors import ConfigError
from vmtrust.safetext import clean

__all__ = [
    "CRITICAL",
    "DAY",
    "HOUR",
    "NAMES",
    "OK",
    "UNKNOWN",
    "WARNING",
    "Result",
    "Subscription",
    "Thresholds",
    "evaluate",
]

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
HOUR, DAY = 3600.0, 86400.0


@dataclass(frozen=True)
class Thresholds:
    """Warning and critical levels; a critical level of 0 is off."""

    stale_warning: float = 6  #: hours since the last success
    stale_critical: float = 24
    failing_warning: int = 1  #: failing images of a subscription
    failing_critical: int = 0
    expiry_warning: float = 7  #: days left before the accepted list expires
    expiry_critical: float = 2
    crl_warning: float = 24  #: hours left before a CRL's next update
    crl_critical: float = 6

    @classmethod
    def parse(cls, **values: str | None) -> Thresholds:
        """From the command's options (strings); ConfigError naming a bad one."""
        kwargs: dict[str, Any] = {}  # keyed by field names: the caller's keywords are the fields
        for name, text in values.items():
            if text is None:
                continue
            option = "--" + name.replace("_", "-")
            try:
                number = int(text) if name.startswith("failing") else float(text)
            except ValueError:
                raise ConfigError(f"{option} {text!r}: not a number") from None
            if not math.isfinite(number) or number < 0:
                raise ConfigError(f"{option} {text!r}: must be 0 or more")
            kwargs[name] = number
        limits = cls(**kwargs)
        for kind, worse in (("stale", "more"), ("failing", "more")):
            warn, crit = getattr(limits, f"{kind}_warning"), getattr(limits, f"{kind}_critical")
            if crit and warn and crit < warn:
                raise ConfigError(f"--{kind}-critical must be {worse} than --{kind}-warning")
        for kind in ("expiry", "crl"):
            warn, crit = getattr(limits, f"{kind}_warning"), getattr(limits, f"{kind}_critical")
            if crit > warn:
                raise ConfigError(f"--{kind}-critical must be less than --{kind}-warning")
        return limits


@dataclass(frozen=True)
class Subscription:
    """What the state database says of one subscription."""

    name: str
    last_success: datetime | None
    list_expires: datetime | None
    failing: int
    last_error: str | None = None


@dataclass(frozen=True)
class Result:
    code: int
    line: str  #: the whole status line, performance data included

    @classmethod
    def unknown(cls, why: str) -> Result:
        return cls(UNKNOWN, clean(f"VMTRUST UNKNOWN - {why}".replace("|", "/")))


def _at_least(value: float, warning: float, critical: float) -> int:
    """Verdict for a value that is bad when high (critical 0: off)."""
    if critical and value >= critical:
        return CRITICAL
    return WARNING if warning and value >= warning else OK


def _at_most(value: float, warning: float, critical: float) -> int:
    """Verdict for a value that is bad when low (time left)."""
    if value <= critical:
        return CRITICAL
    return WARNING if value <= warning else OK


def _perf(label: str, value: float, unit: str, warn: str, crit: str) -> str:
    return f"'{clean(label)}'={value:.0f}{unit};{warn};{crit};0"


def evaluate(
    subs: Iterable[Subscription], crls: Iterable[CrlState], now: datetime, limits: Thresholds
) -> Result:
    """The probe's verdict, status line and performance data."""
    subs, crls = list(subs), list(crls)
    if not subs:
        return Result.unknown("no subscriptions in the subscriptions file")
    code, problems, perf = OK, [], []

    def judge(verdict: int, text: str) -> None:
        nonlocal code
        code = max(code, verdict)
        if verdict != OK:
            problems.append(text)

    l_ = limits
    stale_w, stale_c = l_.stale_warning * HOUR, l_.stale_critical * HOUR
    exp_w, exp_c = l_.expiry_warning * DAY, l_.expiry_critical * DAY
    for sub in subs:
        if sub.last_success is None:
            why = f": {sub.last_error}" if sub.last_error else ""
            judge(CRITICAL, f"{sub.name}: never synced{why}")
        else:
            age = max((now - sub.last_success).total_seconds(), 0.0)
            why = f" ({sub.last_error})" if sub.last_error else ""
            judge(
                _at_least(age, stale_w, stale_c),
                f"{sub.name}: last success {age / HOUR:.1f} h ago{why}",
            )
            perf.append(
                _perf(
                    f"{sub.name}_age",
                    age,
                    "s",
                    f"{stale_w:.0f}",
                    f"{stale_c:.0f}" if stale_c else "",
                )
            )
        judge(
            _at_least(sub.failing, l_.failing_warning, l_.failing_critical),
            f"{sub.name}: {sub.failing} failing image{'s' if sub.failing != 1 else ''}",
        )
        perf.append(
            _perf(
                f"{sub.name}_failing",
                sub.failing,
                "",
                str(l_.failing_warning or ""),
                str(l_.failing_critical or ""),
            )
        )
        if sub.list_expires is not None:
            left = (sub.list_expires - now).total_seconds()
            judge(
                _at_most(left, exp_w, exp_c),
                f"{sub.name}: list expires in {left / DAY:.1f} d"
                if left > 0
                else f"{sub.name}: list expired",
            )
            perf.append(_perf(f"{sub.name}_expiry", left, "s", f"{exp_w:.0f}:", f"{exp_c:.0f}:"))
    crl_w, crl_c = l_.crl_warning * HOUR, l_.crl_critical * HOUR
    soonest = None
    for state in crls:
        if state.problem:
            judge(CRITICAL, state.problem)
        elif state.next_update is not None:
            left = (state.next_update - now).total_seconds()
            judge(
                _at_most(left, crl_w, crl_c),
                f"CRL of {state.ca}: next update in {left / HOUR:.1f} h",
            )
            soonest = left if soonest is None else min(soonest, left)
    if soonest is not None:
        perf.append(_perf("crl_next_update", soonest, "s", f"{crl_w:.0f}:", f"{crl_c:.0f}:"))
    if problems:
        # a server's reason may hold "|", which would start the performance data
        text = "; ".join(problems).replace("|", "/")
    else:
        text = f"{len(subs)} subscription{'s' if len(subs) != 1 else ''} in sync"
        if crls:
            text += f", {len(crls)} CRL{'s' if len(crls) != 1 else ''} valid"
    return Result(code, clean(f"VMTRUST {NAMES[code]} - {text} | {' '.join(perf)}"))

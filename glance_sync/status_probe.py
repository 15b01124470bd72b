"""``vmtrust status --nagios``: the monitoring probe (issue 18), one line and exit 0-3.

Each subscription is judged on the state database's word: never synced or stale,
failing images, a list close to expiry, CRLs close to their next update
(:mod:`vmtrust.nagios` holds the verdicts).  With several targets each
``TARGET/SUBSCRIPTION`` is judged on that target's own outcome, so any target's
failure raises the verdict.  Kept apart from :mod:`glance_sync.sitecmd` (the
tables and JSON of ``status`` and ``images``), which it shares only the
configuration with.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from glance_sync.sitecmd import _make_conf as make_conf
from vmtrust.errors import VmtrustError

__all__ = ["status_nagios"]


def status_nagios(args: argparse.Namespace) -> int:
    """``status --nagios``: one line, performance data, exit 0-3; never anything else.

    Whatever goes wrong — the configuration, the state database, a bug — is
    UNKNOWN (3) with the reason on the line, as the plugin convention asks.
    """
    from datetime import UTC, datetime

    from vmtrust import nagios

    try:
        result = _nagios_result(args, datetime.now(UTC))
    except VmtrustError as exc:
        result = nagios.Result.unknown(str(exc))
    except Exception as exc:
        result = nagios.Result.unknown(f"internal error: {type(exc).__name__}: {exc}")
    print(result.line)
    return result.code


def _nagios_result(args: argparse.Namespace, now):
    from glance_sync.state import StateDB
    from glance_sync.targets import DEFAULT, named, route
    from vmtrust import anchors, nagios
    from vmtrust.policy import load_subscriptions
    from vmtrust.truststore import TrustStore

    names = ("stale", "failing", "expiry", "crl")
    limits = nagios.Thresholds.parse(
        **{
            f"{name}_{level}": getattr(args, f"{name}_{level}")
            for name in names
            for level in ("warning", "critical")
        }
    )
    conf = make_conf(args.config_file)
    subscriptions = load_subscriptions(conf.sync.subscriptions_file)
    db = StateDB(
        Path(conf.state_dir).expanduser(), readonly=True, connection=conf.sync.state_connection
    )
    try:
        subs = []
        # several targets: each (target, subscription) is judged on its own outcome, so
        # any target's failure (its store down, its images failing) raises the verdict
        routes = route(subscriptions, named(conf)) if conf.sync.targets else None
        for sub in subscriptions:
            places = sorted(routes[sub.name]) if routes is not None else [DEFAULT]
            for target in places:
                st = db.get(sub.name, target=target)
                failing = len(db.failing_images(sub.name, target=target))
                name = sub.name if routes is None else f"{target}/{sub.name}"
                subs.append(
                    nagios.Subscription(
                        name, st.last_success, st.list_expires, failing, st.last_error
                    )
                )
    finally:
        db.close()
    trust = TrustStore(
        Path(conf.trust.ca_dir).expanduser(),
        require_crls=conf.trust.require_crls,
        require_namespaces=conf.trust.require_namespaces,
    )
    cas = [endorser.ca for sub in subscriptions for endorser in sub.endorsers]
    return nagios.evaluate(subs, anchors.crl_states(trust, cas, now), now, limits)

"""A sync pass into moto that kills itself (SIGKILL) at a chosen AWS call: ``kill -9`` mid-step.

Run by ``tests/test_ec2_faults.py`` as ``python tests/ec2_child.py CONFIG.json``.
The config names the moto URL, the gap stubs' state file, the site's key and
directories, the list, and ``crash``: a botocore event (``before-call.ebs.
PutSnapshotBlock``, ``after-call.ec2.CreateTags`` …) and on which occurrence
of it the process kills itself, with nothing cleaned up — as ``kill -9`` would.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import sync_settings
from moto_ec2 import MotoGaps, session

from glance_sync.service import SyncService
from glance_sync.stores.ec2 import EC2Store
from vmtrust import ec2client
from vmtrust.imagelist import Endorser
from vmtrust.policy import Subscription
from vmtrust.record import load_private_key


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    event, occurrence = config["crash"]
    seen = [0]

    def crash(**_: object) -> None:
        seen[0] += 1
        if seen[0] == occurrence:
            os.kill(os.getpid(), signal.SIGKILL)

    boto = session(MotoGaps(config["moto_url"], Path(config["gaps_state"])))
    boto.events.register_first(event, crash)  # before the gap stubs can answer the call
    clients = ec2client.clients(boto, endpoint_url=config["moto_url"], attempts=2)
    tmp = Path(config["tmp_path"])
    key = load_private_key(tmp / "seal.key")
    settings = sync_settings(tmp, Path(config["ca_dir"]), key)
    store = EC2Store(
        clients,
        seal_keys=[key.public_key()],
        workdir=tmp / "state" / "work",
        vo_accounts=config["vo_accounts"],
        record_bucket=config["bucket"],
    )
    service = SyncService(settings, store)
    subs = (
        Subscription(
            name="example",
            url=config["list_url"],
            endorsers=(Endorser(dn=config["endorser_dn"], ca=config["endorser_ca"]),),
            approve_all=True,
        ),
    )
    report = service.run(subs)
    print(json.dumps({"done": report.done, "failures": report.failures}))
    sys.exit(3)  # reaching the end means the crash point was never hit


if __name__ == "__main__":
    main()

"""A worker process for the fencing test: hold a target's lock, ask the fence on demand.

``python fence_child.py URL MEMBER LEASE TARGET`` prints ``locked`` once it
holds the target's lock, then for each line ``commit`` read from stdin prints
one JSON line: ``{"fenced": false}`` when the fence let the commit through, or
``{"fenced": true, "error": "..."}`` when it refused it.  The test freezes it
with SIGSTOP in between, as a paused VM or a stopped process would be.
"""

import contextlib
import json
import sys

from glance_sync.coordination import ToozCoordination
from vmtrust.errors import LockError


def main() -> None:
    url, member, lease, target = sys.argv[1:]
    coord = ToozCoordination(url, member, int(lease))
    coord.start()
    with contextlib.ExitStack() as stack:
        assert stack.enter_context(coord.locked(target))
        print("locked", flush=True)
        for line in sys.stdin:
            if line.strip() != "commit":
                break
            try:
                coord.fence(target, "image img-1")
                print(json.dumps({"fenced": False}), flush=True)
            except LockError as exc:
                print(json.dumps({"fenced": True, "error": str(exc)}), flush=True)
    coord.stop()


if __name__ == "__main__":
    main()

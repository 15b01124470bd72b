"""A worker process for the coordination tests: join, lock its share of the targets, wait.

``python coord_child.py URL MEMBER LEASE TARGET...`` prints one JSON line
(``{"owned": [...], "locked": [...]}``) once it holds its locks, then sleeps
until killed (the tests kill it with SIGKILL: no leave, no release).
"""

import contextlib
import json
import sys
import time

from glance_sync.coordination import ToozCoordination


def main() -> None:
    url, member, lease, *targets = sys.argv[1:]
    coord = ToozCoordination(url, member, int(lease))
    coord.start()
    owned = coord.owned(targets)
    with contextlib.ExitStack() as stack:
        locked = [t for t in owned if stack.enter_context(coord.locked(t))]
        print(json.dumps({"owned": owned, "locked": locked}), flush=True)
        while True:
            time.sleep(60)


if __name__ == "__main__":
    main()

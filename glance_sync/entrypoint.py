"""The ``vmtrust-sync`` command's entry point: its modules loaded with the collector paused.

Loading the sync's modules (SQLAlchemy, oslo.config, cryptography, then openstacksdk)
makes hundreds of thousands of objects and almost no garbage, yet each few hundred
allocations set off Python's cyclic collector, which scans the whole growing heap:
a fifth of a pass's start-up (0.2 s of about 1 s, measured on the project's machine).
So the collector is off while :mod:`glance_sync.cli` loads, and what was loaded is then
frozen (``gc.freeze``): it lives as long as the process, and no later collection scans
it again.  The collector is back on for the pass itself, and what the pass made is frozen
when it ends, as :func:`vmtrust.cli.main.main` does, so that the interpreter's exit does not
walk it either.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``vmtrust-sync``: :func:`glance_sync.cli.main`, started as described above."""
    gc.disable()
    try:
        from glance_sync import cli
    finally:
        gc.freeze()
        gc.enable()
    try:
        return cli.main(argv)
    finally:  # as vmtrust's own main: the exit's collections need not walk what the pass made
        gc.freeze()

"""A throwaway installed distribution for the plug-in tests: modules plus entry points.

``importlib.metadata`` finds a ``*.dist-info`` folder on any ``sys.path`` entry,
so putting one folder first on the path (or on ``PYTHONPATH`` of a child
process) is installing a package, as pip would, without touching the test
environment.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make(folder: Path, entry_points: dict[str, dict[str, str]], modules: dict[str, str]) -> Path:
    """``folder`` holding distribution ``vmtrust-test-plugin`` with these entry points
    (group → name → ``module:attr``) and these modules (name → source)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = folder / "vmtrust_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vmtrust-test-plugin\nVersion: 0.1\n"
    )
    lines = []
    for group, points in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {value}" for name, value in points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for name, source in modules.items():
        (folder / f"{name}.py").write_text(source)
    return folder


def environment(folder: Path) -> dict[str, str]:
    """The environment of a child process that has the plug-in installed: this checkout
    first (as the tests run it), then the plug-in, then whatever was on the path."""
    paths = [str(ROOT), str(folder), *filter(None, [os.environ.get("PYTHONPATH", "")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}

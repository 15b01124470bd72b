"""docs/architecture.md names every module of the three packages, and only modules that exist.

The module map is where a newcomer looks first; a module added without a line there,
or a line left behind by a module that was split or removed, fails here.  A module is
named in its package's section as its path below the package in backticks
(`` `errors.py` ``, `` `stores/glance.py` ``), or, for a module of a subpackage, as its
file name in a section that names the subpackage (`` `cli/` `` … `` `listcmd.py` ``), or
anywhere as its full path (`` `vmtrust/enforcement.py` ``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("vmtrust", "glance_sync", "nova_filter")


def quoted(text: str) -> set[str]:
    """What the text puts in backticks, outside fenced blocks (a pair never spans lines)."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return set(re.findall(r"`([^`\n]+)`", prose))


def sections(text: str) -> dict[str, str]:
    """Level-2 sections of the document: heading → body."""
    found: dict[str, str] = {}
    heading = ""
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line
            found[heading] = ""
        elif heading:
            found[heading] += line + "\n"
    return found


def unnamed(text: str, package: str, modules: list[str]) -> list[str]:
    """The modules (paths below ``package``) the document does not name."""
    section = "".join(body for head, body in sections(text).items() if f"`{package}/`" in head)
    in_section, everywhere = quoted(section), quoted(text)
    missing = []
    for module in modules:
        if module in in_section or f"{package}/{module}" in everywhere:
            continue
        folder, _, name = module.rpartition("/")
        if folder and f"{folder}/" in in_section and name in in_section:
            continue
        missing.append(module)
    return missing


def package_modules(package: str) -> list[str]:
    return [
        path.relative_to(ROOT / package).as_posix()
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py")
    ]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_on_the_map(package):
    assert unnamed(DOC.read_text(), package, package_modules(package)) == []


def test_every_module_the_map_names_exists():
    files = [
        path.relative_to(ROOT).as_posix()
        for top in (*PACKAGES, "tests", "benchmarks")
        for path in (ROOT / top).rglob("*.py")
    ]
    named = {n for n in quoted(DOC.read_text()) if re.fullmatch(r"[\w/]+\.py", n)}
    stale = [n for n in sorted(named) if not any(f == n or f.endswith("/" + n) for f in files)]
    assert stale == []


def test_the_check_sees_a_missing_module_and_each_way_of_naming_one():
    text = (
        "## Modules of `pkg/`\n"
        "| `errors.py` | ... |\n| `stores/base.py` | ... |\n"
        "`cli/`: `main.py`, `render.py`\n"
        "```\n`odd\n```\n"
        "## Other\n`pkg/enforcement.py` and `late.py`\n"
    )
    modules = ["errors.py", "stores/base.py", "cli/main.py", "cli/render.py", "enforcement.py"]
    assert unnamed(text, "pkg", modules) == []
    assert unnamed(text, "pkg", ["late.py", "stores/glance.py", "cli/plugins.py"]) == [
        "late.py",  # named, but outside the package's section and not as pkg/late.py
        "stores/glance.py",
        "cli/plugins.py",
    ]

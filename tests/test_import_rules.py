"""The package map's import rules (docs/architecture.md), statically and at run time.

``vmtrust`` is the lower layer: ``glance_sync`` and ``nova_filter`` import it,
it imports neither, and the two upper packages do not import each other.  The
static scan reads every module's syntax tree (imports inside functions and
``TYPE_CHECKING`` blocks count, relative imports are resolved, and
``importlib.import_module``/``__import__`` of a literal name count too); the
run-time check imports the core in a fresh interpreter and looks at
``sys.modules``.  The sync side's commands reach ``vmtrust`` only as entry
points, checked here through the installed metadata.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: package → packages of this project it must never import
FORBIDDEN = {
    "vmtrust": {"glance_sync", "nova_filter"},
    "glance_sync": {"nova_filter"},
    "nova_filter": {"glance_sync"},
}
COMMANDS = ("list", "image", "keygen", "context", "launch", "audit", "ec2", "images", "status")


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module name ``source`` (the module ``module``) may import, wherever it does."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if called in ("import_module", "__import__") and isinstance(first, ast.Constant):
                names.add(str(first.value))
    return names


def modules(package: str) -> list[tuple[str, Path]]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found.append((".".join(parts), path))
    return found


def violations(package: str) -> list[str]:
    bad = []
    for name, path in modules(package):
        is_package = path.name == "__init__.py"
        module = name.removesuffix(".__init__")
        for imported in imported_names(path.read_text(), module, is_package):
            if imported.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {imported}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_upward_or_sideways(package):
    assert modules(package), f"no modules found under {package}/"
    assert violations(package) == []


@pytest.mark.parametrize(
    "source",
    [
        "import glance_sync.stores.local",
        "from glance_sync import settings",
        "def f():\n    from glance_sync.state import StateDB\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import glance_sync\n",
        "import importlib\nimportlib.import_module('glance_sync.sitecmd')\n",
        "from importlib import import_module\nimport_module('nova_filter.decision')\n",
        "__import__('glance_sync')\n",
    ],
)
def test_the_scan_sees_every_way_of_importing(source):
    names = imported_names(source, "vmtrust.cli.x")
    assert {n.split(".")[0] for n in names} & FORBIDDEN["vmtrust"], names


def test_relative_imports_resolve_inside_the_package():
    assert "vmtrust.cli.render" in imported_names("from .render import clean", "vmtrust.cli.x")
    assert "vmtrust.errors" in imported_names("from ..errors import E", "vmtrust.cli.x")
    assert "vmtrust.cli.render" in imported_names("from . import render", "vmtrust.cli", True)


def test_importing_the_core_and_its_cli_loads_no_upper_package():
    """Every module of vmtrust (and the command line's main) imported in a fresh
    interpreter: nothing of glance_sync or nova_filter comes along."""
    names = [
        name.removesuffix(".__init__")
        for name, _ in modules("vmtrust")
        if not name.endswith("__main__")
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "import vmtrust, vmtrust.cli.main\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('glance_sync', 'nova_filter')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_vmtrust_help_lists_every_command_with_the_sync_sides_from_entry_points():
    done = subprocess.run(
        [BIN / "vmtrust", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("    ")]
    assert [c for c in COMMANDS if c not in listed] == [], done.stdout


def test_the_sync_side_registers_images_and_status_as_commands():
    from vmtrust.cli.plugins import Command

    found = {p.name: p for p in entry_points(group="vmtrust.commands")}
    assert {"images", "status"} <= set(found), (
        "entry points missing: reinstall the checkout (pip install -e .) after pyproject changes"
    )
    for name in ("images", "status"):
        assert found[name].value.startswith("glance_sync."), found[name]
        assert isinstance(found[name].load(), Command)

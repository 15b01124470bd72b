"""Every module declares its API: ``__all__`` names what it defines, internals are private.

The packages ship ``py.typed``, so callers type-check against them; ``__all__`` is the
promise of which names they may use.  The check reads each module's syntax tree (so
the nova filter's modules are checked without nova installed) and then imports the
modules this environment can import, to find each declared name on the module.

Rules, per module:

* ``__all__`` is a literal list of strings, without repeats;
* each name in it is there: defined in the module (``def``, ``class`` or an
  assignment at the top level, also inside ``if`` branches), imported by it on purpose
  (a re-export: ``vmtrust.cli.render.clean``, what callers of a module that was split
  still import from it), or supplied by a package's module ``__getattr__``;
* each top-level function and class with a public name is in ``__all__``: what is not
  API takes a leading underscore.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vmtrust", "glance_sync", "nova_filter")
#: not imported here: what only the scheduler host has (nova), and the ``python -m`` mains
NOT_IMPORTED = {
    "nova_filter",  # its __getattr__ imports nova.scheduler for TrustedImageFilter
    "nova_filter.filter",
    "nova_filter.extra_specs",
    "vmtrust.__main__",
    "glance_sync.__main__",
}


def all_modules() -> list[tuple[str, Path]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found.append((name, path))
    return found


#: not API: Alembic loads its environment and revision scripts by path, nothing imports them
NOT_API = ("glance_sync.migrations",)
MODULES = [(m, p) for m, p in all_modules() if not m.startswith(NOT_API)]


def declared(tree: ast.Module) -> list[str] | None:
    """The literal ``__all__`` of the module, or None when it has none."""
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            value = node.value
            assert isinstance(value, ast.List | ast.Tuple), "__all__ is not a literal list"
            names = []
            for element in value.elts:
                assert isinstance(element, ast.Constant) and isinstance(element.value, str)
                names.append(element.value)
            return names
    return None


def _top_level(body: list[ast.stmt]) -> tuple[dict[str, str], set[str], set[str]]:
    """(defined name → kind, imported names, strings of a module ``__getattr__``)."""
    defined: dict[str, str] = {}
    imported: set[str] = set()
    supplied: set[str] = set()
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined[node.name] = "class" if isinstance(node, ast.ClassDef) else "function"
            if node.name == "__getattr__":
                supplied |= {
                    n.value
                    for n in ast.walk(node)
                    if isinstance(n, ast.Constant) and isinstance(n.value, str)
                }
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        defined.setdefault(name.id, "value")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            imported |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.If | ast.Try):
            branches = [node.body, node.orelse]
            if isinstance(node, ast.Try):
                branches += [h.body for h in node.handlers] + [node.finalbody]
            for branch in branches:
                more, more_imported, more_supplied = _top_level(branch)
                for name, kind in more.items():
                    defined.setdefault(name, kind)
                imported |= more_imported
                supplied |= more_supplied
    return defined, imported, supplied


def problems_of(module: str, source: str, is_package: bool) -> list[str]:
    """What is wrong with the module's declared API (empty: nothing)."""
    tree = ast.parse(source)
    names = declared(tree)
    if names is None:
        return [f"{module}: no __all__"]
    problems = []
    if len(set(names)) != len(names):
        problems.append(f"{module}: __all__ repeats a name")
    defined, imported, supplied = _top_level(tree.body)
    for name in names:
        if name in defined:
            continue
        if name in imported or (is_package and name in supplied):
            continue  # a re-export
        problems.append(f"{module}: __all__ names {name!r}, which it does not define")
    for name, kind in defined.items():
        if kind != "value" and not name.startswith("_") and name not in names:
            problems.append(
                f"{module}: {kind} {name} is public but not in __all__ "
                f"(add it, or name it _{name} if nothing outside uses it)"
            )
    return problems


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_module_declares_what_it_defines(module, path):
    assert problems_of(module, path.read_text(), path.name == "__init__.py") == []


@pytest.mark.parametrize(
    ("module", "path"),
    [(m, p) for m, p in MODULES if m not in NOT_IMPORTED],
    ids=[m for m, _ in MODULES if m not in NOT_IMPORTED],
)
def test_every_declared_name_is_there_on_import(module, path):
    imported = importlib.import_module(module)
    missing = [name for name in imported.__all__ if not hasattr(imported, name)]
    assert missing == []


def test_every_package_and_module_ships_its_types():
    for package in ("vmtrust", "glance_sync", "nova_filter"):
        assert (ROOT / package / "py.typed").is_file()
    text = (ROOT / "pyproject.toml").read_text()
    assert "[tool.setuptools.package-data]" in text
    for package in PACKAGES:
        assert f'{package} = ["py.typed"]' in text


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f(): pass\n", ["m: no __all__"]),
        ('__all__ = ["g"]\ndef g(): pass\ndef f(): pass\n', ["public but not in __all__"]),
        ('__all__ = ["h"]\n', ["names 'h', which it does not define"]),
        ('from x import h\n__all__ = ["h"]\n', []),
        ('from x import g\n__all__ = ["h"]\n', ["names 'h', which it does not define"]),
        ('__all__ = ["A", "A"]\nA = 1\n', ["repeats a name"]),
        ('__all__ = ["g"]\ndef g(): pass\ndef _f(): pass\nLOG = 1\n', []),
        ('__all__ = ["C"]\nif X:\n    class C: pass\nelse:\n    class C: pass\n', []),
    ],
)
def test_the_check_finds_each_kind_of_problem(source, expected):
    found = problems_of("m", source, is_package=False)
    assert len(found) == len(expected)
    for problem, words in zip(found, expected, strict=True):
        assert words in problem


def test_a_package_may_reexport_and_supply_names_lazily():
    source = (
        "from m.a import A\n"
        '__all__ = ["A", "B"]\n'
        "def __getattr__(name):\n"
        '    if name == "B":\n'
        "        return 1\n"
        "    raise AttributeError(name)\n"
    )
    assert problems_of("m", source, is_package=True) == []
    assert len(problems_of("m", source, is_package=False)) == 1  # B: only a package's

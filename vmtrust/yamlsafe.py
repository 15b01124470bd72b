"""Bounded YAML loading: the one way vmtrust reads a YAML document.

Subscriptions, site and VO profiles and the cloud-config parts of user-data
given to ``vmtrust context check`` are YAML, and YAML aliases let a few
hundred bytes stand for billions of nodes ("billion laughs").  PyYAML composes
such a document as a small graph of shared nodes, but any code that walks or
prints the result (a ``repr`` in an error message, a ``join`` over a list)
expands it: a 400-byte user-data took 5.5 GB and minutes.  This loader is
PyYAML's safe loader with a composer that counts while it composes and stops
the moment a document goes over a limit:

* ``max_bytes`` of input;
* ``max_aliases`` alias uses;
* ``max_nodes`` nodes *as expanded*: an alias counts as the whole subtree it
  repeats, so the count is what a walk of the result visits;
* ``max_depth`` levels of nesting, also as expanded (PyYAML composes
  recursively, and so do ``repr`` and most consumers).

It also refuses what no configuration needs and a walk cannot survive: an
alias inside the node it names (a cycle, which never ends when walked), and
integers longer than ``MAX_INT_CHARS`` characters (YAML 1.1's base-60 integers
take quadratic time to build; long decimal ones exceed Python's conversion
limit).  A value the constructor cannot build (the 13th month of a date) is a
YAML error with its line, like a syntax error.

Syntax errors stay :class:`yaml.YAMLError`, so callers keep reporting them
with the line as before; a limit is :class:`YamlRefused`, one line naming the
document.  Time is linear in the input: every check is a counter.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.error import Mark
from yaml.events import AliasEvent
from yaml.resolver import Resolver

from vmtrust.errors import YamlRefused

__all__ = [
    "MAX_ALIASES",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_INT_CHARS",
    "MAX_NODES",
    "load",
    "load_file",
]

MAX_BYTES = 1024 * 1024  #: a subscriptions file with 500 subscriptions is ~100 KB
MAX_ALIASES = 1000
MAX_NODES = 100_000
MAX_DEPTH = 64
MAX_INT_CHARS = 64


class _Limit(Exception):
    """Raised inside the loader; :func:`load` turns it into :class:`YamlRefused`."""

    def __init__(self, message: str, mark: Mark | None) -> None:
        super().__init__(message)
        self.mark = mark


class _CountingComposer(Composer):
    """PyYAML's composer, counting expanded nodes, aliases and depth as it goes."""

    max_aliases = MAX_ALIASES
    max_nodes = MAX_NODES
    max_depth = MAX_DEPTH

    if TYPE_CHECKING:  # the parser the loader mixes in (libyaml's or PyYAML's) supplies these

        def peek_event(self) -> Any: ...
        def check_event(self, *choices: Any) -> bool: ...

    def _start_counting(self) -> None:
        self._aliases = 0
        self._nodes = 0  #: nodes so far, every alias counted as the subtree it repeats
        self._depth = 0
        self._deepest = 0  #: deepest level reached in the node being composed
        self._open: set[str] = set()  #: anchors whose node is still being composed
        self._extent: dict[str, tuple[int, int]] = {}  #: anchor → (expanded nodes, height)

    def _grow(self, nodes: int, depth: int, mark: Mark) -> None:
        self._nodes += nodes
        if self._nodes > self.max_nodes:
            raise _Limit(
                f"expands to more than {self.max_nodes} nodes (aliases repeat too much)", mark
            )
        if depth > self.max_depth:
            raise _Limit(f"nested deeper than {self.max_depth} levels", mark)
        self._deepest = max(self._deepest, depth)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if self.check_event(AliasEvent):
            self._aliases += 1
            if self._aliases > self.max_aliases:
                raise _Limit(f"more than {self.max_aliases} aliases", event.start_mark)
            if event.anchor in self._open:
                raise _Limit(f"alias *{event.anchor} is inside the node it names", event.start_mark)
            node = super().compose_node(parent, index)  # refuses an undefined alias
            nodes, height = self._extent[event.anchor]
            self._grow(nodes, self._depth + height, event.start_mark)
            return node
        self._depth += 1
        outer_deepest, before = self._deepest, self._nodes
        self._grow(1, self._depth, event.start_mark)
        anchor = event.anchor
        if anchor is not None:
            self._open.add(anchor)
        node = super().compose_node(parent, index)
        if anchor is not None:
            self._open.discard(anchor)
            self._extent[anchor] = (self._nodes - before, self._deepest - self._depth + 1)
        self._depth -= 1
        self._deepest = max(outer_deepest, self._deepest)
        return node


class _BoundedConstructor(SafeConstructor):
    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # a date with month 13, say
            raise ConstructorError(
                None, None, f"cannot read the value ({exc})", node.start_mark
            ) from None

    def construct_yaml_int(self, node: Any) -> int:
        if len(node.value) > MAX_INT_CHARS:
            raise _Limit(
                f"an integer of {len(node.value)} characters (at most {MAX_INT_CHARS})",
                node.start_mark,
            )
        return super().construct_yaml_int(node)


_BoundedConstructor.add_constructor(  # type: ignore[type-var]  # stubs expect a whole loader class
    "tag:yaml.org,2002:int", _BoundedConstructor.construct_yaml_int
)


if yaml.__with_libyaml__:
    # libyaml scans and parses (three times faster than PyYAML's own scanner);
    # the counting composer and the safe constructor stay in Python.
    from yaml._yaml import CParser as _Parser  # where yaml.cyaml takes it from

    class _Loader(_CountingComposer, _Parser, _BoundedConstructor, Resolver):
        def __init__(self, stream: str | bytes) -> None:
            _Parser.__init__(self, stream)
            _CountingComposer.__init__(self)
            _BoundedConstructor.__init__(self)
            Resolver.__init__(self)
            self._start_counting()

else:  # pragma: no cover - PyYAML without libyaml

    class _Loader(  # type: ignore[no-redef]  # one _Loader per branch
        _CountingComposer, yaml.SafeLoader, _BoundedConstructor
    ):
        def __init__(self, stream: str | bytes) -> None:
            yaml.SafeLoader.__init__(self, stream)
            self._start_counting()


def load(data: str | bytes, *, source: str, max_bytes: int = MAX_BYTES) -> Any:
    """The single YAML document in ``data``, like :func:`yaml.safe_load`, within the limits.

    ``source`` names the document in errors ("subscriptions file /etc/…").
    """
    # a character is at least one byte: only a short enough text is encoded to measure it
    if len(data) > max_bytes or (
        isinstance(data, str) and len(data.encode("utf-8", "surrogatepass")) > max_bytes
    ):
        raise YamlRefused(f"{source}: larger than the limit of {max_bytes} bytes for YAML")
    loader = _Loader(data)
    try:
        return loader.get_single_data()
    except _Limit as exc:
        where = f"line {exc.mark.line + 1}: " if exc.mark else ""
        raise YamlRefused(f"{source}: {where}YAML refused: {exc}") from None
    finally:
        loader.dispose()


def load_file(path: str | Path, *, source: str, max_bytes: int = MAX_BYTES) -> Any:
    """:func:`load` of a UTF-8 file, reading at most ``max_bytes`` + 1 bytes of it.

    ``OSError`` and ``UnicodeDecodeError`` reach the caller, which names the file its way.
    """
    with open(Path(path).expanduser(), "rb") as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise YamlRefused(f"{source}: larger than the limit of {max_bytes} bytes for YAML")
    return load(data.decode("utf-8"), source=source, max_bytes=max_bytes)

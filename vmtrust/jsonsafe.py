"""Bounded, strict JSON decoding for data that arrives from the network.

An image list is fetched from servers the site does not control, so decoding
must refuse in bounded time and memory: oversized documents, deep nesting,
duplicate keys (which different parsers resolve differently — the signed
bytes could then mean two things), invalid UTF-8, the non-standard
``NaN``/``Infinity`` constants, numbers too large for a float (``1e400``,
which Python would turn into infinity and write back as ``Infinity``) and
escaped lone surrogates (``"\\ud800"``, which no UTF-8 output can carry).
Python's C decoder does the work; this module only wraps it with the limits
and turns every failure into :class:`~vmtrust.errors.InvalidJSON` naming the
position.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from vmtrust.errors import InvalidJSON, ListTooLarge

__all__ = ["DEFAULT_MAX_BYTES", "MAX_DEPTH", "depth", "loads"]

#: Default ceiling for one image list; a 1,000-image AppDB list is about 1.5 MB.
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
#: Deepest nesting accepted anywhere (a HEPiX list needs 5).
MAX_DEPTH = 32

# A \uD800-\uDFFF escape somewhere in the text: only then are strings scanned.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class _DuplicateKey(ValueError):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _lone_surrogate(value: Any) -> str | None:
    """The first string (key or value) holding an unpaired surrogate, if any."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of ``value``, stopping early once past ``limit``.

    Iterative so that checking a hostile structure cannot itself recurse.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            level += 1
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level) for child in children)
    return deepest


def loads(data: bytes, *, what: str = "image list", max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Decode ``data`` as one strict JSON document or raise :class:`InvalidJSON`.

    ``what`` names the document in error messages.  Depth beyond
    :data:`MAX_DEPTH` is refused by the caller that knows which values may
    nest (see :func:`depth`); the decoder itself stops at Python's recursion
    limit, which keeps hostile nesting bounded.
    """
    if len(data) > max_bytes:
        raise ListTooLarge(
            f"{what}: {len(data)} bytes is larger than the limit of {max_bytes} bytes"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"{what}: not UTF-8 (invalid byte at offset {exc.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        value = json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except _DuplicateKey as exc:
        raise InvalidJSON(f"{what}: duplicate key {json.dumps(str(exc))}") from None
    except json.JSONDecodeError as exc:
        raise InvalidJSON(
            f"{what}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise InvalidJSON(f"{what}: nesting is too deep") from None
    except ValueError as exc:  # NaN/Infinity, 1e400, integers beyond int_max_str_digits
        raise InvalidJSON(f"{what}: not valid JSON: {exc}") from None
    # A one-character search (memchr) first: most lists have no backslash at all.
    if "\\" in text and _SURROGATE_ESCAPE.search(text):
        bad = _lone_surrogate(value)
        if bad is not None:
            raise InvalidJSON(
                f"{what}: string {json.dumps(bad[:40])} holds an unpaired surrogate "
                "(not valid Unicode)"
            )
    return value

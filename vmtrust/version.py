"""The split-numeric version order of ``hv:version``, as vmcatcher and vmcaster use it.

Endorsers publish versions such as ``1.10``, ``0.0.2``, ``20150618211400`` or
``rc2``.  Rollback protection needs the same order the reference subscriber
used, otherwise a site would refuse (or accept) lists that vmcatcher sites
accept (or refuse).  The rules, from vmcatcher's ``stringsort.py``:

1. split on ``-`` ``,`` ``.`` ``/`` keeping the delimiters as tokens;
2. two all-digit tokens compare as integers;
3. an all-digit token is greater than a non-numeric one;
4. two non-numeric tokens are split into digit / non-digit runs compared with
   the same rules, non-digit runs by code point;
5. when one sequence is a prefix of the other, the longer is greater.

Unlike vmcatcher's ``split_numeric_sort`` (which returns -1 when a > b) this
module returns the conventional sign: ``compare(a, b) > 0`` means a is newer.
"""

from __future__ import annotations

import functools
import re

__all__ = ["bump", "compare", "version_key"]

_DELIMITED = re.compile(r"([-,./])")
# ASCII digits only, as vmcatcher's ``[0-9]+`` and Python 2's ``str.isdigit``:
# Python 3's ``\d`` and ``isdigit()`` also match "٣" or "²" (int() rejects the latter).
_RUNS = re.compile(r"([0-9]+)")
_NUMERIC = re.compile(r"[0-9]+\Z")


def _tokens(version: str) -> list[str]:
    return [t for t in _DELIMITED.split(version) if t != ""]


def _is_numeric(token: str) -> bool:
    return _NUMERIC.match(token) is not None


def _compare_integers(a: str, b: str) -> int:
    """Compare two ASCII digit strings as integers without int().

    int() refuses strings of more than 4,300 digits (and is quadratic below
    that); an endorser-controlled ``hv:version`` must not be able to crash or
    slow down the rollback check.
    """
    a, b = a.lstrip("0"), b.lstrip("0")
    if len(a) != len(b):
        return 1 if len(a) > len(b) else -1
    return (a > b) - (a < b)


def _compare_atoms(a: str, b: str) -> int:
    """Compare two runs that are each all-digit or all-non-digit."""
    a_num, b_num = _is_numeric(a), _is_numeric(b)
    if a_num and b_num:
        return _compare_integers(a, b)
    if a_num != b_num:
        return 1 if a_num else -1
    return (a > b) - (a < b)


def _compare_sequences(a: list[str], b: list[str], atom) -> int:
    for x, y in zip(a, b, strict=False):
        if x == y:
            continue
        result = atom(x, y)
        if result:
            return result
    return (len(a) > len(b)) - (len(a) < len(b))


def _compare_tokens(a: str, b: str) -> int:
    if _is_numeric(a) or _is_numeric(b):
        return _compare_atoms(a, b)
    a_runs = [r for r in _RUNS.split(a) if r]
    b_runs = [r for r in _RUNS.split(b) if r]
    return _compare_sequences(a_runs, b_runs, _compare_atoms)


def compare(a: str, b: str) -> int:
    """Return 1 if ``a`` is newer than ``b``, -1 if older, 0 if equal in this order.

    Note that distinct strings can compare equal (``1.01`` and ``1.1``): the
    order is a total preorder.  vmcatcher stops at the first pair of numeric
    tokens with the same value (so it finds ``01.1`` equal to ``1.2``, which
    is not transitive); this comparator goes on to the next token instead.
    """
    return _compare_sequences(_tokens(a), _tokens(b), _compare_tokens)


#: Use as ``sorted(versions, key=version_key)``.
version_key = functools.cmp_to_key(compare)


def bump(version: str) -> str:
    """Next version for an endorser: the last numeric run + 1, as vmcaster does.

    ``"3"`` → ``"4"``, ``"1.2.9"`` → ``"1.2.10"``, ``"rc1"`` → ``"rc2"``; a
    version with no digits gets ``".1"`` appended.  Leading zeros keep their
    width (``"0009"`` → ``"0010"``) so that date-like versions stay date-like.
    """
    matches = list(_RUNS.finditer(version))
    if not matches:
        return f"{version}.1" if version else "1"
    last = matches[-1]
    return version[: last.start()] + _increment(last.group()) + version[last.end() :]


def _increment(digits: str) -> str:
    """``digits`` + 1 as a decimal string of at least the same width (no int() limit)."""
    head = digits.rstrip("9")
    nines = len(digits) - len(head)
    if not head:
        return "1" + "0" * nines
    return head[:-1] + str(int(head[-1]) + 1) + "0" * nines

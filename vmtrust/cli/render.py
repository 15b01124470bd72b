"""Human-readable output: aligned fields and tables, plain text, no colour.

Everything shown comes from a list or certificate nobody has vouched for yet
(``list show`` does not verify), so every value goes through :func:`clean`:
a hostile title must not move the cursor, retitle the terminal, or forge a
second line of output.
"""

from __future__ import annotations

import json
import re
from typing import Any

from vmtrust.imagelist import endorser_objects, image_objects
from vmtrust.safetext import clean

__all__ = ["clean", "show_list", "table"]

_SIZE = re.compile(r"[0-9]{1,20}")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; the last column is not padded.

    Cells are :func:`clean`-ed first, so the widths are those of what is printed.
    """
    headers = [clean(c) for c in headers]
    rows = [[clean(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _raw(value: Any, missing: str = "(missing)") -> str:
    """A field as the document has it: text as it is, a number as JSON, a structure elided.

    ``list show`` prints lists that do not validate, so nothing here may assume a type.
    """
    if value is None:
        return missing
    if isinstance(value, str):
        return value or "(empty)"
    if isinstance(value, dict | list):
        return "{...}" if isinstance(value, dict) else "[...]"
    return json.dumps(value)


def _raw_size(value: Any) -> str:
    """A size in KiB, MiB … when it is one (a number or AppDB's decimal text, at most 20
    digits as validation allows), else as it is."""
    text = value if isinstance(value, str) else _raw(value, "?")
    return _size(int(text)) if _SIZE.fullmatch(text) else text


_HEADER = (
    ("Title", "dc:title"),
    ("Identifier", "dc:identifier"),
    ("Version", "hv:version"),
    ("URI", "hv:uri"),
    ("Created", "dc:date:created"),
    ("Expires", "dc:date:expires"),
)


def show_list(fields: dict[str, Any], *, signature: list[str], problems: list[str]) -> None:
    """Print a list's fields (those of its ``hv:imagelist`` object), its images, what
    ``signature`` says (one line each) and every one of its ``problems``."""
    rows = [(label, _raw(fields.get(key))) for label, key in _HEADER]
    if fields.get("ad:vo"):
        rows.append(("VO", _raw(fields["ad:vo"])))
    for endorser in endorser_objects(fields):
        endorser = endorser if isinstance(endorser, dict) else {}
        rows.append(("Endorser", _raw(endorser.get("hv:dn"))))
        rows.append(("  issued by", _raw(endorser.get("hv:ca"))))
    rows += [("Signature" if i == 0 else "", line) for i, line in enumerate(signature)]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {clean(value)}")
    print()
    images = [obj if isinstance(obj, dict) else {} for _, obj in image_objects(fields)]
    if fields.get("hv:images") == []:
        print("No images (an empty list decommissions the endorser's images).")
    elif images:
        print(
            table(
                ["IDENTIFIER", "VERSION", "SIZE", "FORMAT", "OS", "TITLE"],
                [
                    [
                        _raw(img.get("dc:identifier"), "?"),
                        _raw(img.get("hv:version"), "?"),
                        _raw_size(img.get("hv:size")),
                        _raw(img.get("hv:format"), "-"),
                        " ".join(
                            _raw(img.get(key), "?") for key in ("sl:os", "sl:osversion", "sl:arch")
                        ),
                        _raw(img.get("dc:title"), "?"),
                    ]
                    for img in images
                ],
            )
        )
    if problems:
        plural = "s" if len(problems) > 1 else ""
        print(f"\nNOT A VALID IMAGE LIST: {len(problems)} problem{plural}:")
        for problem in problems:
            print(f"  {clean(problem)}")

"""Human-readable output: aligned fields and tables, plain text, no colour.

Everything shown comes from a list or certificate nobody has vouched for yet
(``list show`` does not verify), so every value goes through :func:`clean`:
a hostile title must not move the cursor, retitle the terminal, or forge a
second line of output.
"""

from __future__ import annotations

from vmtrust.imagelist import ImageList, format_date
from vmtrust.safetext import clean

__all__ = ["clean", "show_list", "table"]


def _size(n: int) -> str:
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


def show_list(lst: ImageList, *, signature: str | None) -> None:
    fields = [
        ("Title", lst.title),
        ("Identifier", lst.identifier),
        ("Version", lst.version),
        ("URI", lst.uri),
        ("Created", format_date(lst.created)),
        ("Expires", format_date(lst.expires)),
    ]
    if lst.vo:
        fields.append(("VO", lst.vo))
    for endorser in lst.endorsers:
        fields.append(("Endorser", f"{endorser.dn}"))
        fields.append(("  issued by", endorser.ca))
    fields.append(("Signature", signature or "none (plain JSON list)"))
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        print(f"{key.ljust(width)}  {clean(value)}")
    print()
    if not lst.images:
        print("No images (an empty list decommissions the endorser's images).")
        return
    rows = [
        [
            img.identifier,
            img.version,
            _size(img.size),
            (img.format or "-"),
            f"{img.os} {img.osversion} {img.arch}",
            img.title,
        ]
        for img in lst.images
    ]
    print(table(["IDENTIFIER", "VERSION", "SIZE", "FORMAT", "OS", "TITLE"], rows))

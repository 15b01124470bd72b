"""Human-readable output: aligned fields and tables, plain text, no colour.

Everything shown comes from a list or certificate nobody has vouched for yet
(``list show`` does not verify), so every value goes through :func:`clean`:
a hostile title must not move the cursor, retitle the terminal, or forge a
second line of output.
"""

from __future__ import annotations

import unicodedata

from vmtrust.imagelist import ImageList, format_date

#: Unicode categories written as escapes: controls, format characters (bidi
#: overrides), surrogates, line and paragraph separators.
_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def clean(text: object) -> str:
    """``text`` as one printable line: control and format characters become escapes
    (``\\n``, ``\\x1b``, ``\\u202e``), so untrusted data can neither add lines nor
    drive the terminal."""
    value = str(text)
    if value.isprintable():
        return value
    return "".join(
        _escape(c) if c != " " and unicodedata.category(c) in _UNSAFE else c for c in value
    )


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

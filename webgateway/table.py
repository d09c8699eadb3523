"""One way to print a listing: aligned columns under a header, for every CLI command.

Cells are rendered with ``str`` (``None`` and ``""`` as ``-``); a column of numbers
(and blanks) is right-aligned so days and counts line up; lines carry no trailing blanks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _text(cell: object) -> str:
    return "-" if cell is None or cell == "" else str(cell)


def _number(cell: object) -> bool:
    return isinstance(cell, int | float) and not isinstance(cell, bool)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    raw = [list(r) for r in rows]
    for row in raw:
        if len(row) != len(headers):
            raise ValueError(f"a row has {len(row)} cells for {len(headers)} columns")
    right = [
        any(_number(r[i]) for r in raw) and all(_number(r[i]) or r[i] is None for r in raw)
        for i in range(len(headers))
    ]
    body = [[_text(c) for c in row] for row in raw]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(headers)]
    lines = []
    for line in [list(headers), *body]:
        cells = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(line, widths, right, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)

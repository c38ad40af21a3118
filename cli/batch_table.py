"""The batch modes' final table: plain text, aligned columns, readable in a CI log without a terminal."""

from __future__ import annotations

from collections.abc import Sequence

from normfold.columns import SHORTEST, WIDTH, cut, middle

REASON_WIDTH = 72
NAME_WIDTH = 40  # optional columns are dropped before a squeezed column (paths) goes below this
FITTED_REASON_WIDTH = 30  # or the last column (the reason) below this


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A header, a rule of dashes and one line per row, columns left-aligned two spaces apart, no trailing blanks."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    lines = [list(header), ["-" * width for width in widths], *rows]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]


def shorten(text: str, width: int = REASON_WIDTH) -> str:
    """`text` on one line, cut at a word boundary with '...' past `width`, so one long error cannot widen the table."""
    return cut(" ".join(text.split()), width)


def fit_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    squeeze: Sequence[int] = (0,),
    droppable: Sequence[int] = (),
    width: int = WIDTH,
) -> list[str]:
    """render_table in `width` columns: the `squeeze` columns' cells lose their middle, the last column's cells
    their end; where that is not enough, the `droppable` columns go, in the order given."""
    natural = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    last = len(header) - 1
    kept = list(range(len(header)))

    def floor(column: int) -> int:
        limit = FITTED_REASON_WIDTH if column == last else NAME_WIDTH if column in squeeze else natural[column]
        return min(natural[column], limit)

    for column in droppable:
        if sum(map(floor, kept)) + 2 * (len(kept) - 1) <= width:
            break
        kept.remove(column)
    fixed = [c for c in kept if c not in squeeze and c != last]
    room = width - sum(natural[c] for c in fixed) - 2 * (len(kept) - 1)
    names = [c for c in kept if c in squeeze]
    reason = min(natural[last], max(floor(last), room - sum(natural[c] for c in names)))
    sizes = {c: natural[c] for c in names}
    while sum(sizes.values()) > room - reason:
        longest = max(sizes, key=sizes.__getitem__)
        if sizes[longest] <= max(SHORTEST, len(header[longest])):
            break
        sizes[longest] -= 1
    reason = max(len(header[last]), min(reason, room - sum(sizes.values())))

    def cell(column: int, text: str) -> str:
        return cut(text, reason) if column == last else middle(text, sizes[column]) if column in sizes else text

    return render_table([header[c] for c in kept], [[cell(c, row[c]) for c in kept] for row in rows])

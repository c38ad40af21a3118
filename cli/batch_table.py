"""The batch modes' final table: plain text, aligned columns, readable in a CI log without a terminal."""

from __future__ import annotations

from collections.abc import Sequence

REASON_WIDTH = 72


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A header, a rule of dashes and one line per row, columns left-aligned two spaces apart, no trailing blanks."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    lines = [list(header), ["-" * width for width in widths], *rows]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]


def shorten(text: str, width: int = REASON_WIDTH) -> str:
    """`text` on one line, cut at a word boundary with '...' past `width`, so one long error cannot widen the table."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    cut = text[: width - 3]
    head, _, _ = cut.rpartition(" ")
    return (head if len(head) > width // 2 else cut).rstrip(" ,;:(") + "..."

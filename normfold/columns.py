"""Report lines that fit a terminal: names and paths lose their middle, free text its end; nothing wraps."""

from __future__ import annotations

import re
from collections.abc import Sequence

WIDTH = 100  # the columns every default report line fits in
ELLIPSIS = "..."
COMFORTABLE = 24  # names are squeezed to this before free text is cut
SHORTEST = 12  # and never below this


class Squeezable(str):
    """A part of a line (a name, a path) that may lose its middle to make the line fit."""


class Cuttable(str):
    """A part of a line (free text: a detail, a reason) that may lose its end to make the line fit."""


def middle(text: str, width: int) -> str:
    """`text` in at most `width` characters: its start and end kept, '...' in place of the middle.

    A path keeps its last component whole where that leaves a few characters of its start.
    """
    if len(text) <= width:
        return text
    if width <= len(ELLIPSIS):
        return text[:width]
    kept = width - len(ELLIPSIS)
    separator = max(text.rfind("/"), text.rfind("\\"))
    tail = len(text) - separator if 0 <= separator and len(text) - separator <= kept - 4 else kept - kept // 2
    return text[: kept - tail] + ELLIPSIS + text[len(text) - tail :]


def cut(text: str, width: int) -> str:
    """`text` on one line in at most `width` characters; when too long, cut with '...' at the end of a clause in
    its last third, else at a word boundary."""
    text = re.sub(r"\s*[\r\n\t]\s*", " ", text)
    if len(text) <= width:
        return text
    kept = text[: max(width - len(ELLIPSIS) + 1, 0)]
    clause = max(kept.rfind(mark) for mark in (", ", "; ", ": ", " ("))
    word = kept.rfind(" ")
    end = clause if clause > width * 2 // 3 else word if word > width // 2 else len(kept) - 1
    return kept[:end].rstrip(" ,;:(|") + ELLIPSIS


def fit(parts: Sequence[str], width: int = WIDTH) -> str:
    """The parts joined in at most `width` characters.

    Squeezable parts lose their middle, the longest first, down to COMFORTABLE characters; then Cuttable parts
    lose their end, the last first; then Squeezable parts go down to SHORTEST; a line still too long is cut at
    the end.
    """
    sizes = [len(part) for part in parts]
    _squeeze(parts, sizes, width, COMFORTABLE)
    for i in reversed(range(len(parts))):
        over = sum(sizes) - width
        if over > 0 and isinstance(parts[i], Cuttable):
            sizes[i] = max(min(sizes[i], COMFORTABLE), sizes[i] - over)
    _squeeze(parts, sizes, width, SHORTEST)
    line = "".join(
        middle(part, size) if isinstance(part, Squeezable) else cut(part, size) if isinstance(part, Cuttable) else part
        for part, size in zip(parts, sizes)
    )
    return line if len(line) <= width else cut(line, width)


def _squeeze(parts: Sequence[str], sizes: list[int], width: int, floor: int) -> None:
    """Shrink the sizes of the Squeezable parts, the longest first, until the line fits or each is at `floor`."""
    names = [i for i, part in enumerate(parts) if isinstance(part, Squeezable)]
    while (over := sum(sizes) - width) > 0:
        longest = max((i for i in names if sizes[i] > floor), key=sizes.__getitem__, default=None)
        if longest is None:
            return
        runner_up = max((sizes[i] for i in names if i != longest), default=0)
        sizes[longest] -= min(over, sizes[longest] - floor, max(sizes[longest] - runner_up, 1))

"""Plain-text and markdown tables: one formatter per format, shared by every report."""

from __future__ import annotations

from typing import Iterable, Literal, Optional, Sequence

Align = Literal["left", "right", "center"]
EMPTY_CELL = "–"


def _text(value: object) -> str:
    return EMPTY_CELL if value is None or value == "" else str(value)


def text_table(
    header: Sequence[object],
    rows: Iterable[Sequence[object]],
    *,
    align: Align = "right",
) -> str:
    """A fixed-width table for a terminal: the first column left-aligned, the
    others aligned by ``align``, a dashed rule under the header."""
    head = [_text(c) for c in header]
    body = [[_text(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    justify = {"left": str.ljust, "right": str.rjust, "center": str.center}[align]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i == 0 else justify(cell, width)
            for i, (cell, width) in enumerate(zip(cells, widths))
        )

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def markdown_table(
    header: Sequence[object],
    rows: Iterable[Sequence[object]],
    *,
    align: Optional[Align] = None,
) -> str:
    """A GitHub-flavoured markdown table; ``|`` and newlines in cells are escaped.
    ``align`` sets every column but the first (which stays left)."""

    def cell(value: object) -> str:
        return _text(value).replace("|", "\\|").replace("\n", " ")

    marker = {None: "---", "left": ":--", "right": "--:", "center": ":-:"}[align]
    lines = [
        "| " + " | ".join(cell(c) for c in header) + " |",
        "|" + "|".join(["---"] + [marker] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)

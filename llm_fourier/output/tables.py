"""Plain-text tables for the console."""

from __future__ import annotations


def format_cell(value) -> str:
    """A table cell: floats to 4 significant digits, None empty."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Left-aligned columns with a header rule; floats to 4 significant digits."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    cells = [[format_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])

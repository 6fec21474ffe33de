"""HTML fragments for report pages: tables, inlined figures, collapsible blocks.

Used by every command's report view and by the batch page that assembles them; figures are
embedded as base64, so a page is one self-contained file.
"""

from __future__ import annotations

import base64
import csv
import html
from pathlib import Path

from llm_fourier.output.tables import format_cell

MAX_ROWS = 40


def esc(text) -> str:
    return html.escape(str(text))


def html_table(rows: list[dict], columns: list[str] | None = None, max_rows: int = MAX_ROWS,
               caption: str = "") -> str:
    """Rows of dicts as an HTML table (floats to 4 significant digits)."""
    if not rows:
        return ""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(format_cell(r.get(c)))}</td>"
                                    for c in columns) + "</tr>" for r in rows[:max_rows])
    more = (f"<p class='meta'>first {max_rows} of {len(rows)} rows shown</p>"
            if len(rows) > max_rows else "")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<div class='wide'><table>{cap}<tr>{head}</tr>{body}</table></div>{more}"


def details(title: str, body: str) -> str:
    return f"<details><summary>{esc(title)}</summary>{body}</details>"


def figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{esc(path.stem)}'>"
            f"<figcaption><b>{esc(path.name)}</b>: {esc(caption)}</figcaption></figure>")


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def record_tables(results: dict, skip: tuple[str, ...] = (), max_rows: int = 60) -> str:
    """Every top-level list of flat records (e.g. outliers) as a captioned table."""
    parts = []
    for key, value in results.items():
        if (key not in skip and isinstance(value, list) and value and len(value) <= max_rows
                and all(isinstance(r, dict) for r in value)
                and all(not isinstance(v, (dict, list)) for r in value for v in r.values())):
            table = html_table(value, caption=key.replace("_", " "))
            parts.append(table if len(value) <= 12 else
                         details(f"{key} ({len(value)} rows)", table))
    return "\n".join(parts)


def periods_text(outliers, n: int = 4) -> str:
    """The periods of the first ``n`` outliers, e.g. "10 5 2.5 2"."""
    return " ".join(f"{o.get('period'):g}" for o in (outliers or [])[:n]
                    if isinstance(o.get("period"), (int, float)))


def flat_record(row: dict) -> dict:
    """Lists in a record as space-separated text (e.g. key frequencies); dicts dropped."""
    return {k: " ".join(str(x) for x in v) if isinstance(v, list) else v for k, v in row.items()
            if not isinstance(v, dict)}


def percent(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"

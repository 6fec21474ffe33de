"""Analysis-specific parts of the HTML report: tables and figures drawn from results.json.

``job_extras`` returns HTML for one job, ``section_extras`` for a whole section (comparisons
across jobs). Each knows the result layout of one command and draws nothing when the layout
is absent, so the generic rendering in ``report.html`` always works.
"""

from __future__ import annotations

import html
from pathlib import Path

from llm_fourier.report.html import html_table


def record_tables(results: dict, max_rows: int = 60) -> str:
    """Every top-level list of flat records (e.g. outliers) as a captioned table."""
    parts = []
    for key, value in results.items():
        if (isinstance(value, list) and value and len(value) <= max_rows
                and all(isinstance(r, dict) for r in value)
                and all(not isinstance(v, (dict, list)) for r in value for v in r.values())):
            table = html_table(value, caption=key.replace("_", " "))
            parts.append(table if len(value) <= 12 else
                         f"<details><summary>{html.escape(key)} ({len(value)} rows)</summary>"
                         f"{table}</details>")
    return "\n".join(parts)


def job_extras(section: str, out: Path, job_id: str, entry: dict, results: dict) -> str:
    """Tables and figures for one job of ``section``."""
    return record_tables(results)


def section_extras(section: str, out: Path, entries: dict, results: dict) -> str:
    """Comparisons across the jobs of ``section``."""
    del out, entries, results
    return "" if section else html.escape(section)

"""One self-contained ``index.html`` for a report folder, laid out like a results section.

Reads ``manifest.json`` and every job folder, and writes ``OUT/index.html`` with all PNGs
embedded as base64 (no external files or network needed to view it). Sections follow a
paper's order: embeddings, fine-tuning, per-layer Fourier analysis, ablations, hidden-state
probes, transplants, toy models; each has a short explanation, a comparison table of the
jobs' headline numbers (also written to ``OUT/tables/<section>.csv``), and per job its
figures with captions and its CSV tables as HTML tables. Failed jobs are listed with their
errors. Sections, captions, tables and comparison figures come from each command's report
view (``Command.section``, ``captions``, ``job_html``, ``section_html``, ``findings``), so this
module knows no command's result layout.
"""

from __future__ import annotations

import time
from pathlib import Path

from llm_fourier.batch.runner import MANIFEST, job_dir
from llm_fourier.commands import all_commands
from llm_fourier.commands.base import Command, JobView
from llm_fourier.output.files import atomic_write_text, read_json, write_csv
from llm_fourier.output.html import details, esc, figure, html_table, read_csv, record_tables

STYLE = """
body{font-family:Georgia,serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;
line-height:1.45}
h1{font-size:1.9em;margin-bottom:.2em}h2{border-bottom:2px solid #ccc;margin-top:2em}
h3{margin-bottom:.3em}p.lead{color:#555}figure{margin:1em 1em 1em 0;display:inline-block;
max-width:530px;vertical-align:top}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;max-width:700px}table{border-collapse:collapse;
margin:.6em 0;font-size:.85em;font-family:Helvetica,Arial,sans-serif}th,td{border:1px solid
#ccc;padding:3px 7px;text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{
text-align:left}.failed{color:#a00}.meta{color:#666;font-size:.85em}
.job{margin:1.2em 0 2em 0}.wide{overflow-x:auto;max-width:100%}
details{margin:.4em 0}code{font-size:.9em}
"""

GENERIC_CAPTIONS = {  # filename fragment -> caption, when the command names none
    "heatmap": "Fourier component magnitude per component k (vertical) and layer (horizontal).",
    "spectrum": "Fourier spectrum: magnitude per component k, outliers labelled by period.",
    "error": "Histogram of signed errors (prediction - answer).",
    "loss": "Training and test loss over training (log scale).",
    "history": "Training curves.",
    "accuracy": "Accuracy.",
}


def caption_for(path: Path, command: Command | None) -> str:
    """The command's caption for a figure (most specific name first), else a generic one."""
    stem = path.stem.lower()
    own = dict(command.captions) if command is not None else {}
    for table in (own, GENERIC_CAPTIONS):
        for key in sorted(table, key=len, reverse=True):
            if key in stem:
                return table[key]
    return stem.replace("_", " ").replace("-", " ").capitalize() + "."


def headline(results: dict, limit: int = 14) -> dict:
    """The scalar numbers of a results dict (one level of nesting, as ``a.b``)."""
    out: dict = {}
    for key, value in results.items():
        items = {f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) \
            else {key: value}
        out.update((k, v) for k, v in items.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool))
        if len(out) >= limit:
            break
    return dict(list(out.items())[:limit])


def _load(out: Path, job_id: str) -> dict:
    path = job_dir(out, job_id) / "results.json"
    try:
        return read_json(path) if path.is_file() else {}
    except ValueError:
        return {}


def readout_html(results: dict) -> str:
    """Which readout a job used and which options were chosen from the model, and why (the
    shared keys ``numbers``, ``readout``, ``tau`` and ``defaults`` of results.json)."""
    parts = []
    numbers, readout = results.get("numbers") or {}, results.get("readout")
    if isinstance(readout, dict):
        basis = readout.get("basis")
        tau = results.get("tau")
        parts.append(f"Readout: {readout.get('what', readout.get('readout'))} ({basis} basis"
                     f"{', through the final norm' if readout.get('final_norm') else ''}"
                     f"{f', tau {tau}' if tau is not None else ''}).")
    elif "readout" in results and numbers.get("family"):
        parts.append(f"Readout: none. The tokenizer writes these answers as "
                     f"{numbers['family']} tokens, so there is no single row of W_U to filter "
                     "through; whole answers are scored.")
    chosen = results.get("defaults") or {}
    if chosen:
        parts.append("Chosen from the model: " + "; ".join(
            f"--{k.replace('_', '-')} {v.get('value')} ({v.get('why')})"
            for k, v in chosen.items()) + ".")
    return f"<p class='meta'>{esc(' '.join(parts))}</p>" if parts else ""


def _job_html(job: JobView, command: Command | None) -> str:
    entry = job.entry
    meta = ", ".join(f"{k} {entry[k]}" for k in ("model", "task", "revision", "seed")
                     if entry.get(k) is not None)
    seconds = entry.get("seconds")
    parts = [f"<div class='job' id='job-{esc(job.id)}'><h3>{esc(job.id)}</h3>",
             f"<p class='meta'><code>{esc(entry.get('command', ''))}</code>"
             f"{' · ' + esc(meta) if meta else ''}"
             f"{f' · {seconds:.1f} s' if isinstance(seconds, (int, float)) else ''}</p>"]
    if entry.get("caption"):
        parts.append(f"<p>{esc(entry['caption'])}</p>")
    parts.append(readout_html(job.results))
    parts += [figure(png, caption_for(png, command)) for png in sorted(job.folder.glob("*.png"))]
    parts.append(command.job_html(job) if command is not None else record_tables(job.results))
    for path in sorted(job.folder.glob("*.csv")):
        rows = read_csv(path)
        parts.append(f"<details><summary>{esc(path.name)} ({len(rows)} rows, "
                     f"<a href='jobs/{esc(job.id)}/{esc(path.name)}'>CSV</a>)"
                     f"</summary>{html_table(rows)}</details>")
    parts.append(details("settings", html_table([entry.get("settings", {})])))
    parts.append("</div>")
    return "\n".join(parts)


def _sections(commands: dict[str, Command], used: set[str]) -> list[tuple]:
    """(section id, heading, intro, command names) in page order, for the commands used."""
    by_section: dict[str, list[Command]] = {}
    for c in sorted(commands.values(), key=lambda c: c.order):
        if c.name in used:
            by_section.setdefault(c.section, []).append(c)
    return [(sid, cs[0].heading, cs[0].intro, [c.name for c in cs])
            for sid, cs in by_section.items()]


def build_html(out: str | Path) -> Path:
    """Write ``OUT/index.html`` (and ``OUT/tables/*.csv``) from a report folder."""
    out = Path(out)
    manifest = read_json(out / MANIFEST)
    jobs = manifest.get("jobs", {})
    commands = all_commands()
    views = {j: JobView(j, job_dir(out, j), e, _load(out, j)) for j, e in jobs.items()
             if e.get("status") == "done"}
    body = [f"<h1>{esc(manifest.get('title') or 'Report')}</h1>"]
    if manifest.get("description"):
        body.append(f"<p class='lead'>{esc(manifest['description'])}</p>")
    body.append(f"<p class='meta'>{len(views)} of {len(jobs)} jobs finished · built "
                f"{time.strftime('%Y-%m-%d %H:%M')} · config "
                f"{esc(str(manifest.get('source') or '(built in)'))}</p>")
    findings = [line for j, v in views.items() if v.entry.get("command") in commands
                for line in commands[v.entry["command"]].findings(v)]
    if findings:
        body.append("<h2 id='summary'>Summary</h2><ul>" + "".join(
            f"<li>{esc(line)}</li>" for line in findings) + "</ul>")
    toc = ["<a href='#summary'>Summary</a>"] if findings else []
    used = {v.entry.get("command") for v in views.values()}
    sections = _sections(commands, used)
    unknown = [j for j, v in views.items() if v.entry.get("command") not in commands]
    if unknown:
        sections.append(("other", "Other analyses", "Further jobs of this report.", []))
    for sid, heading, intro, names in sections:
        ids = [j for j, v in views.items() if v.entry.get("command") in names] \
            if names else unknown
        toc.append(f"<a href='#{sid}'>{esc(heading)}</a>")
        body.append(f"<h2 id='{sid}'>{esc(heading)}</h2><p>{esc(intro)}</p>")
        extras = "".join(commands[n].section_html([views[j] for j in ids
                                                   if views[j].entry.get("command") == n], out)
                         for n in names)
        rows = [{"job": j, **headline(views[j].results)} for j in ids]
        if not extras and any(len(r) > 1 for r in rows):
            write_csv(out / "tables" / f"{sid}.csv", rows)
            extras = html_table(rows, caption=f"Headline numbers per job (tables/{sid}.csv).")
        body.append(extras)
        for j in ids:
            body.append(_job_html(views[j], commands.get(views[j].entry.get("command"))))
    bad = {j: e for j, e in jobs.items() if e.get("status") in ("failed", "blocked", "running",
                                                                 "stopped")}
    if bad:
        toc.append("<a href='#problems'>Jobs that did not finish</a>")
        body.append("<h2 id='problems'>Jobs that did not finish</h2><p>Run the same command "
                    "again to retry them; finished jobs are skipped.</p>")
        body.append(html_table([{"job": j, "command": e.get("command"), "status": e["status"],
                                 "error": e.get("error") or ""} for j, e in bad.items()]))
    nav = f"<p class='meta'>Sections: {' · '.join(toc)}</p>" if toc else ""
    body.insert(3 if manifest.get("description") else 2, nav)
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(manifest.get('title') or 'Report')}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    return atomic_write_text(out / "index.html", page)

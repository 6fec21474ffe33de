"""One self-contained ``index.html`` for a report folder, laid out like a results section.

Reads ``manifest.json`` and every job folder, and writes ``OUT/index.html`` with all PNGs
embedded as base64 (no external files or network needed to view it). Sections follow a
paper's order: embeddings, fine-tuning, per-layer Fourier analysis, ablations, hidden-state
probes, transplants, toy models; each has a short explanation, a comparison table of the
jobs' headline numbers (also written to ``OUT/tables/<section>.csv``), and per job its
figures with captions and its CSV tables as HTML tables. Failed jobs are listed with their
errors. Figures and tables specific to an analysis come from ``report.html_figures``.
"""

from __future__ import annotations

import base64
import csv
import html
import time
from pathlib import Path

from llm_fourier.report.files import atomic_write_text, read_json, write_csv
from llm_fourier.report.runner import MANIFEST, job_dir
from llm_fourier.report.tables import format_cell

# (section id, heading, commands, what the section shows)
SECTIONS = [
    ("embed", "Number embeddings", ("embed",),
     "Fourier spectra of the number-token rows of the embedding matrix: the DFT of each "
     "column over the numbers, L2 norm per component. Outliers at periods 2, 2.5, 5 and 10 "
     "are the signature of Fourier number features (Zhou et al., Fig. 3)."),
    ("finetune", "Fine-tuning", ("finetune",),
     "Models fine-tuned on the addition task: training loss and held-out accuracy."),
    ("probe", "Per-layer Fourier analysis", ("probe",),
     "Logit lens on the number tokens: each layer's attention and MLP output at the last "
     "position, read through the unembedding of the numbers and transformed to the Fourier "
     "basis. Heatmaps show the magnitude of each Fourier component per layer; MLPs tend to "
     "carry the low-frequency (approximate magnitude) part, attention the high-frequency "
     "(modular) part."),
    ("ablate", "Frequency ablations", ("ablate",),
     "Test accuracy after removing low- or high-frequency components from the attention "
     "and/or MLP outputs of every layer (Table 1 layout), and the errors those ablations "
     "leave: multiples of 10 when low frequencies go, small errors when high ones go."),
    ("hidden", "Hidden-state probes", ("hidden",),
     "Linear probes on hidden states: mod-T classification (Cohen's kappa) and circle or "
     "helix regression per layer, beside the Fourier spectra they should agree with."),
    ("transplant", "Transplanted number embeddings", ("transplant",),
     "Adders trained from scratch with and without frozen pretrained (Fourier) number "
     "embeddings: test accuracy, error spread and training curves."),
    ("toy", "Toy models and grokking", ("toy train", "toy analyze"),
     "Models of modular arithmetic trained from scratch: train/test loss curves with the "
     "progress measures (restricted and excluded loss, Gini of Fourier norms, weight norm) "
     "that show the Fourier circuit forming before the test loss drops."),
]

CAPTIONS = {  # filename fragment -> caption (first match wins)
    "heatmap_attn": "Attention outputs read through the number unembedding: mean |Fourier "
                    "component| (colour) per component k (vertical; periods marked on the "
                    "right) and layer (horizontal).",
    "heatmap_mlp": "MLP outputs read through the number unembedding: mean |Fourier component| "
                   "per component k (vertical) and layer (horizontal).",
    "heatmap_block": "Residual stream after each layer, read through the number unembedding: "
                     "mean |Fourier component| per component k and layer.",
    "heatmap": "Fourier component magnitude per component k (vertical) and layer (horizontal).",
    "error_histograms": "Signed errors (prediction - answer) for each ablation: multiples of "
                        "10 point to lost low frequencies, small errors to lost high ones.",
    "history": "Training loss and validation accuracy over training.",
    "embedding_spectrum": "L2 norm of each Fourier component of the number embeddings; "
                          "labels mark outliers with their period T.",
    "spectrum": "Fourier spectrum: magnitude per component k, outliers labelled by period.",
    "error": "Histogram of signed errors (prediction - answer).",
    "loss": "Training and test loss over training (log scale).",
    "curve": "Training curves.",
    "progress": "Progress measures over training.",
    "lens_accuracy": "Logit-lens accuracy per layer (exact, within 2, within 10) of the "
                     "attention, MLP and residual-stream outputs read through the numbers.",
    "loss_curves": "Train and test loss over training (memorisation and grokking marked), "
                   "with the progress measures: restricted and excluded loss, Gini "
                   "coefficients of the Fourier norms, and the sum of squared weights.",
    "neuron_frequencies": "MLP neurons by the Fourier frequency that explains them.",
    "frequency_ablation": "Accuracy as key frequencies are ablated.",
    "accuracy": "Test accuracy.",
}

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

MAX_ROWS = 40


def html_table(rows: list[dict], columns: list[str] | None = None, max_rows: int = MAX_ROWS,
               caption: str = "") -> str:
    """Rows of dicts as an HTML table (floats to 4 significant digits)."""
    if not rows:
        return ""
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_cell(r.get(c)))}</td>"
                                    for c in columns) + "</tr>" for r in rows[:max_rows])
    more = (f"<p class='meta'>first {max_rows} of {len(rows)} rows shown</p>"
            if len(rows) > max_rows else "")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<div class='wide'><table>{cap}<tr>{head}</tr>{body}</table></div>{more}"


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def img_tag(path: Path, alt: str = "") -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' alt='{html.escape(alt)}'>"


COMMAND_CAPTIONS = {  # captions that depend on the command that made the file
    "transplant": {
        "error_histograms": "Test errors (prediction - answer) pooled over seeds, per arm: "
                            "adders trained from scratch mostly err by one or two.",
        "embedding_spectra": "Fourier spectra of the number embeddings of each arm (and of "
                             "the transplanted source).",
        "accuracy": "Test accuracy of each arm, per seed.",
    },
    "toy analyze": {
        "embedding_spectrum": "Fourier norms of the token embedding over the residues mod p; "
                              "the key frequencies (red) carry the algorithm.",
    },
}


def caption_for(path: Path, command: str = "") -> str:
    stem = path.stem.lower()
    by_length = sorted(CAPTIONS.items(), key=lambda kv: -len(kv[0]))  # most specific first
    for key, text in [*COMMAND_CAPTIONS.get(command, {}).items(), *by_length]:
        if key in stem:
            return text
    return stem.replace("_", " ").replace("-", " ").capitalize() + "."


def figure(path: Path, caption: str | None = None, command: str = "") -> str:
    caption = caption_for(path, command) if caption is None else caption
    return (f"<figure>{img_tag(path, path.stem)}<figcaption><b>{html.escape(path.name)}</b>: "
            f"{html.escape(caption)}</figcaption></figure>")


def headline(results: dict, limit: int = 14) -> dict:
    """The scalar numbers of a results dict (one level of nesting, as ``a.b``)."""
    out: dict = {}
    for key, value in results.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            out[key] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{key}.{k}"] = v
        if len(out) >= limit:
            break
    return dict(list(out.items())[:limit])


def _load(out: Path, job_id: str) -> dict:
    path = job_dir(out, job_id) / "results.json"
    try:
        return read_json(path) if path.is_file() else {}
    except ValueError:
        return {}


def _job_html(out: Path, job_id: str, entry: dict, extra: str) -> str:
    folder = job_dir(out, job_id)
    meta = ", ".join(f"{k} {entry[k]}" for k in ("model", "task", "seed")
                     if entry.get(k) is not None)
    seconds = entry.get("seconds")
    parts = [f"<div class='job' id='job-{html.escape(job_id)}'><h3>{html.escape(job_id)}</h3>",
             f"<p class='meta'><code>{html.escape(entry.get('command', ''))}</code>"
             f"{' · ' + html.escape(meta) if meta else ''}"
             f"{f' · {seconds:.1f} s' if isinstance(seconds, (int, float)) else ''}</p>"]
    if entry.get("caption"):
        parts.append(f"<p>{html.escape(entry['caption'])}</p>")
    for png in sorted(folder.glob("*.png")):
        parts.append(figure(png, command=entry.get("command", "")))
    parts.append(extra)
    for path in sorted(folder.glob("*.csv")):
        rows = read_csv(path)
        parts.append(f"<details><summary>{html.escape(path.name)} ({len(rows)} rows, "
                     f"<a href='jobs/{html.escape(job_id)}/{html.escape(path.name)}'>CSV</a>)"
                     f"</summary>{html_table(rows)}</details>")
    settings = entry.get("settings", {})
    parts.append(f"<details><summary>settings</summary>{html_table([settings])}</details>")
    parts.append("</div>")
    return "\n".join(parts)


def section_of(command: str) -> str:
    for sid, _, commands, _ in SECTIONS:
        if command in commands:
            return sid
    return "other"


def build_html(out: str | Path) -> Path:
    """Write ``OUT/index.html`` (and ``OUT/tables/*.csv``) from a report folder."""
    from llm_fourier.report import html_figures as figures

    out = Path(out)
    manifest = read_json(out / MANIFEST)
    jobs = manifest.get("jobs", {})
    results = {j: _load(out, j) for j, e in jobs.items() if e.get("status") == "done"}
    sections = SECTIONS + [("other", "Other analyses", (), "Further jobs of this report.")]
    body = [f"<h1>{html.escape(manifest.get('title') or 'Report')}</h1>"]
    if manifest.get("description"):
        body.append(f"<p class='lead'>{html.escape(manifest['description'])}</p>")
    body.append(f"<p class='meta'>{len(results)} of {len(jobs)} jobs finished · built "
                f"{time.strftime('%Y-%m-%d %H:%M')} · config "
                f"{html.escape(str(manifest.get('source') or '(built in)'))}</p>")
    findings = figures.key_findings(jobs, results)
    if findings:
        body.append("<h2 id='summary'>Summary</h2><ul>" + "".join(
            f"<li>{html.escape(line)}</li>" for line in findings) + "</ul>")
    toc = ["<a href='#summary'>Summary</a>"] if findings else []
    for sid, heading, _, intro in sections:
        ids = [j for j, e in jobs.items() if section_of(e.get("command", "")) == sid
               and j in results]
        if not ids:
            continue
        toc.append(f"<a href='#{sid}'>{html.escape(heading)}</a>")
        body.append(f"<h2 id='{sid}'>{html.escape(heading)}</h2><p>{html.escape(intro)}</p>")
        extras = figures.section_extras(sid, out, {j: jobs[j] for j in ids},
                                        {j: results[j] for j in ids})
        rows = [{"job": j, **headline(results[j])} for j in ids]
        if not extras and any(len(r) > 1 for r in rows):
            write_csv(out / "tables" / f"{sid}.csv", rows)
            extras = html_table(rows, caption=f"Headline numbers per job (tables/{sid}.csv).")
        body.append(extras)
        for j in ids:
            extra = figures.job_extras(sid, out, j, jobs[j], results[j])
            body.append(_job_html(out, j, jobs[j], extra))
    bad = {j: e for j, e in jobs.items() if e.get("status") in ("failed", "blocked", "running")}
    if bad:
        toc.append("<a href='#problems'>Jobs that did not finish</a>")
        body.append("<h2 id='problems'>Jobs that did not finish</h2><p>Re-run the same "
                    "command to retry them; finished jobs are skipped.</p>")
        body.append(html_table([{"job": j, "command": e.get("command"), "status": e["status"],
                                 "error": e.get("error") or ""} for j, e in bad.items()]))
    nav = f"<p class='meta'>Sections: {' · '.join(toc)}</p>" if toc else ""
    body.insert(3 if manifest.get("description") else 2, nav)
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(manifest.get('title') or 'Report')}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    return atomic_write_text(out / "index.html", page)

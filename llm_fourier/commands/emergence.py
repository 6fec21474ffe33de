"""Emergence over pre-training: a report's jobs of one model at several revisions, one
measure per job drawn against the training step.

Jobs that differ only in their ``revision`` setting (a report's ``revisions`` axis: hub
branches such as Pythia's ``step1000``) form a series. The x axis is the training step read
from the revision (``step1000``, ``global_step1000``, ``step_1000``: 1000); when a revision
of a series names no step (``main``, a commit), the series is drawn in report order with the
revisions as labels. Two measures:

* ``embed``: the strength of the number-embedding spectrum at periods 2, 2.5, 5 and 10: the
  magnitude of the component whose period is nearest T (within 5%), over the median
  magnitude of all non-constant components (scale-free, so checkpoints whose embedding norm
  grows stay comparable; ~1 = no outlier);
* ``hidden``: Cohen's kappa of the mod-T probes of the residual stream (role ``block``,
  else the first probed role), the maximum over the probed layers.

Command views call ``emergence_html`` from their ``section_html``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from llm_fourier.commands.base import JobView
from llm_fourier.output.files import save_figure, write_csv
from llm_fourier.output.html import figure
from llm_fourier.output.plots import pyplot

EMBED_PERIODS = (2, 2.5, 5, 10)
PERIOD_TOLERANCE = 0.05  # relative distance of the nearest component's period to T
_STEP = re.compile(r"step[_-]?(\d+)$", re.I)
KINDS = ("embed", "hidden")
LABELS = {"embed": "|component at T| / median |component|",
          "hidden": "Cohen's kappa of the mod-T probe (max over layers)"}


def training_step(revision: str | None) -> int | None:
    """The training step a revision names (``step1000`` -> 1000), else None."""
    m = _STEP.search((revision or "").strip())
    return int(m.group(1)) if m else None


def job_revision(job: JobView) -> str | None:
    """The hub revision a report job loaded (None: the default branch)."""
    return (job.entry.get("revision") or (job.entry.get("settings") or {}).get("revision")
            or job.results.get("revision"))


def embed_measures(results: dict, periods=EMBED_PERIODS) -> dict[str, float | None]:
    """``{"T=10": strength}``: the spectrum's magnitude at each period over its median."""
    spec = [r for r in results.get("spectrum") or []
            if r.get("k", 0) >= 1 and isinstance(r.get("magnitude"), (int, float))]
    if not spec:
        return {}
    median = float(np.median([r["magnitude"] for r in spec]))
    out: dict[str, float | None] = {}
    for T in periods:
        near = min(spec, key=lambda r: abs(r["period"] - T))
        ok = abs(near["period"] - T) <= PERIOD_TOLERANCE * T and median > 0
        out[f"T={T:g}"] = near["magnitude"] / median if ok else None
    return out


def hidden_measures(results: dict) -> dict[str, float | None]:
    """``{"mod 10": kappa}``: the best mod-T kappa over layers of the residual stream."""
    probes = results.get("probes") or []
    roles = [p.get("role") for p in probes]
    if not roles:
        return {}
    role = "block" if "block" in roles else roles[0]
    out: dict[str, float | None] = {}
    for T in results.get("periods") or []:
        kappas = [((p.get("mod") or {}).get(str(T)) or {}).get("kappa") for p in probes
                  if p.get("role") == role]
        kappas = [k for k in kappas if isinstance(k, (int, float)) and math.isfinite(k)]
        out[f"mod {T}"] = max(kappas) if kappas else None
    return out


MEASURES = {"embed": embed_measures, "hidden": hidden_measures}


def _series_key(job: JobView) -> str:
    settings = {k: v for k, v in (job.entry.get("settings") or {}).items()
                if k not in ("revision", "out")}
    return json.dumps({"command": job.entry.get("command"), **settings}, sort_keys=True,
                      default=str)


def _label(job: JobView, revision: str) -> str:
    slug = "-r" + re.sub(r"[^A-Za-z0-9_.+\-]", "_", revision)
    return job.id.replace(slug, "") if slug in job.id else Path(job.model).name


def emergence_rows(jobs: list[JobView], kind: str) -> list[dict]:
    """One row per job of every series with at least two revisions: series, job, revision,
    step (None when a revision of the series names none), position, and the measures."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    series: dict[str, list[JobView]] = {}
    for job in jobs:
        if job_revision(job) is not None:
            series.setdefault(_series_key(job), []).append(job)
    rows = []
    for members in series.values():
        revisions = [job_revision(j) for j in members]
        if len(set(revisions)) < 2:
            continue
        steps = [training_step(r) for r in revisions]
        by_step = all(s is not None for s in steps)
        order = sorted(range(len(members)), key=lambda i: steps[i] if by_step else i)
        label = _label(members[0], revisions[0])
        for pos, i in enumerate(order):
            rows.append({"series": label, "job": members[i].id, "revision": revisions[i],
                         "step": steps[i] if by_step else None, "position": pos,
                         **MEASURES[kind](members[i].results)})
    return rows


def emergence_plot(rows: list[dict], kind: str, path: Path) -> Path:
    """One panel per series: each measure against the training step (symlog axis) or the
    revision order."""
    plt = pyplot()
    names = list(dict.fromkeys(r["series"] for r in rows))
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 3.2 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        sel = [r for r in rows if r["series"] == name]
        by_step = sel[0]["step"] is not None
        x = [r["step"] if by_step else r["position"] for r in sel]
        measures = [k for k in sel[0] if k not in ("series", "job", "revision", "step",
                                                   "position")]
        for j, m in enumerate(measures):
            y = [np.nan if r.get(m) is None else r[m] for r in sel]
            ax.plot(x, y, "o-", color=f"C{j}", label=m)
        if by_step:
            positive = [v for v in x if v > 0]
            if positive:
                ax.set_xscale("symlog", linthresh=min(positive))
            ax.set_xlabel("training step")
        else:
            ax.set_xticks(x, labels=[r["revision"] for r in sel], rotation=30)
            ax.set_xlabel("revision")
        if kind == "embed":
            ax.axhline(1, color="0.6", lw=0.8, ls="--")
        ax.set(ylabel=LABELS[kind], title=name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def emergence_html(jobs: list[JobView], out: Path, kind: str) -> str:
    """``figures/emergence_<kind>.png`` and ``tables/emergence_<kind>.csv`` (kind "embed" or
    "hidden") under the report folder ``out``, and their HTML; empty when no series of these
    jobs has two revisions."""
    rows = emergence_rows(jobs, kind)
    if not rows:
        return ""
    write_csv(Path(out) / "tables" / f"emergence_{kind}.csv", rows)
    path = emergence_plot(rows, kind, Path(out) / "figures" / f"emergence_{kind}.png")
    what = ("strength of the number-embedding spectrum at periods 2, 2.5, 5 and 10 (magnitude "
            "over the median component; dashed: 1, no outlier)" if kind == "embed" else
            "mod-T probe kappa of the residual stream (best layer)")
    return figure(path, f"Emergence over training: {what} per checkpoint "
                        f"(tables/emergence_{kind}.csv).")

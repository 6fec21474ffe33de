"""Emergence over pre-training: steps from revisions, the two measures, series and figures."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from llm_fourier.commands.base import JobView
from llm_fourier.commands.emergence import (
    embed_measures,
    emergence_html,
    emergence_rows,
    hidden_measures,
    training_step,
)
from probes import FourierBasis


@pytest.mark.parametrize("revision, step", [
    ("step0", 0), ("step1000", 1000), ("step143000", 143000), ("global_step11921", 11921),
    ("step_512", 512), ("Step-64", 64), ("main", None), ("a1b2c3", None), ("step1000-x", None),
    ("", None), (None, None)])
def test_training_step_is_read_from_the_revision(revision, step):
    assert training_step(revision) == step


def _spectrum(p: int, spikes: dict[int, float], seed: int = 0) -> list[dict]:
    """Records as ``embed`` writes them (dft basis over p numbers): noise with spikes."""
    basis = FourierBasis(p, "dft")
    mags = np.random.default_rng(seed).uniform(1, 2, basis.n_components)
    for k, v in spikes.items():
        mags[k - 1] = v
    return [{"k": int(k), "period": float(basis.period(k)), "magnitude": float(m)}
            for k, m in zip(basis.ks, mags)]


def test_embed_measure_is_the_nearest_component_over_the_median():
    spec = _spectrum(201, {20: 30.0, 40: 12.0})  # periods 10.05 and 5.025
    got = embed_measures({"spectrum": spec})
    mags = np.array([r["magnitude"] for r in spec])
    periods = 201 / np.arange(1, 101)
    for T in (2, 2.5, 5, 10):  # a plain loop: the component with the nearest period
        k = int(np.argmin(np.abs(periods - T)))
        assert got[f"T={T:g}"] == pytest.approx(mags[k] / np.median(mags))
    assert got["T=10"] == pytest.approx(30 / np.median(mags))
    # p = 13: the periods are 13, 6.5, 4.33, 3.25, 2.6, 2.17; 10 and 5 have no component
    small = embed_measures({"spectrum": _spectrum(13, {})})
    assert small["T=10"] is None and small["T=5"] is None
    assert small["T=2.5"] is not None  # 2.6 is within 5% of 2.5
    assert embed_measures({}) == {}


def test_hidden_measure_is_the_best_residual_layer():
    probes = [{"role": r, "layer": i, "mod": {"2": {"kappa": k2}, "10": {"kappa": k10}}}
              for r, i, k2, k10 in [("block", 0, 0.1, 0.5), ("block", 1, 0.4, None),
                                    ("mlp", 0, 0.9, 0.9), ("block", 2, 0.2, 0.3)]]
    assert hidden_measures({"periods": [2, 10], "probes": probes}) == \
        {"mod 2": 0.4, "mod 10": 0.5}
    mlp_only = [p for p in probes if p["role"] == "mlp"]
    assert hidden_measures({"periods": [2], "probes": mlp_only}) == {"mod 2": 0.9}
    assert hidden_measures({"periods": [5], "probes": probes}) == {"mod 5": None}


def _job(job_id: str, model: str, revision: str | None, strength: float, **settings) -> JobView:
    spec = _spectrum(201, {20: strength})
    entry = {"command": "embed", "model": "m", "revision": revision,
             "settings": {"model": model, **({"revision": revision} if revision else {}),
                          **settings}}
    return JobView(job_id, Path("."), entry, {"spectrum": spec})


def test_series_are_ordered_by_step_and_drawn(tmp_path):
    jobs = [_job("embed-a-rstep8000", "org/a", "step8000", 30.0),
            _job("embed-a-rstep0", "org/a", "step0", 2.0),
            _job("embed-a-rstep1000", "org/a", "step1000", 10.0),
            _job("embed-b-rmain", "org/b", "main", 5.0),  # no steps: report order
            _job("embed-b-rdev", "org/b", "dev", 6.0),
            _job("embed-c-rstep0", "org/c", "step0", 1.0),  # one revision: no series
            _job("embed-a-unembed-rstep0", "org/a", "step0", 3.0, unembed=True),
            _job("embed-a", "org/a", None, 9.0)]  # no revision: not part of any series
    rows = emergence_rows(jobs, "embed")
    assert [(r["series"], r["revision"], r["step"], r["position"]) for r in rows] == [
        ("embed-a", "step0", 0, 0), ("embed-a", "step1000", 1000, 1),
        ("embed-a", "step8000", 8000, 2), ("embed-b", "main", None, 0),
        ("embed-b", "dev", None, 1)]
    med = [np.median([r["magnitude"] for r in j.results["spectrum"]]) for j in jobs]
    assert rows[2]["T=10"] == pytest.approx(30 / med[0])
    html = emergence_html(jobs, tmp_path, "embed")
    assert "emergence_embed.png" in html and "data:image/png;base64," in html
    assert (tmp_path / "figures" / "emergence_embed.png").stat().st_size > 0
    with open(tmp_path / "tables" / "emergence_embed.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["job"] for r in table] == [r["job"] for r in rows]
    assert emergence_html(jobs[5:], tmp_path / "none", "embed") == ""
    with pytest.raises(ValueError):
        emergence_rows(jobs, "probe")

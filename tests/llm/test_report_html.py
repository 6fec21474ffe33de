"""The HTML report: self-contained, every PNG embedded byte for byte, sections and tables
from each command's results, failures listed; rendered in headless Chromium when present."""

from __future__ import annotations

import base64
import csv
import importlib.util
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from llm_fourier.batch.html import build_html
from llm_fourier.output.files import save_figure, write_csv, write_json

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _png(path: Path, seed: int) -> bytes:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot(np.random.default_rng(seed).standard_normal(20))
    save_figure(fig, path, dpi=40)
    return path.read_bytes()


def _entry(command: str, status: str = "done", **extra) -> dict:
    return {"command": command, "settings": {"model": "tiny", "limit": 8}, "hash": "x",
            "needs": [], "model": "tiny", "task": "add", "seed": 0, "caption": "",
            "status": status, "seconds": 1.5, "error": None, **extra}


def _ablate_results(acc: dict) -> dict:
    table = [{"row": row, "filter": "f", "modules": "m", "n": 8, "loss": 1.0, "accuracy": a,
              "n_errors": 8 - int(8 * a), "error_histogram": {"-10": 2},
              "frac_errors_mult_10": 1.0, "max_abs_error": 10, "mod2_accuracy": 1.0,
              "mod10_accuracy": 1.0} for row, a in acc.items()]
    return {"model": "tiny", "n_examples": 8, "table": table}


@pytest.fixture
def report_dir(tmp_path) -> tuple[Path, dict]:
    """A report folder as the runner leaves it: manifest + job folders of several kinds."""
    jobs = {"embed-tiny": _entry("embed"), "probe-tiny": _entry("probe"),
            "ablate-a": _entry("ablate"), "ablate-b": _entry("ablate"),
            "toy-train-s0": _entry("toy train"),
            "broken": _entry("probe", "failed", error="ValueError: no numbers"),
            "after": _entry("ablate", "blocked", error="needs broken, which did not finish")}
    write_json(tmp_path / "manifest.json", {"title": "Fourier <report>", "description": "d",
                                            "source": "c.toml", "jobs": jobs})
    pngs = {}
    for i, job in enumerate(["embed-tiny", "probe-tiny", "ablate-a", "toy-train-s0"]):
        pngs[f"{job}/plot_{i}.png"] = _png(tmp_path / "jobs" / job / f"plot_{i}.png", i)
    pngs["probe-tiny/heatmap_mlp.png"] = _png(tmp_path / "jobs/probe-tiny/heatmap_mlp.png", 9)
    spectrum = [{"k": k, "period": 40 / k, "magnitude": 1.0 + (k == 4) * 5} for k in range(1, 21)]
    write_json(tmp_path / "jobs/embed-tiny/results.json",
               {"model": "/m/tiny", "spectrum": spectrum,
                "outliers": [{"k": 4, "period": 10.0, "magnitude": 6.0}],
                "low_high": {"low_fraction": 0.75}, "mod_probes": [{"period": 10, "kappa": 0.5}]})
    write_json(tmp_path / "jobs/probe-tiny/results.json", {
        "model": "tiny", "n_examples": 8, "n_layers": 2,
        "accuracy": {"block": [{"exact": 0.25, "within_10": 0.5}, {"exact": 0.875,
                                                                   "within_10": 1.0}]},
        "layers": {"attn": [{"outliers": [{"period": 2.0}, {"period": 5.0}],
                             "low_fraction": 0.1}] * 2,
                   "mlp": [{"outliers": [{"period": 10.0}], "low_fraction": 0.9}] * 2}})
    write_csv(tmp_path / "jobs/probe-tiny/accuracy.csv",
              [{"layer": 0, "exact": 0.25}, {"layer": 1, "exact": 0.875}])
    rows = {"none": 1.0, "MLP low removed": 0.375}
    write_json(tmp_path / "jobs/ablate-a/results.json", _ablate_results(rows))
    write_json(tmp_path / "jobs/ablate-b/results.json", _ablate_results({"none": 0.5}))
    # the layout toy/grok_cli.py writes (checked against a real run in tests/toy)
    write_json(tmp_path / "jobs/toy-train-s0/results.json", {"seeds": [
        {"seed": 0, "epoch": 300, "memorized_epoch": 40, "grokked_epoch": 250,
         "train_accuracy": 1.0, "test_accuracy": 0.99, "test_loss": 0.001,
         "key_frequencies": [3, 7]}], "history": []})
    return tmp_path, pngs


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.headings: list[str] = []
        self._h = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
        self._h = tag in ("h2", "h3")

    def handle_data(self, data):
        if self._h:
            self.headings.append(data)
            self._h = False


def test_every_png_is_embedded_byte_for_byte_and_nothing_is_external(report_dir):
    out, pngs = report_dir
    index = build_html(out)
    page = index.read_text()
    parser = _Imgs()
    parser.feed(page)
    assert all(s.startswith("data:image/png;base64,") for s in parser.srcs)
    embedded = [base64.b64decode(s.split(",", 1)[1]) for s in parser.srcs]
    for data in pngs.values():
        assert data in embedded
    # one report-level figure (embedding spectra overlay) on top of the jobs' PNGs
    assert len(embedded) == len(pngs) + 1
    assert (out / "figures/embedding_spectra.png").read_bytes() in embedded
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)
    assert "Fourier &lt;report&gt;" in page  # titles are escaped
    for heading in ("Number embeddings", "Per-layer Fourier analysis", "Frequency ablations",
                    "Toy models and grokking", "Jobs that did not finish"):
        assert heading in parser.headings


def test_tables_carry_the_numbers_of_the_results(report_dir):
    out, _ = report_dir
    page = build_html(out).read_text()
    # Table 1 across jobs, beside the paper: MLP low removed 37.5% (a), paper 35.89%
    with open(out / "tables/ablation_table1.csv") as fh:
        rows = {r["ablation"]: r for r in csv.DictReader(fh)}
    assert float(rows["MLP low removed"]["ablate-a"]) == pytest.approx(37.5)
    assert rows["MLP low removed"]["ablate-b"] == ""
    assert float(rows["MLP low removed"]["paper (GPT-2-XL)"]) == 35.89
    assert float(rows["none"]["ablate-b"]) == 50.0
    assert "<td>37.5</td>" in page and "<td>35.89</td>" in page
    # probe: per-layer table with the last layer's lens accuracy and the periods
    assert "<td>0.875</td>" in page and "<td>2 5</td>" in page
    # the probe's CSV as an HTML table, and a link to the file
    assert "href='jobs/probe-tiny/accuracy.csv'" in page
    # embed: outlier periods, kappa; toy train: its own view (grokking epochs per seed)
    assert "<td>10</td>" in page and "<td>0.5</td>" in page
    assert "<td>250</td>" in page and "<td>3 7</td>" in page
    assert ("toy-train-s0 seed 0: memorised at epoch 40, grokked at epoch 250 (test accuracy "
            "99.0%, key frequencies 3 7).") in page
    # the summary: one sentence per job with a headline result
    assert "ablate-a: accuracy 100.0% without ablation, 37.5% with MLP low removed." in page
    assert "embed-tiny: number-embedding spectrum outliers at periods 10." in page
    # failures: both listed with their errors
    assert "ValueError: no numbers" in page and "needs broken, which did not finish" in page
    assert "5 of 7 jobs finished" in page


def _check_html_module():
    spec = importlib.util.spec_from_file_location("check_html", ROOT / "scripts/check_html.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_headless_chromium_renders_every_plot(report_dir, tmp_path_factory):
    check = _check_html_module()
    if check.find_chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    out, pngs = report_dir
    index = build_html(out)
    shot = tmp_path_factory.mktemp("shot") / "index.png"
    result = check.check_html(index, shot, height=1200)
    assert result["images"] == len(pngs) + 1 and result["broken"] == []
    assert all(w > 0 for w in result["widths"])
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    # a corrupt image is reported: the check can fail
    bad = out / "bad.html"
    bad.write_text("<html><body><img alt='bad' src='data:image/png;base64,AAAA'>"
                   + index.read_text().split("<body>", 1)[1])
    result = check.check_html(bad)
    assert result["broken"] == ["bad"]

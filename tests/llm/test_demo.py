"""The embedded demo end to end (test-sized), its --model variant, and the shipped presets."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from llm_fourier.batch.commands import PRESETS, preset_names
from llm_fourier.batch.config import load_config, parse_config
from llm_fourier.batch.demo import demo_config
from llm_fourier.batch.runner import run_report
from llm_fourier.cli import main
from llm_fourier.output.files import read_json

ROOT = Path(__file__).resolve().parents[2]
DEMO_JOBS = {"transplant", "embed-adder-scratch", "embed-adder-fourier",
             "probe-adder-scratch-add", "probe-adder-fourier-add",
             "ablate-adder-scratch-add", "ablate-adder-fourier-add",
             "hidden-adder-scratch-add-s0", "hidden-adder-fourier-add-s0", "grok",
             "grok-analysis-s0"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, main(["demo", "--quick", "--out", str(out)])


def test_quick_demo_runs_every_job_and_ends_with_the_report_path(demo_run, capsys):
    out, code = demo_run
    assert code == 0
    jobs = read_json(out / "manifest.json")["jobs"]
    assert set(jobs) == DEMO_JOBS
    assert {j: e["status"] for j, e in jobs.items()} == dict.fromkeys(DEMO_JOBS, "done")
    # probe and ablate ran on the folders the transplant job trained
    scratch = (out / "jobs/transplant/seed0/scratch/model").resolve()
    assert jobs["probe-adder-scratch-add"]["settings"]["model"] == str(scratch)
    assert (scratch / "config.json").is_file()
    assert read_json(out / "jobs/grok-analysis-s0/results.json")["checkpoint"] == \
        str((out / "jobs/grok/checkpoint.safetensors").resolve())
    ranks = read_json(out / "jobs/transplant/seed0/scratch/analysis.json")["filter_ranks"]
    assert max(ranks.values()) < 16  # the adders' own ablations: no knockout either
    for arm in ("scratch", "fourier"):  # the demo's tau keeps every filter below the width
        table = read_json(out / f"jobs/ablate-adder-{arm}-add/results.json")["table"]
        assert all(0 < r["rank"] < r["width"] for r in table if r["filter"] != "none")
        assert not any(r["knockout"] for r in table)
    hidden = read_json(out / "jobs/hidden-adder-fourier-add-s0/results.json")
    kappa = hidden["probes"][0]["mod"]["2"]  # every probe score carries its uncertainty
    assert kappa["kappa_ci_low"] <= kappa["kappa"] <= kappa["kappa_ci_high"]
    assert hidden["statistics"]["unit"] == "distinct numbers (not prompts)"
    page = (out / "index.html").read_text()
    assert "interval over numbers" in page
    for heading in ("Number embeddings", "Per-layer Fourier analysis", "Frequency ablations",
                    "Transplanted number embeddings", "Toy models and grokking"):
        assert heading in page
    # a second run skips every finished job and prints where the report is
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"Open the report in a browser: {(out / 'index.html').resolve()}" in printed
    assert "llm-fourier demo --model gpt2" in printed
    assert read_json(out / "manifest.json")["jobs"] == jobs  # nothing re-ran


def test_demo_html_renders_in_chromium(demo_run):
    spec = importlib.util.spec_from_file_location("check_html", ROOT / "scripts/check_html.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    if check.find_chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    out, _ = demo_run
    n_png = len(list((out / "jobs").glob("*/*.png"))) + len(list((out / "figures").glob("*.png")))
    result = check.check_html(out / "index.html")
    assert result["broken"] == [] and result["images"] == n_png >= 20


def test_demo_with_a_model_runs_the_llm_parts_on_it(tiny_dir, tmp_path):
    model = str(tiny_dir("gpt2", max_number=60))
    report = parse_config(demo_config(model, quick=True))
    name = Path(model).name
    ids = {j.id for j in report.jobs}
    assert {f"embed-{name}", f"probe-{name}-add", f"ablate-{name}-add"} <= ids
    assert not any("adder" in i for i in ids)
    assert report.job("transplant").settings["source"] == model  # its embeddings transplanted
    probe = report.job(f"probe-{name}-add")
    assert probe.settings["model"] == model and probe.settings["shots"] == 3
    manifest = run_report(report, tmp_path, only=["probe-*"], progress=False)
    assert list(manifest["jobs"]) == [f"probe-{name}-add"]
    results = read_json(tmp_path / "jobs" / f"probe-{name}-add" / "results.json")
    assert results["model"] == model and results["n_layers"] == 2


def test_every_preset_parses_into_jobs_against_the_registry():
    assert set(preset_names()) >= {"gpt2-xl-paper", "llama3-probe", "grokking", "transplant"}
    for name in preset_names():
        report = load_config(PRESETS / f"{name}.toml")
        assert report.jobs, name
        assert (PRESETS / f"{name}.toml").read_text().startswith("# "), name
    paper = load_config(PRESETS / "gpt2-xl-paper.toml")
    ablate = next(j for j in paper.jobs if j.command == "ablate")
    finetune = next(j for j in paper.jobs if j.command == "finetune")
    assert finetune.id in ablate.needs and ablate.settings["model"].endswith("/model")
    assert ablate.settings["max_operand"] == 260 and finetune.settings["epochs"] == 50

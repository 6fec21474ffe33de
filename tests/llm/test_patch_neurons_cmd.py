"""``llm-fourier patch`` and ``neurons`` end to end: the same numbers as the library, files,
resume after a kill, and settings refused in one sentence."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

import llm_fourier.analyses.fourier_neurons as neurons_lib
import llm_fourier.commands.kept as kept
import llm_fourier.commands.patch as patch_cmd
from llm_fourier.analyses.fourier_neurons import knockout_table, neuron_spectra
from llm_fourier.analyses.hidden_states import collect
from llm_fourier.analyses.patching import helix_patching
from llm_fourier.cli import main
from llm_fourier.errors import UserError
from llm_fourier.model.loading import load_model
from llm_fourier.model.numbers import task_numbers
from llm_fourier.model.tasks import make_task
from tests.llm.stores import counting, interrupted

PATCH = ["--max-operand", "29", "--train-limit", "150", "--test-limit", "10", "--all-prompts",
         "--periods", "2", "5", "10", "--pca-dim", "12", "--roles", "block", "mlp", "--quiet"]
NEURONS = ["--max-operand", "49", "--limit", "12", "--periods", "2", "10", "--n-neurons", "6",
           "--n-random", "2", "--min-share", "0", "--quiet"]


def _same(a, b) -> bool:
    """Equal numbers (NaN/None alike, to float32 noise) and equal everything else."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if a is None or b is None or isinstance(a, float) and math.isnan(a):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    if isinstance(a, float):
        return a == pytest.approx(b, rel=1e-5, abs=1e-7)
    return a == b


@pytest.fixture(scope="module")
def patched(tiny_dir, tmp_path_factory):
    model = tiny_dir("gpt2")
    out = tmp_path_factory.mktemp("patch") / "run"
    assert main(["patch", "--model", str(model), *PATCH, "--out", str(out)]) == 0
    return model, out, json.loads((out / "results.json").read_text())


def test_patch_command_gives_the_library_numbers(patched):
    model, out, res = patched
    lm = load_model(model)
    task = make_task("+", 29)
    train, test = task.train[:150], task.test[:10]
    states = collect(lm, train, token="a", roles=("block", "mlp"), layers=[0, 1],
                     batch_size=16, progress=False)
    ref = helix_patching(lm, train, test, task_numbers(lm.tokenizer, 58), roles=("block", "mlp"),
                         layers=[0, 1], periods=(2, 5, 10), pca_dim=12, correct_only=False,
                         train_states=states, progress=False).as_dict()
    assert len(res["rows"]) == 2 * 2 * 5 and _same(res["rows"], ref["rows"])
    assert _same(res["fits"], ref["fits"]) and res["pairs"] == ref["pairs"]
    assert _same(res["clean"], ref["clean"]) and res["clean"]["n"] == 10
    assert res["settings"]["correct_only"] is False and res["task"]["max_operand"] == 29
    # layer 1 is the last block: the operand's state there never reaches the answer
    last = [r for r in res["rows"] if r["role"] == "block" and r["layer"] == 1]
    assert all(r["kept"] is None for r in last)
    with open(out / "patching.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 20
    for name in ("fits.csv", "pairs.csv", "patching.png"):
        assert (out / name).stat().st_size > 0


def test_patch_resumes_at_the_next_unit(patched, tmp_path, monkeypatch):
    model, _, res = patched
    argv = ["patch", "--model", str(model), *PATCH, "--out", str(tmp_path / "run")]
    real, seen = patch_cmd.helix_patching, []
    monkeypatch.setattr(patch_cmd, "helix_patching", interrupted(real, after=13))
    assert main(argv) == 130  # the clean run and (block, 0)'s 12 patches were kept
    monkeypatch.setattr(patch_cmd, "helix_patching", counting(real, seen))
    monkeypatch.setattr(kept, "collect", lambda *a, **k: pytest.fail("states not reused"))
    assert main(argv) == 0
    assert len(seen) == 3 * 12 and not any(k.startswith("block-0-") for k in seen)
    again = json.loads((tmp_path / "run" / "results.json").read_text())
    assert _same(again["rows"], res["rows"]) and _same(again["fits"], res["fits"])


@pytest.mark.parametrize("extra, message", [
    (["--periods", "2", "2"], "--periods names a value twice"),
    (["--max-operand", "3"], "--max-operand must be at least 4"),
    (["--train-limit", "5"], "--train-limit must be at least 10"),
    (["--methods", "helix", "ring"], "invalid choice"),
    (["--layers", "5"], "--layers [5] leave the model's layers 0..1"),
])
def test_patch_settings_are_refused_in_one_sentence(tiny_dir, tmp_path, capsys, extra, message):
    argv = ["patch", "--model", str(tiny_dir("gpt2")), *PATCH, *extra, "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the weights' progress bar
    assert err.startswith("llm-fourier") and ": error:" in err and message in err
    with pytest.raises(UserError, match="at least 2"):
        patch_cmd.COMMAND(model="m", periods=[1.5])


@pytest.fixture(scope="module")
def knocked(tiny_dir, tmp_path_factory):
    model = tiny_dir("gpt2")
    out = tmp_path_factory.mktemp("neurons") / "run"
    assert main(["neurons", "--model", str(model), *NEURONS, "--out", str(out)]) == 0
    return model, out, json.loads((out / "results.json").read_text())


def test_neurons_command_gives_the_library_numbers(knocked):
    model, out, res = knocked
    lm = load_model(model)
    task = make_task("+", 49)
    numbers = task_numbers(lm.tokenizer, 98)
    spectra = neuron_spectra(lm, numbers, basis_kind="paper", periods=(2, 10))
    with open(out / "neurons.csv") as fh:
        rows = list(csv.DictReader(fh))
    table = spectra.table(0.0)
    assert len(rows) == len(table) == 2 * 128  # min share 0: every neuron of both layers
    for got, want in zip(rows, table):
        assert int(got["neuron"]) == want["neuron"] and int(got["k"]) == want["k"]
        assert float(got["share"]) == pytest.approx(want["share"], rel=1e-6)
    assert _same(res["summary"], json.loads(json.dumps(spectra.summary(0.0))))
    ref = knockout_table(lm, task.test[:12], numbers, (2, 10), 6, spectra=spectra, n_random=2,
                         basis_kind="paper", progress=False)
    ref = json.loads(json.dumps(ref))  # layer keys as results.json writes them
    assert _same(res["knockout"], ref)
    assert res["numbers"]["p"] == 99 and res["post_norm"] is False
    top10 = res["knockout"]["periods"][1]["top"]["neurons"]
    assert sum(len(v) for v in top10.values()) == 6
    with open(out / "knockout.csv") as fh:
        assert [float(r["period"]) for r in csv.DictReader(fh)] == [2.0, 10.0]
    for name in ("neurons.png", "knockout.png"):
        assert (out / name).stat().st_size > 0


def test_neurons_resume_at_the_next_unit(knocked, tmp_path, monkeypatch):
    model, _, res = knocked
    argv = ["neurons", "--model", str(model), *NEURONS, "--out", str(tmp_path / "run")]
    real, seen = neurons_lib.score_conditions, []
    monkeypatch.setattr(neurons_lib, "score_conditions", interrupted(real, after=3))
    assert main(argv) == 130
    monkeypatch.setattr(neurons_lib, "score_conditions", counting(real, seen))
    assert main(argv) == 0
    assert len(seen) == 7 - 3  # baseline, 2 x (top + 2 draws) on one batch; 3 were kept
    again = json.loads((tmp_path / "run" / "results.json").read_text())
    assert _same(again["knockout"], res["knockout"])


@pytest.mark.parametrize("extra, message", [
    (["--periods", "500"], "periods [500.0] fall outside the components"),
    (["--periods", "10", "10.01"], "share a Fourier component"),
    (["--min-share", "1.5"], "--min-share must be at most 1"),
    (["--layers", "0", "--n-neurons", "200"], "--n-neurons must be at most 128"),
])
def test_neurons_settings_are_refused_in_one_sentence(tiny_dir, tmp_path, capsys, extra,
                                                      message):
    argv = ["neurons", "--model", str(tiny_dir("gpt2")), *NEURONS, *extra, "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the weights' progress bar
    assert err.startswith("llm-fourier") and ": error:" in err and message in err


def test_no_knockout_writes_the_spectra_only(tiny_dir, tmp_path):
    res = __import__("llm_fourier.commands.neurons", fromlist=["COMMAND"]).COMMAND(
        model=str(tiny_dir("gpt2")), max_operand=49, no_knockout=True, layers=[1],
        min_share=0.9, out=str(tmp_path))
    assert res["knockout"] is None and res["n_examples"] == 0 and res["layers"] == [1]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".csv", ".png")) == \
        ["neurons.csv", "neurons.png"]
    share = np.array([float(r["share"]) for r in csv.DictReader(open(tmp_path / "neurons.csv"))])
    assert (share >= 0.9).all()


def test_report_page_shows_both_commands(patched, knocked, tmp_path):
    import shutil

    from llm_fourier.batch.html import build_html
    from llm_fourier.output.files import write_json

    out = tmp_path / "report"
    jobs = {}
    for job_id, (command, folder) in {"patch-tiny": ("patch", patched[1]),
                                      "neurons-tiny": ("neurons", knocked[1])}.items():
        shutil.copytree(folder, out / "jobs" / job_id)
        jobs[job_id] = {"command": command, "status": "done", "settings": {}, "model": "tiny"}
    write_json(out / "manifest.json", {"title": "t", "jobs": jobs})
    page = build_html(out).read_text()
    for text in ("Helix activation patching", "Fourier neurons", "patching.png",
                 "neurons.png", "knockout.png", "keeps up to", "knocking out the top 6"):
        assert text in page, text
    best = {(r["role"], r["method"]): r for r in patch_cmd.best_rows(patched[2])}
    rows = [r for r in patched[2]["rows"] if r["role"] == "mlp" and r["method"] == "helix"
            and r["kept"] is not None]
    assert best[("mlp", "helix")]["kept"] == max(r["kept"] for r in rows)
    with open(out / "tables" / "patching_best.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2 * 5
    with open(out / "tables" / "neurons_knockout.csv") as fh:
        assert [r["period"] for r in csv.DictReader(fh)] == ["2.0", "10.0"]

"""`llm-fourier probe` and `llm-fourier ablate` end to end on a tiny saved model."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import llm_fourier.commands.probe as probe_cmd
from llm_fourier.cli import main
from llm_fourier.commands.ablate import AblateSettings
from llm_fourier.model.loading import load_model
from llm_fourier.model.numbers import find_number_tokens
from llm_fourier.model.tasks import make_task, tokenize_prompts
from llm_fourier.output.files import read_json
from llm_fourier.output.rundir import RunDir
from tests.llm.stores import interrupted
from tests.tiny import tiny_model_dir

TASK = ["--max-operand", "12", "--tau", "4", "--batch-size", "8"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(tiny_model_dir(tmp_path_factory.mktemp("cmd"), "gpt2"))


def _manual_accuracy(model_dir: str) -> float:
    """Exact accuracy of the model's own final logits over the number tokens (test split)."""
    lm = load_model(model_dir)
    examples = make_task("+", 12, seed=0).test
    ids = torch.as_tensor(find_number_tokens(lm.tokenizer, 24).token_ids)
    enc = tokenize_prompts(lm.tokenizer, [e.prompt for e in examples])
    with torch.no_grad():
        pred = lm.model(**enc).logits[:, -1, ids].argmax(-1).numpy()
    return float(np.mean(pred == np.array([e.answer for e in examples])))


def test_probe_end_to_end(model_dir, tmp_path, capsys):
    out = tmp_path / "probe"
    assert main(["probe", "--model", model_dir, "--out", str(out), "--final-norm", *TASK]) == 0
    res = read_json(out / "results.json")
    assert res["numbers"]["p"] == 25 and res["n_layers"] == 2
    for role in ("attn", "mlp", "block"):
        assert [r["layer"] for r in res["accuracy"][role]] == [0, 1]
        for layer in res["layers"][role]:
            assert {"outliers", "low_fraction", "high_fraction", "tau"} <= set(layer)
            assert layer["tau"] == 4
            assert layer["low_fraction"] + layer["high_fraction"] == pytest.approx(1)
            assert all(o["period"] == pytest.approx(24 / o["k"]) for o in layer["outliers"])
    # with the final norm, the residual lens at the last layer is the model's own readout
    assert res["accuracy"]["block"][1]["exact"] == pytest.approx(_manual_accuracy(model_dir))
    # the layer-averaged spectrum is the mean of the per-layer spectra in spectra.csv
    rows = list(csv.DictReader(open(out / "spectra.csv")))
    mlp = np.array([[float(r["magnitude"]) for r in rows if r["role"] == "mlp"
                     and r["layer"] == str(i)] for i in range(2)])
    energy = (mlp.mean(0) ** 2)
    assert res["mean_over_layers"]["mlp"]["low_fraction"] == pytest.approx(
        energy[:3].sum() / energy.sum())  # components k = 1..3 are below tau = 4
    for name in ("heatmap_attn.png", "heatmap_mlp.png", "lens_accuracy.png", "spectra.csv",
                 "accuracy.csv", "spectrum_attn.png", "spectrum_mlp.png"):
        assert (out / name).stat().st_size > 0 and name in res["files"]
    assert not (out / ".partial").exists()  # the lens state is gone once results are written
    assert "attn periods" in capsys.readouterr().out


def test_probe_resumes_after_an_interruption(model_dir, tmp_path, monkeypatch, capsys):
    fresh, broken = tmp_path / "fresh", tmp_path / "broken"
    assert main(["probe", "--model", model_dir, "--out", str(fresh), *TASK]) == 0
    real = probe_cmd.run_lens

    monkeypatch.setattr(probe_cmd, "run_lens", interrupted(real))
    assert main(["probe", "--model", model_dir, "--out", str(broken), *TASK]) == 130
    assert (broken / ".partial" / "lens-lens_0.json").exists()
    assert not (broken / "results.json").exists()
    monkeypatch.setattr(probe_cmd, "run_lens", real)
    capsys.readouterr()
    assert main(["probe", "--model", model_dir, "--out", str(broken), *TASK]) == 0
    assert "resuming" in capsys.readouterr().out
    a, b = read_json(fresh / "results.json"), read_json(broken / "results.json")
    assert a["accuracy"] == b["accuracy"] and a["layers"] == b["layers"]


def test_ablate_end_to_end_and_resume(model_dir, tmp_path, capsys):
    out = tmp_path / "ablate"
    args = ["ablate", "--model", model_dir, "--out", str(out), "--keep", "2", "--layers", "1",
            "--prediction", "numbers", *TASK]
    assert main(args) == 0
    res = read_json(out / "results.json")
    rows = [r["row"] for r in res["table"]]
    assert rows == ["none", "attn+MLP low removed", "attn low removed", "MLP low removed",
                    "attn+MLP high removed", "attn high removed", "MLP high removed",
                    "attn+MLP keep k=2", "attn keep k=2", "MLP keep k=2"]
    assert res["layers"] == [1]
    none = res["table"][0]
    assert none["accuracy"] == pytest.approx(_manual_accuracy(model_dir))
    assert {"loss", "error_histogram", "frac_errors_mult_10", "mod2_accuracy",
            "mod10_accuracy"} <= set(none)
    for name in ("table.csv", "predictions.csv", "error_histograms.png"):
        assert (out / name).stat().st_size > 0
    assert "MLP high removed" in capsys.readouterr().out
    # an interrupted run reuses its finished (batch, row) units (here: a doctored one)
    # instead of recomputing them
    run = RunDir(out, "ablate", AblateSettings.from_dict(
        {"model": model_dir, "keep": [2], "layers": "1", "prediction": "numbers",
         **{k.lstrip("-").replace("-", "_"): v for k, v in zip(TASK[::2], TASK[1::2])}}
    ).identity())
    n0 = min(int(TASK[TASK.index("--batch-size") + 1]), res["n_examples"])
    run.store("ablate")["none/0"] = {"pred": torch.full((n0,), 7), "loss": torch.full((n0,), 1e3)}
    run.close()
    capsys.readouterr()
    assert main(args) == 0
    assert read_json(out / "results.json")["table"][0]["loss"] > 1e3 * n0 / res["n_examples"]
    assert "resuming: 1 of" in capsys.readouterr().out


@pytest.mark.parametrize("extra, words", [
    (["--model", "/no/such/folder"], "/no/such/folder"),
    (["--max-operand", "150"], "answers up to 300 cannot be scored"),
    (["--layers", "7"], "--layers"),
    (["--keep", "99"], "--keep"),
    (["--tau", "13", "--model", "/never/loaded"], "--tau must lie in 1..12"),
])
def test_bad_input_exits_2_with_one_sentence(model_dir, tmp_path, capsys, extra, words):
    command = "probe" if extra[0] in ("--model", "--max-operand") else "ablate"
    argv = [command, "--model", model_dir, "--out", str(tmp_path / "x"), *TASK, *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("llm-fourier: error:")]
    assert len(lines) == 1 and words in lines[0] and lines[0].endswith(".")
    assert "Traceback" not in err


def _script(name: str):
    path = Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_scripts_run_on_a_local_folder(model_dir, tmp_path, monkeypatch, capsys):
    script = _script("probe_gpt2")
    out = tmp_path / "script"
    monkeypatch.setattr(sys, "argv", ["probe_gpt2.py", model_dir, "--out", str(out),
                                      "--max-operand", "12", "--limit", "6", "--shots", "1",
                                      "--tau", "4", "--no-ablate"])
    assert script.run("gpt2", "unused", 0) == 0
    assert read_json(out / "probe" / "results.json")["n_examples"] == 6
    assert str(out / "probe") in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["probe_llama.py", str(tmp_path / "missing")])
    assert script.run("meta-llama/Meta-Llama-3-8B", str(out), 4) == 2
    assert "does not exist" in capsys.readouterr().err

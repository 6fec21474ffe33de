"""``llm-fourier toy train`` and ``toy analyze`` end to end through the real CLI."""

import pytest
import torch

from llm_fourier.cli import main
from llm_fourier.output.files import read_json
from tests.toy.test_importers import nanda_state
from toy.analysis import analyze
from toy.data import make_task, nanda_split, split_indices
from toy.importers import load_checkpoint

TINY = ["--p", "11", "--train-frac", "0.5", "--d-model", "16", "--heads", "2", "--d-head", "8",
        "--d-mlp", "32", "--epochs", "60", "--lr", "3e-3", "--log-every", "10",
        "--measure-every", "30", "--checkpoint-every", "20"]
REQUIRED = ("key_frequencies", "test_accuracy", "test_loss", "restricted_loss", "excluded_loss",
            "gini_embed", "gini_neuron_logit", "ffd", "fcr")


def test_train_then_analyze(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["toy", "train", "--out", str(run), "--seeds", "0", "3", *TINY]) == 0
    res = read_json(run / "results.json")
    assert [s["seed"] for s in res["seeds"]] == [0, 3]
    assert {"history.csv", "loss_curves.png", "checkpoint.safetensors"} <= \
        {f.name for f in run.iterdir()}
    assert set(res["seeds"][0]) >= {"seed", "epoch", "memorized_epoch", "grokked_epoch",
                                    "train_accuracy", "test_accuracy", "test_loss",
                                    "key_frequencies"}  # the layout the report view reads
    last = [r for r in res["history"] if r["seed"] == 3][-1]
    assert last["epoch"] == 60 and res["seeds"][1]["test_loss"] == last["test_loss"]
    assert "seed" in capsys.readouterr().out

    out = tmp_path / "an"
    assert main(["toy", "analyze", str(run / "checkpoint.safetensors"), "--out", str(out),
                 "--seed", "3"]) == 0
    got = read_json(out / "results.json")
    assert set(REQUIRED) <= set(got) and got["seed"] == 3 and got["format"] == "ours"
    loaded = load_checkpoint(run / "checkpoint.safetensors")
    task = make_task("a+b", 11)
    tr, te = split_indices(len(task), 0.5, 3)
    direct = analyze(loaded.model, task, tr, te, seed_index=1, key_source=got["key_source"])
    for key in REQUIRED:
        assert got[key] == pytest.approx(direct[key]), key
    assert got["test_loss"] == pytest.approx(last["test_loss"], rel=1e-6)  # same split
    for name in ("embedding_spectrum.png", "neuron_frequencies.png", "frequency_ablation.png",
                 "loss_curves.png", "neurons.csv"):
        assert (out / name).stat().st_size > 0


def test_analyze_an_imported_nanda_checkpoint(tmp_path):
    path = tmp_path / "nanda.pth"
    torch.save({"model": nanda_state(), "config": {"p": 7, "frac_train": 0.4, "seed": 2}}, path)
    assert main(["toy", "analyze", str(path), "--out", str(tmp_path / "an")]) == 0
    got = read_json(tmp_path / "an" / "results.json")
    assert got["format"] == "nanda" and got["split"] == "nanda"
    assert got["n_train"] == len(nanda_split(7, 0.4, 2)[0])


def test_user_errors_exit_2(tmp_path, capsys):
    assert main(["toy", "analyze", str(tmp_path / "nope.pt"), "--out", str(tmp_path)]) == 2
    run = tmp_path / "run"
    args = ["toy", "train", "--out", str(run), *TINY[:-2], "--epochs", "5"]
    assert main(args) == 0
    assert main([*args, "--lr", "0.1"]) == 0  # a finished run: a new one starts
    assert main([*args[:-2], "--epochs", "4", "--stop-test-loss", "1e-30"]) == 0
    assert main(["toy", "train", "--out", str(tmp_path / "q"), "--model", "mlp",
                 "--quant", "binary"]) == 2
    assert main(["toy", "train", "--out", str(tmp_path / "r"), "--lr", "-1"]) == 2
    assert main(["toy", "train", "--out", str(tmp_path / "r"), "--train-frac", "2"]) == 2
    assert main(["toy", "train", "--out", str(tmp_path / "r"), "--d-model", "0"]) == 2
    err = capsys.readouterr().err
    assert "quantized weights" in err and "--lr must be above 0" in err
    assert "--train-frac must be at most 1" in err and "--d-model must be at least 1" in err
    assert "Traceback" not in err


def test_train_continues_a_finished_run_with_more_epochs(tmp_path):
    run = tmp_path / "run"
    base = ["toy", "train", "--out", str(run), *TINY[:-4]]
    assert main([*base, "--epochs", "20"]) == 0
    assert main([*base, "--epochs", "40"]) == 0  # only --epochs grew: it continues
    cont = read_json(run / "results.json")
    fresh = tmp_path / "fresh"
    assert main(["toy", "train", "--out", str(fresh), *TINY[:-4], "--epochs", "40"]) == 0
    assert cont["history"] == read_json(fresh / "results.json")["history"]
    assert read_json(run / "run.json")["history"][-1]["changed"] == ["epochs 20 -> 40"]

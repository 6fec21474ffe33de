"""The any-model preset: one command runs the whole analysis of a model of any tokenizer
family, sized to it, and writes one page that says what each view read and why."""

from __future__ import annotations

import json

import pytest

from llm_fourier.batch.any_model import any_model_config, spread
from llm_fourier.cli import main

ALL = ["embed", "probe", "ablate", "hidden", "patch", "neurons", "heads"]


def test_spread_layers():
    assert spread(2) == [0, 1] and spread(24) == [0, 8, 15, 23] and spread(4) == [0, 1, 2, 3]


@pytest.mark.parametrize("family", ["single", "digits"])
def test_any_model_preset_runs_the_whole_analysis(family, family_dir, tmp_path, capsys):
    folder = family_dir(family)
    out = tmp_path / "report"
    code = main(["report", "any-model", "--model", f"tiny={folder}", "--scale", "laptop",
                 "--quiet", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-1500:]
    manifest = json.loads((out / "manifest.json").read_text())
    commands = sorted(e["command"] for e in manifest["jobs"].values())
    folder_of = {e["command"]: out / "jobs" / j for j, e in manifest["jobs"].items()}
    assert all(e["status"] == "done" for e in manifest["jobs"].values())
    page = (out / "index.html").read_text()
    assert "Fourier number features in tiny" in page
    if family == "digits":  # patch and neurons score whole answers, read the digit readout
        assert commands == sorted(ALL) and "Not run" not in page
        neurons = json.loads((folder_of["neurons"] / "results.json").read_text())
        assert neurons["readout"]["readout"] == "digit"
        heads = json.loads((folder_of["heads"] / "results.json").read_text())
        assert heads["readout"]["readout"] == "digit"
        probe = json.loads((folder_of["probe"] / "results.json").read_text())
        assert probe["readout"]["readout"] == "digit" and probe["tau"] == 3
        assert "Readout: digit tokens 0..9 at every answer position (dft basis, tau 3)" in page
    else:
        assert commands == sorted(ALL) and "Not run" not in page
        assert "Readout: number tokens 0..200 at the answer position (paper basis, tau 50)" \
            in page
        # the tokenizer keeps 0..200 whole: operands 0..100 chosen, and said on the page
        assert "--max-operand 100 (the tokenizer keeps only 0..200 as single tokens" in page
    hidden = json.loads((folder_of["hidden"] / "results.json").read_text())
    assert hidden["layers"] == [0, 1] and "intervention" in hidden and hidden["digit_probes"]


def test_any_model_sizes_follow_the_scale(family_dir):
    folder = str(family_dir("single"))
    laptop, chosen = any_model_config({"tiny": folder}, "laptop")
    paper, _ = any_model_config({"tiny": folder}, "paper")
    # 0..200 whole, 201.. not writable: answers up to 520 are "mixed"; patch and neurons
    # still run (their operand ranges keep every answer one token)
    assert chosen["layers"] == 2 and chosen["family"] == "mixed" and not chosen["skipped"]
    by = {j["command"]: j["settings"] for j in laptop["jobs"]}
    on_paper = {j["command"]: j["settings"] for j in paper["jobs"]}
    assert by["probe"]["limit"] == 200 and "limit" not in on_paper["probe"]  # whole split
    assert by["patch"]["all_prompts"] and not on_paper["patch"]["all_prompts"]
    assert by["hidden"]["layers"] == [0, 1] and "layers" not in on_paper["hidden"]
    # options whose range depends on the model are left to the commands
    assert not any("max_operand" in s or "tau" in s for s in by.values())


def test_scale_only_for_any_model_and_one_model(tmp_path, family_dir, capsys):
    assert main(["report", "grokking", "--scale", "paper", "--dry-run"]) == 2
    assert "--scale sizes the any-model preset only" in capsys.readouterr().err
    assert main(["report", "any-model", "--dry-run"]) == 2
    assert "name one model with --model NAME=" in capsys.readouterr().err
    assert main(["report", "any-model", "--model", f"m={family_dir('chunks')}",
                 "--dry-run"]) == 0
    assert "patch-m" in capsys.readouterr().out

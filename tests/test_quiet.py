"""Generated over every command: each has --quiet and the shared options mean one thing;
with --quiet no progress bar reaches stderr (without it, bars do: the check is not vacuous)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from llm_fourier.batch.commands import BATCH_COMMANDS
from llm_fourier.cli import main
from llm_fourier.commands import all_commands
from llm_fourier.commands.options import BatchOptions, OutputOptions, SeedOptions, SourceOptions

COMMANDS = {**all_commands(), **{c.name: c for c in BATCH_COMMANDS}}
BAR = re.compile(r"\d+%\||it/s|s/it|batch/s|\d+/\d+ \[")


def _field(cls, name):
    return {f.name: f for f in dataclasses.fields(cls)}.get(name)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_quiet_and_shares_the_common_options(name):
    settings = COMMANDS[name].Settings
    assert "quiet" in settings.option_names()
    assert _field(settings, "quiet").metadata == _field(OutputOptions, "quiet").metadata
    for option, group in (("dtype", SourceOptions), ("device_map", SourceOptions),
                          ("batch_size", BatchOptions), ("seed", SeedOptions)):
        if option in settings.option_names() and name not in ("finetune", "transplant",
                                                              "toy analyze"):
            # one declaration, one meaning (finetune's batch and dtype are for training,
            # transplant's for its adders, toy analyze's --seed picks a trained seed)
            assert _field(settings, option).metadata == _field(group, option).metadata, option


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Argument lists (small sizes) for every command, built on tiny models."""
    from tests.tiny import tiny_model_dir

    root = tmp_path_factory.mktemp("quiet")
    model = str(tiny_model_dir(root, "gpt2"))
    config = root / "grid.toml"
    config.write_text(f'[models]\ntiny = "{model}"\n[[jobs]]\ncommand = "probe"\nmodels = "*"\n'
                      'settings = { max_operand = 12, limit = 8, tau = 3 }\n')
    task = ["--model", model, "--max-operand", "12"]
    return {
        "embed": ["--model", model, "--bootstrap", "10", "--permutations", "10"],
        "probe": [*task, "--limit", "8", "--tau", "3"],
        "ablate": [*task, "--limit", "8", "--tau", "3"],
        "hidden": [*task, "--n-probe", "40", "--bootstrap", "10", "--permutations", "10",
                   "--refits", "2", "--digit-kinds"],
        "patch": [*task, "--train-limit", "30", "--test-limit", "4", "--all-prompts"],
        "neurons": [*task, "--limit", "8", "--n-random", "1", "--n-neurons", "2"],
        "heads": [*task, "--limit", "8", "--tau", "3", "--top-k", "1", "--n-random", "1",
                  "--bootstrap", "10"],
        "finetune": [*task, "--epochs", "1", "--max-pairs", "20"],
        "toy train": ["--p", "7", "--epochs", "20", "--d-model", "8", "--d-mlp", "16"],
        "toy analyze": [],  # the checkpoint of toy train, filled in below
        "transplant": ["--seeds", "0", "--max-operand", "6", "--epochs", "1", "--layers", "1",
                       "--d-model", "16", "--heads", "2"],
        "report": [str(config)],
        "demo": None,  # the report above covers its runner; the demo's option is checked
    }


def test_every_command_has_a_run_here(runs):
    assert set(runs) == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_quiet_silences_progress_bars(name, runs, tmp_path, capsys):
    if runs[name] is None:
        pytest.skip("covered by the report run")
    argv = list(runs[name])
    if name == "toy analyze":
        assert main(["toy", "train", *runs["toy train"], "--quiet", "--out",
                     str(tmp_path / "t")]) == 0
        argv = [str(tmp_path / "t" / "checkpoint.safetensors")]
    capsys.readouterr()
    assert main([*name.split(), *argv, "--quiet", "--out", str(tmp_path / "q")]) == 0
    err = capsys.readouterr().err
    assert not BAR.search(err), err[-500:]


def test_bars_show_without_quiet(runs, tmp_path, capsys):
    assert main(["probe", *runs["probe"], "--out", str(tmp_path / "loud")]) == 0
    assert BAR.search(capsys.readouterr().err)

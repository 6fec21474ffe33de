"""Every command with its defaults (only sizes made small) on a tiny model of each tokenizer
family: single tokens 0..200 (GPT-2 style), digits (Llama-2 style), 3-digit chunks (Llama-3
style). Options whose range depends on the model (operand range, tau, basis) are chosen from
its number format, said on the console and in results.json; patch and neurons read digit
tokenizers through the digit readout and whole answers (finetune refuses them)."""

from __future__ import annotations

import json

import pytest

from llm_fourier.cli import main
from llm_fourier.model.numbers import find_number_tokens
from llm_fourier.model.sources import load_tokenizer
from tests.llm.families import FAMILIES

STATS = ["--bootstrap", "20", "--permutations", "20", "--refits", "2"]
SIZES = {  # sizes only: nothing that depends on the model
    "embed": STATS,
    "probe": ["--limit", "6"],
    "ablate": ["--limit", "6"],
    "hidden": ["--n-probe", "60", *STATS, "--no-random-baseline"],
    # a random model answers no prompt: patch them all (the paper patches correct ones)
    "patch": ["--train-limit", "40", "--test-limit", "6", "--all-prompts"],
    "neurons": ["--limit", "6", "--n-neurons", "2", "--n-random", "1"],
    "heads": ["--limit", "6", "--top-k", "1", "--n-random", "1", "--bootstrap", "10"],
    "finetune": ["--epochs", "1", "--max-pairs", "24"],
}
# finetune's loss is on one answer token; patch and neurons read digits (issue 20, item 2)
REFUSES_DIGITS = ("finetune",)


def _expected_operand(folder, preferred: int) -> int:
    """Independently: 260 (or patch's 99) unless the single-token numbers stop below its
    answers and the answers are not digit tokens; then the largest 2m within them."""
    top = find_number_tokens(load_tokenizer(str(folder)), 2000).max_number
    if top >= 2 * preferred or top == 9:  # every answer one token, or one token per digit
        return preferred
    return top // 2


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("command", list(SIZES))
def test_every_command_runs_with_its_defaults(family, command, family_dir, tmp_path, capsys):
    folder = family_dir(family)
    out = tmp_path / command
    code = main([command, "--model", str(folder), *SIZES[command], "--quiet",
                 "--out", str(out)])
    captured = capsys.readouterr()
    if family == "digits" and command in REFUSES_DIGITS:
        assert code == 2 and "digit" in captured.err and "Traceback" not in captured.err
        return
    assert code == 0, captured.err[-800:]
    res = json.loads((out / "results.json").read_text())
    chosen = res.get("defaults", {})
    if command == "embed":  # tau from the single-token numbers 0..p-1
        p = res["numbers"]["p"]
        expected = 50 if (p - 1) // 2 >= 50 else max(2, round(50 * (p - 1) / 520))
        assert chosen["tau"]["value"] == res["tau"] == expected
    if command in ("probe", "ablate", "hidden", "patch", "neurons", "finetune"):
        preferred = 99 if command == "patch" else 260
        assert chosen["max_operand"]["value"] == _expected_operand(folder, preferred)
        assert f"--max-operand {chosen['max_operand']['value']} (default for this model" \
            in captured.out
    if command in ("probe", "ablate"):
        tau = chosen["tau"]["value"]
        if family == "digits":
            assert tau == 3 and chosen["basis"]["value"] == "dft"
            assert res["readout"]["readout"] == "digit"
        else:
            assert res["readout"]["readout"] == "number"
            p = res["numbers"]["p"]
            assert tau == (50 if (p - 1) // 2 >= 50 else round(50 * (p - 1) / 520))
        assert "--tau" in captured.out and chosen["tau"]["why"]

"""Each prompt is tokenized once per run (issue 19): every command that runs prompts, with
the options that add analyses over the same prompts, on a single-token and a digit-splitting
tokenizer. The spy sits on the tokenizer class, so any code path that tokenizes counts."""

from __future__ import annotations

from collections import Counter

import pytest
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from llm_fourier.cli import main
from llm_fourier.model.tasks import make_task

QUICK = ["--max-operand", "19", "--quiet"]
STATS = ["--bootstrap", "0", "--permutations", "0", "--refits", "0"]
RUNS = {
    "probe": ["--limit", "12", "--tau", "3", "--keep-rows"],
    "ablate": ["--limit", "12", "--tau", "3"],
    # the probed prompts (states, random baseline) and the test prompts (ablation, intervention)
    "hidden": [*STATS, "--n-probe", "30", "--layers", "0", "1", "--periods", "2",
               "--helix-periods", "10", "--pca-dim", "4", "--mod-pca-dim", "4", "--folds", "2",
               "--token", "a", "--ablate-periods", "10", "--digit-kinds", "--intervene-place",
               "0", "--intervene-layer", "0", "--n-eval", "12"],
    "patch": ["--all-prompts"],
    "neurons": ["--limit", "12"],
    "heads": ["--limit", "12"],
}


@pytest.mark.parametrize("split", [False, True], ids=["single-token", "digits"])
@pytest.mark.parametrize("command", list(RUNS))
def test_each_prompt_is_tokenized_once(tiny_dir, tmp_path, monkeypatch, command, split):
    seen: Counter = Counter()
    real = PreTrainedTokenizerBase.__call__

    def spy(self, text=None, *args, **kwargs):
        seen.update([text] if isinstance(text, str) else list(text or ()))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", spy)
    folder = tiny_dir("llama" if split else "gpt2", split_digits=split)
    assert main([command, "--model", str(folder), *QUICK, *RUNS[command],
                 "--out", str(tmp_path / "run")]) == 0
    task = make_task("+", 19)
    prompts = {e.prompt for part in (task.train, task.val, task.test) for e in part}
    assert prompts & set(seen), "the spy saw no prompt"
    twice = {p for p, n in seen.items() if n > 1 and p in prompts}
    if command == "patch":
        # its counterfactual prompts (the operand swapped) are prompts of their own; a few
        # coincide with training prompts, whose states were collected before
        assert not twice & {e.prompt for e in task.test}
        assert all(seen[p] == 2 for p in twice)
    else:
        assert not twice

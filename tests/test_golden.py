"""Every command's results for fixed quick settings equal those of the code before the
command layer was rebuilt (``tests/data/golden/*.json``, written by the code at commit
6ef3229 on the same tiny models).

Compared: every value the old ``results.json`` holds (floats to 1e-6 relative), except the
settings echo (option names changed: ``--seed`` of probe/ablate/hidden is ``--task-seed``,
finetune's ``--limit`` is ``--max-pairs``), paths (the run folder differs) and the keys listed
in ``CHANGED`` with the reason each one changed on purpose. New keys are allowed. The old
"paper" basis had rows of unit norm: today that is ``--basis unit`` (``paper`` follows the
paper's Def. A.3 factors), so probe and embed run with it.

The forward engine (issue 19) runs probe and ablate from a KV cache of the prompt prefix,
batches prompts by length and stacks the Table 1 rows along the batch: their logits and
rows round differently from one full forward (about 1e-7 relative in float32), within the
1e-6 tolerance, so no key changed and every prediction is identical.
"""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path

import pytest

from llm_fourier.cli import main
from tests.tiny import tiny_model_dir

GOLDEN = Path(__file__).parent / "data" / "golden"
PATHS = {"model", "checkpoint", "model_dir", "files", "settings", "source"}
# values changed on purpose (fnmatch patterns over the path), with the issue that did it
CHANGED = {
    ".key_source": "toy analyze: the loss rule picks the key frequencies (issue 13, part 5)",
    ".layers.*.outliers*": "lens spectra: peaks at k >= tau, the paper's annotation (13.7)",
    ".mean_over_layers.*.outliers*": "lens spectra: peaks at k >= tau (issue 13, part 7)",
    ".probes[[]*[]].mod.*": "mod-T probes: folds of blocks of numbers, unbiased (13.2)",
    ".mod_probes[[]*[]].*": "embed mod-T probes: the same blocked folds (issue 13, part 2)",
    ".basis": "the old paper rows (unit norm) are --basis unit now (issue 13, part 7)",
    ".arms.*_periods": "transplant lens periods: peaks at k >= tau (issue 13, part 7)",
    ".arms.*.runs[[]*[]].*_periods": "transplant lens periods: peaks at k >= tau (13.7)",
}

TASK = ["--max-operand", "20", "--limit", "24", "--batch-size", "8"]
RUNS = {
    "probe": lambda m: ["probe", "--model", m, *TASK, "--tau", "4", "--basis", "unit"],
    "ablate": lambda m: ["ablate", "--model", m, *TASK, "--tau", "4", "--keep", "3"],
    "embed": lambda m: ["embed", "--model", m, "--max-number", "40", "--tau", "4",
                        "--basis", "unit"],
    "hidden": lambda m: ["hidden", "--model", m, "--max-operand", "20", "--n-probe", "120",
                         "--roles", "block", "--no-random-baseline", "--folds", "3",
                         "--helix-periods", "2", "5", "10", "--periods", "2", "5",
                         "--pca-dim", "8", "--mod-pca-dim", "8", "--quiet",
                         "--batch-size", "16", "--bootstrap", "100", "--permutations", "100",
                         "--refits", "2", "--digit-kinds"],
    "finetune": lambda m: ["finetune", "--model", m, "--max-operand", "8", "--epochs", "1",
                           "--batch-size", "8"],
    "transplant": lambda m: ["transplant", "--max-operand", "8", "--epochs", "2",
                             "--eval-every", "1", "--layers", "1", "--d-model", "16",
                             "--heads", "2", "--batch-size", "16", "--seeds", "0"],
    "toy-train": lambda m: ["toy", "train", "--p", "11", "--train-frac", "0.5", "--epochs",
                            "40", "--d-model", "32", "--heads", "2", "--d-head", "16",
                            "--d-mlp", "64", "--lr", "3e-3", "--log-every", "1",
                            "--measure-every", "4", "--checkpoint-every", "8", "--seeds", "0"],
}


def differences(old, new, path: str = "") -> list[str]:
    """Where ``new`` does not hold ``old``'s values (new keys are fine)."""
    if isinstance(old, dict):
        if not isinstance(new, dict):
            return [f"{path}: not a mapping"]
        return [d for k, v in old.items() if k not in PATHS
                and not any(fnmatch.fnmatchcase(f"{path}.{k}", pat) for pat in CHANGED)
                for d in (differences(v, new[k], f"{path}.{k}") if k in new
                          else [f"{path}.{k}: missing"])]
    if isinstance(old, list):
        if not isinstance(new, list) or len(old) != len(new):
            return [f"{path}: list length {len(old)} -> "
                    f"{len(new) if isinstance(new, list) else new!r}"]
        return [d for i, (a, b) in enumerate(zip(old, new))
                for d in differences(a, b, f"{path}[{i}]")]
    if isinstance(old, float) or isinstance(new, float):
        if old is None or new is None or not math.isclose(old, new, rel_tol=1e-6,
                                                           abs_tol=1e-9):
            return [f"{path}: {old!r} -> {new!r}"]
        return []
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    model = str(tiny_model_dir(root / "models", "gpt2"))
    out = {}
    for name, argv in RUNS.items():
        assert main([*argv(model), "--out", str(root / name)]) == 0, name
        out[name] = json.loads((root / name / "results.json").read_text())
    ckpt = root / "toy-train" / "checkpoint.safetensors"
    assert main(["toy", "analyze", str(ckpt), "--out", str(root / "toy-analyze")]) == 0
    out["toy-analyze"] = json.loads((root / "toy-analyze" / "results.json").read_text())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", [*RUNS, "toy-analyze"])
def test_results_equal_the_code_before_the_rewrite(runs, name):
    old = json.loads((GOLDEN / f"{name}.json").read_text())
    assert differences(old, runs[name]) == []


def test_the_comparison_can_fail():
    assert differences({"a": [1.0, {"b": 2}]}, {"a": [1.0, {"b": 3}]}) == [".a[1].b: 2 -> 3"]
    assert differences({"a": 1.0}, {"a": 1.0 + 1e-3}) == [".a: 1.0 -> 1.001"]
    assert differences({"a": 1, "settings": 1}, {"a": 1, "new": 2}) == []

"""The built-in report of ``llm-fourier demo``: the whole toolkit offline, in minutes on a CPU.

``demo_config`` trains small GPT-2-architecture adders with and without transplanted Fourier
number embeddings (``transplant``), runs the LLM pipeline on the two trained adders
(``embed``, ``probe``, ``ablate``, ``hidden``) and trains a small grokking model of
(a + b) mod p (``toy train``, ``toy analyze``), all through the report runner:
``OUT/index.html`` holds every plot, a re-run skips finished jobs, a killed demo resumes.
``--model gpt2`` (or a Llama folder) runs the LLM parts on that pretrained model instead,
few-shot, and transplants its number embeddings; ``--quick`` is the test-sized variant.
"""

from __future__ import annotations

from pathlib import Path

# sizes of the built-in report: (full demo, --quick). tau splits the adders' numbers 0..100
# (0..16 quick) so that neither band's Fourier rows span the adders' width (64; 16 quick):
# every ablation row is a frequency ablation, not a knockout (k >= 25 is periods <= 4)
# (the full demo's adders use the transplant command's CPU preset: operands 0..50, width 64,
# 60 epochs, where the transplant effect shows; see toy/transplant_cli.py)
SIZES = {
    False: {"operand": 50, "limit": 200, "p": 31, "toy_epochs": 3000, "llm_operand": 99,
            "llm_limit": 200, "tau": 25},
    True: {"operand": 8, "adder_epochs": 2, "eval_every": 1, "limit": 24, "p": 11,
           "toy_epochs": 40, "llm_operand": 20, "llm_limit": 16, "tau": 4},
}


def demo_config(model: str | None = None, quick: bool = False) -> dict:
    """The built-in report: transplant adders + LLM pipeline + grokking, as a config dict."""
    z = SIZES[quick]
    transplant = {"seeds": [0], "tau": z["tau"]}
    if quick:
        transplant.update(max_operand=z["operand"], epochs=z["adder_epochs"],
                          eval_every=z["eval_every"], layers=1, d_model=16, heads=2,
                          batch_size=16)
    if model is None:
        models = {"adder-scratch": "{jobs.transplant}/seed0/scratch/model",
                  "adder-fourier": "{jobs.transplant}/seed0/transplant/model"}
        task = {"op": "+", "max_operand": z["operand"], "ordered": True}
        llm = {"limit": z["limit"], "batch_size": 32}
    else:
        transplant["source"] = model
        models = {Path(model).name or "model": model}
        task = {"op": "+", "max_operand": z["llm_operand"]}
        llm = {"limit": z["llm_limit"], "shots": 3, "batch_size": 8}
    p = z["p"]
    toy = {"p": p, "train_frac": 0.5, "epochs": z["toy_epochs"], "d_model": 32 if quick else 64,
           "heads": 2 if quick else 4, "d_head": 16, "d_mlp": 64 if quick else 256,
           "lr": 3e-3, "log_every": max(1, z["toy_epochs"] // 100),
           "measure_every": max(1, z["toy_epochs"] // 10),
           "checkpoint_every": max(1, z["toy_epochs"] // 5)}
    # hidden-state probes with their intervals over numbers (quick: 17 answers, few draws)
    hidden = {"roles": ["block"], "periods": [2, 5, 10], "helix_periods": [2, 5, 10],
              "pca_dim": 16, "mod_pca_dim": 16, "digit_kinds": [], "batch_size": 32,
              "n_probe": 1000, "token": "a"} if not quick else \
        {"roles": ["block"], "periods": [2, 5], "helix_periods": [2, 5], "pca_dim": 8,
         "mod_pca_dim": 8, "folds": 3, "digit_kinds": [], "token": "last",
         "bootstrap": 200, "permutations": 200, "refits": 2, "quiet": True}
    what = ("the two trained adders" if model is None else model)
    return {
        "title": "llm-fourier demo: Fourier number features end to end",
        "description": (
            "Small GPT-2-architecture adders trained from scratch, with and without "
            "transplanted (frozen) Fourier number embeddings; the LLM pipeline (embedding "
            f"spectra, per-layer logit lens and Fourier spectra, frequency ablations, "
            f"hidden-state probes with their intervals over numbers) run on {what}; and a "
            f"small grokking run of (a + b) mod {p} with its progress measures."),
        "seeds": [0],
        "models": models,
        "tasks": {"add": task},
        "jobs": [
            {"command": "transplant", "name": "transplant", "settings": transplant,
             "caption": "Adders trained from scratch (scratch arm) and with frozen number "
                        "embeddings transplanted from the source (transplant arm)."},
            {"command": "embed", "models": "*",
             "settings": {"max_number": 2 * task["max_operand"], "tau": z["tau"]}},
            {"command": "probe", "models": "*", "tasks": ["add"],
             "settings": {**llm, "tau": z["tau"]}},
            {"command": "ablate", "models": "*", "tasks": ["add"],
             "settings": {**llm, "tau": z["tau"]}},
            {"command": "hidden", "models": "*", "tasks": ["add"], "settings": hidden},
            {"command": "toy train", "name": "grok", "settings": {**toy, "seeds": [0]},
             "caption": f"One-layer transformer on (a + b) mod {p}, half of the pairs for "
                        "training, AdamW with weight decay 1."},
            {"command": "toy analyze", "name": "grok-analysis",
             "settings": {"checkpoint": "{jobs.grok}/checkpoint.safetensors"}},
        ],
    }


NEXT_STEPS = """\
Open the report in a browser: {index}
The same report on a pretrained model, on a machine with its weights (hub id or folder):
  llm-fourier demo --model gpt2 --out runs/demo-gpt2
  llm-fourier demo --model meta-llama/Meta-Llama-3-8B --out runs/demo-llama
The paper-sized pipelines ship as presets: llm-fourier report --list-presets"""

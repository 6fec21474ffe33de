"""``llm-fourier transplant``: from-scratch GPT-2 adders with and without transplanted
number embeddings, over seeds, reported side by side (Zhou et al., section 4.2).

Arms: ``scratch`` (random init) and ``transplant`` (number rows of W_E, tied to W_U, set
from ``--source``; frozen unless ``--trainable``). Sources: ``synthetic`` (Fourier features
at ``--periods`` plus ``--n-low`` smooth components), the controls ``synthetic:low`` and
``synthetic:random`` (matched norms), a Hugging Face id or folder (``gpt2``, Llama-3,
BERT, ...; projected to the adder's width by ``--projection``) or another run's folder.
Each (seed, arm) trains with ``llm_fourier.finetune.train`` into ``OUT/seedS/ARM/`` and is
analysed from its saved folder by the code of ``probe`` and ``ablate``. Re-running the same
command skips finished arms and resumes the one in progress from its checkpoint.

``--preset cpu`` (default): operands 0..50 (ordered pairs), 2 layers, width 64, 60 epochs
(about 4k steps of batch 32 per arm; minutes on 2 cores). At this width the high band's
filter spans all 64 dimensions, so those ablation rows are flagged as uninformative (use
``--d-model`` above p - 1 = 100 for them; at width 128 the transplant advantage did not
appear within 60 epochs, see ARCHITECTURE.md). ``--preset paper``: GPT-2 small, operands
0..260 (a <= b), source ``gpt2``, LR 5e-5, 700 epochs, batch 16: for a GPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from llm_fourier.commands import Command
from llm_fourier.errors import UserError
from llm_fourier.report.files import read_json, write_json
from llm_fourier.report.tables import format_table
from toy.transplant import PROJECTIONS, SYNTHETIC_KINDS

ARMS = ("scratch", "transplant")
PRESETS = {
    "cpu": dict(max_operand=50, ordered=True, layers=2, d_model=64, heads=4, dropout=0.0,
                epochs=60, lr=1e-3, batch_size=32, weight_decay=0.01, warmup_steps=50,
                eval_every=10, source="synthetic"),
    "paper": dict(max_operand=260, ordered=False, layers=12, d_model=768, heads=12,
                  dropout=0.1, epochs=700, lr=5e-5, batch_size=16, weight_decay=0.01,
                  warmup_steps=0, eval_every=10, source="gpt2"),
}
RUN_KEYS = ("max_operand", "ordered", "layers", "d_model", "heads", "dropout", "epochs", "lr",
            "batch_size", "weight_decay", "warmup_steps", "eval_every", "source", "op",
            "task_seed", "trainable", "projection", "norm", "periods", "n_low", "tau",
            "grad_accum", "mixed_precision")


def resolve_settings(args: argparse.Namespace) -> dict:
    """The preset's values overridden by the options given; checked."""
    if args.preset not in PRESETS:
        raise UserError(f"unknown preset {args.preset!r}; choose {', '.join(PRESETS)}.")
    s = {**PRESETS[args.preset],
         **{k: v for k, v in vars(args).items() if k in RUN_KEYS and v is not None}}
    s["periods"] = [float(x) for x in s.get("periods") or (2, 2.5, 5, 10)]
    if not args.seeds:
        raise UserError("give at least one seed, e.g. --seeds 0 1 2.")
    if min(s["epochs"], s["batch_size"], s["max_operand"]) < 1:
        raise UserError("--epochs, --batch-size and --max-operand must be at least 1.")
    return s


def build_source(s: dict, numbers, dim: int) -> tuple[np.ndarray, dict]:
    """The rows to transplant (q x dim, row n = number n) and a description."""
    from toy.transplant import project_rows, rescale_rows, source_number_rows, synthetic_embeddings

    src = s["source"]
    if src.startswith("synthetic"):
        kind = src.partition(":")[2] or "fourier"
        if kind not in SYNTHETIC_KINDS:
            raise UserError(f"unknown synthetic source {src!r}; use synthetic, "
                            "synthetic:low or synthetic:random.")
        rows = synthetic_embeddings(numbers.p, dim, kind, s["periods"], s["n_low"],
                                    1.0 if s.get("norm") is None else s["norm"], seed=0)
        return rows, {"source": src, "kind": kind, "periods": s["periods"], "n_low": s["n_low"]}
    rows, info = source_number_rows(src, numbers.p, leading_space=numbers.leading_space)
    if len(rows) < numbers.p:
        print(f"note: {src} keeps only 0..{len(rows) - 1} as single tokens; numbers "
              f"{len(rows)}..{numbers.p - 1} keep their random initialisation.")
    projected = rescale_rows(project_rows(rows, dim, s["projection"], seed=0), s.get("norm"))
    return projected, {**info, "projection": s["projection"] if info["source_dim"] != dim
                       else "none (same width)"}


def run_arm(arm: str, seed: int, s: dict, task, rows: np.ndarray | None, folder: Path,
            tau: int) -> dict:
    """Train one (seed, arm) (resuming), then analyse it from its saved folder."""
    from llm_fourier.commands.finetune import task_numbers
    from llm_fourier.finetune import TrainConfig, train
    from llm_fourier.models import load_model
    from toy.adders import AdderConfig, build_adder, max_answer
    from toy.transplant import transplant_rows
    from toy.transplant_report import analyse_model

    done = folder / "analysis.json"
    if done.exists():
        return read_json(done)
    config = AdderConfig(max_number=max_answer(s["op"], s["max_operand"]), n_layer=s["layers"],
                         d_model=s["d_model"], n_head=s["heads"], dropout=s["dropout"])
    model, tok = build_adder(config, seed)
    numbers = task_numbers(tok, task)
    frozen = None
    if arm == "transplant":
        ids = transplant_rows(model, numbers, rows)
        frozen = None if s["trainable"] else ids
    tcfg = TrainConfig(epochs=s["epochs"], lr=s["lr"], batch_size=s["batch_size"],
                       grad_accum=s["grad_accum"], weight_decay=s["weight_decay"],
                       warmup_steps=s["warmup_steps"], mixed_precision=s["mixed_precision"],
                       seed=seed, save_every=200, eval_every_epochs=s["eval_every"])
    state = train(model, tok, task, numbers, folder, tcfg, resume=True, frozen_token_ids=frozen)
    lm = load_model(folder / "model", dtype="float32")  # as probe / ablate would load it
    analysis = analyse_model(lm, task.test, numbers, state["test"], tau, batch_size=64)
    analysis.update(arm=arm, seed=seed, steps=state["step"], history=state["history"],
                    model_dir=str(folder / "model"))
    write_json(done, analysis)
    return analysis


def run(args: argparse.Namespace) -> dict:
    from llm_fourier.commands.finetune import task_numbers
    from llm_fourier.tasks import make_task
    from toy.adders import adder_tokenizer, max_answer
    from toy.transplant_report import arm_summary, embedding_spectrum, summary_row, write_report

    out = Path(args.out)
    s = resolve_settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    task = make_task(s["op"], s["max_operand"], ordered=s["ordered"], seed=s["task_seed"])
    numbers = task_numbers(adder_tokenizer(max_answer(s["op"], s["max_operand"])), task)
    tau = s.get("tau") or max(1, int(50 * (numbers.p - 1) / 520))  # the paper's 50 of 260
    s["tau"] = tau
    key = {k: s[k] for k in RUN_KEYS if k in s}
    saved = out / "settings.json"
    if saved.exists() and read_json(saved) != json.loads(json.dumps(key)):
        raise UserError(f"{out} holds a transplant run with other settings; choose another "
                        "--out (or rerun with the same options to resume it).")
    write_json(saved, key)

    rows, source = build_source(s, numbers, s["d_model"])
    source["spectrum"] = embedding_spectrum(rows, tau)
    analyses: dict[str, dict[int, dict]] = {arm: {} for arm in ARMS}
    for seed in args.seeds:
        for arm in ARMS:
            print(f"seed {seed}, arm {arm}: {out / f'seed{seed}' / arm}")
            analyses[arm][seed] = run_arm(arm, seed, s, task, rows, out / f"seed{seed}" / arm,
                                          tau)
    first = analyses[ARMS[0]][args.seeds[0]]
    full = sorted(n for n, r in first.get("filter_ranks", {}).items() if r >= first["d_model"])
    note = (f"the {', '.join(full)} filter(s) remove all {first['d_model']} dimensions (width "
            f"below the {numbers.p} numbers' band); those ablation rows are not informative: "
            "use a --d-model above p - 1." if full else None)
    title = f"{s['source']} ({'trainable' if s['trainable'] else 'frozen'})"
    files = write_report(out, analyses, source["spectrum"], title)
    results = {
        "settings": {**s, "seeds": args.seeds, "preset": args.preset}, "task": task.settings,
        "numbers": {"p": numbers.p}, "tau": tau,
        "source": {**source, "spectrum": {k: v for k, v in source["spectrum"].items()
                                          if k != "magnitude"}},
        "arms": {arm: {"summary": arm_summary(seeds),
                       "runs": [summary_row(arm, sd, a) for sd, a in sorted(seeds.items())]}
                 for arm, seeds in analyses.items()},
        "files": files, "ablation_note": note,
    }
    write_json(out / "results.json", results)
    print(format_table([r for arm in ARMS for r in results["arms"][arm]["runs"]],
                       ["arm", "seed", "test_accuracy", "off_by_1", "off_by_10s",
                        "embedding_periods", "attn_periods", "mlp_periods"]))
    for arm in ARMS:
        sm = results["arms"][arm]["summary"]
        print(f"{arm}: test accuracy {sm['accuracy_mean']:.3f} +- {sm['accuracy_std']:.3f} "
              f"over seeds {sm['seeds']}")
    if note:
        print(f"note: {note}")
    print(f"results: {out / 'results.json'} (plots: accuracy.png, error_histograms.png, "
          "embedding_spectra.png, heatmap_*.png)")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default=None,
                        help="synthetic (default on cpu), synthetic:low, synthetic:random, a hub "
                             "id or folder (gpt2 on the paper preset), or a run folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="cpu", choices=tuple(PRESETS),
                        help="cpu: minutes on 2 cores; paper: GPT-2 small, operands <= 260")
    parser.add_argument("--trainable", action="store_true",
                        help="let the transplanted rows train (default: frozen, as the paper)")
    parser.add_argument("--projection", default="pca", choices=PROJECTIONS,
                        help="width change for HF sources: PCA (default) or a fixed random "
                             "orthonormal map")
    parser.add_argument("--norm", type=float, default=None,
                        help="rescale transplanted rows to this mean row norm (default: source "
                             "scale; synthetic rows: 1)")
    parser.add_argument("--periods", type=float, nargs="+", default=None,
                        help="periods of the synthetic source (default: 2 2.5 5 10)")
    parser.add_argument("--n-low", type=int, default=4,
                        help="smooth components of the synthetic source (default: 4)")
    parser.add_argument("--op", default="+", choices=("+", "*"))
    parser.add_argument("--task-seed", type=int, default=0)
    parser.add_argument("--tau", type=int, default=None,
                        help="low/high threshold on k (default: 50 scaled to p)")
    for name, kind in (("max-operand", int), ("layers", int), ("d-model", int), ("heads", int),
                       ("dropout", float), ("epochs", int), ("lr", float),
                       ("batch-size", int), ("weight-decay", float), ("warmup-steps", int),
                       ("eval-every", int)):
        parser.add_argument(f"--{name}", type=kind, default=None, help="(default: preset's)")
    parser.add_argument("--ordered", action=argparse.BooleanOptionalAction, default=None,
                        help="ordered pairs (default: preset's; cpu yes, paper a <= b)")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--threads", type=int, default=None if torch.cuda.is_available() else 1,
                        help="CPU threads (default 1 without a GPU: tiny models run fastest "
                             "on one thread, and far faster on a busy machine)")


COMMAND = Command("transplant", "from-scratch GPT-2 adders with and without transplanted "
                  "number embeddings, over seeds", add_arguments, run)

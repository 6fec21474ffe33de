"""``llm-fourier probe``: per-layer logit-lens accuracy and Fourier spectra on addition prompts.

Loads a model, builds the task split, captures every layer's attention, MLP and residual
(block) outputs at the last token, reads them through ``W_U[numbers]`` and writes
``results.json`` (per-layer accuracy and, for attention, MLP and the residual stream,
per-layer outliers with periods and low/high energy; the same for the spectrum averaged
over layers), ``accuracy.csv``, ``spectra.csv`` and PNGs: component x layer heatmaps,
layer-averaged spectra with their outliers, lens accuracy per layer. Interrupted runs resume
from ``probe_state.pt`` in the output folder when run again with the same settings.

The model/task options and ``prepare`` are shared with ``llm-fourier ablate``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from llm_fourier.commands import Command
from llm_fourier.distributed import broadcast_object, init_distributed
from llm_fourier.errors import UserError
from llm_fourier.lens import LENS_ROLES, layer_summary, run_lens, spectra_matrix
from llm_fourier.models import load_model
from llm_fourier.numbers import NumberTokens, find_number_tokens, require_numbers
from llm_fourier.report.files import atomic_torch_save, write_csv, write_json
from llm_fourier.report.plots import component_layer_heatmap, layer_accuracy_plot, spectrum_plot
from llm_fourier.report.tables import format_table
from llm_fourier.tasks import make_task
from probes import Spectrum

SPLITS = ("train", "val", "test")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="hub id or local folder of a causal LM")
    parser.add_argument("--tokenizer", default=None, help="tokenizer id or folder "
                        "(default: the model's)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--device-map", default=None,
                        help="accelerate device map (default: auto on GPU, else CPU)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the model repository's own code (off by default)")
    parser.add_argument("--skip-roles-check", action="store_true",
                        help="experts only: skip the check at load that the hooked attention "
                             "and MLP outputs add up to the residual stream (off by default)")


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--op", default="+", choices=("+", "*"), help="operation")
    parser.add_argument("--max-operand", type=int, default=260,
                        help="operands 0..N (default: %(default)s, answers 0..520)")
    parser.add_argument("--ordered", action="store_true", help="ordered pairs (a, b), not a<=b")
    parser.add_argument("--shots", type=int, default=0, help="in-context examples per prompt")
    parser.add_argument("--split", default="test", choices=SPLITS, help="split to run on")
    parser.add_argument("--limit", type=int, default=None, help="use the first N examples")
    parser.add_argument("--seed", type=int, default=0, help="task shuffle and split seed")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--basis", default="paper", choices=("paper", "dft"),
                        help="Fourier basis (default: the paper's, period (p-1)/k)")
    parser.add_argument("--tau", type=int, default=50,
                        help="low/high threshold on the component index k (default: 50)")


def prepare(args: argparse.Namespace, check_p: Callable[[int], None] | None = None):
    """(LoadedModel, examples of the chosen split, NumberTokens over the answer range).

    The task is built first, so bad settings fail before the model loads; ``check_p(p)``
    may refuse options that depend on the number range p.
    """
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}.")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}.")
    task = make_task(args.op, args.max_operand, ordered=args.ordered, seed=args.seed,
                     shots=args.shots)
    examples = getattr(task, args.split)[:args.limit]
    if not examples:
        raise UserError(f"the {args.split} split is empty; raise --max-operand or pick "
                        "another --split.")
    max_answer = task.max_answer
    if check_p is not None:
        check_p(max_answer + 1)
    lm = load_model(args.model, args.tokenizer, device_map=args.device_map, dtype=args.dtype,
                    trust_remote_code=args.trust_remote_code,
                    verify=not args.skip_roles_check)
    found = find_number_tokens(lm.tokenizer, max_number=max_answer)
    require_numbers(found, max_answer, lm.name)
    # the number space is the answer range 0..max_answer, as in the paper (p = 521)
    numbers = NumberTokens(found.token_ids[:max_answer + 1], found.leading_space)
    return lm, examples, numbers


def settings_of(args: argparse.Namespace) -> dict:
    return {k: v for k, v in sorted(vars(args).items())
            if not k.startswith("_") and k not in ("out",)}


def _load_state(path: Path, key: str) -> dict | None:
    if not path.exists():
        return None
    state = torch.load(path, weights_only=True)
    if state.get("settings") != key:
        print(f"{path} holds a run with other settings; starting afresh.")
        return None
    print(f"resuming from {path} ({state['lens']['batches_done']} batches done)")
    return state["lens"]


def run(args: argparse.Namespace) -> dict:
    """Under ``accelerate launch`` / ``torchrun`` the ranks share the prompts; rank 0 writes."""
    out = Path(args.out)
    main = init_distributed().is_main
    settings = settings_of(args)
    lm, examples, numbers = prepare(args)
    state_path = out / "probe_state.pt"
    key = json.dumps(settings, sort_keys=True, default=str)

    def save(done: int, state: dict) -> None:
        if main:
            atomic_torch_save({"settings": key, "lens": state}, state_path)

    state = broadcast_object(_load_state(state_path, key) if main else None)
    accs = run_lens(lm, examples, numbers, final_norm=args.final_norm, basis_kind=args.basis,
                    batch_size=args.batch_size, state=state, on_batch=save)

    results = {"model": lm.name, "settings": settings, "n_examples": len(examples),
               "numbers": {"p": numbers.p, "leading_space": numbers.leading_space},
               "n_layers": lm.n_layers, "accuracy": {}, "layers": {}, "mean_over_layers": {}}
    acc_rows, spec_rows = [], []
    for role in LENS_ROLES:
        spectra = accs[role].spectra()
        results["accuracy"][role] = accs[role].accuracy()
        results["layers"][role] = layer_summary(spectra, args.tau, top=args.top)
        acc_rows += [{"role": role, **r} for r in results["accuracy"][role]]
        spec_rows += [{"role": role, "layer": i, **rec}
                      for i, s in enumerate(spectra) for rec in s.records()]
        # one line per role: the spectrum averaged over layers, with its outliers
        mean = Spectrum(spectra[0].basis, np.mean([s.magnitude for s in spectra], axis=0))
        results["mean_over_layers"][role] = {
            "outliers": [o.as_dict() for o in mean.outliers(top=args.top)],
            **mean.low_high(args.tau)}
        if main:
            component_layer_heatmap(spectra_matrix(spectra), out / f"heatmap_{role}.png",
                                    f"{role} number logits: mean |Fourier component|",
                                    spectra[0].basis.periods)
            spectrum_plot(mean.nonconstant, out / f"spectrum_{role}.png",
                          results["mean_over_layers"][role]["outliers"],
                          f"{role} number logits, mean over layers", "mean magnitude")
    if not main:  # the other ranks helped with the prompts; rank 0 writes and prints
        return results
    layer_accuracy_plot(results["accuracy"], out / "lens_accuracy.png",
                        f"logit lens onto numbers 0..{numbers.p - 1}")
    write_csv(out / "accuracy.csv", acc_rows)
    write_csv(out / "spectra.csv", spec_rows)
    results["files"] = sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".csv"))
    write_json(out / "results.json", results)
    state_path.unlink(missing_ok=True)

    def periods_of(role: str, i: int) -> str:
        return " ".join(f"{o['period']:g}" for o in results["layers"][role][i]["outliers"][:4])

    table = [{"layer": i,
              "resid exact": results["accuracy"]["block"][i]["exact"],
              "resid within_10": results["accuracy"]["block"][i]["within_10"],
              "attn exact": results["accuracy"]["attn"][i]["exact"],
              "mlp exact": results["accuracy"]["mlp"][i]["exact"],
              "attn periods": periods_of("attn", i), "mlp periods": periods_of("mlp", i)}
             for i in range(lm.n_layers)]
    print(format_table(table))
    print(f"results: {out / 'results.json'} (plots in {out}: heatmap_attn.png, "
          "heatmap_mlp.png, spectrum_attn.png, spectrum_mlp.png, lens_accuracy.png)")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_task_arguments(parser)
    parser.add_argument("--final-norm", action="store_true",
                        help="apply the model's final norm before W_U (standard logit lens; "
                             "default off: logits = W_U[numbers] x, as the paper's filters)")
    parser.add_argument("--top", type=int, default=10,
                        help="keep at most this many outliers per layer (default: 10)")


COMMAND = Command("probe", "per-layer logit lens and Fourier spectra of attention and MLP "
                  "outputs on addition prompts", add_arguments, run)

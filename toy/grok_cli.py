"""``llm-fourier toy train`` and ``llm-fourier toy analyze``: grokking runs and their analysis."""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_fourier.commands import Command
from llm_fourier.errors import UserError
from llm_fourier.report.files import write_csv, write_json
from llm_fourier.report.tables import format_table
from toy.analysis import KEY_SOURCES, SUMMARY_KEYS, analyze
from toy.data import ALL_OPS, make_task, nanda_split, split_indices
from toy.importers import FORMATS, load_checkpoint
from toy.models import MODEL_KINDS, ModelConfig
from toy.plots import (
    phase_epochs,
    plot_ablation,
    plot_embedding_spectrum,
    plot_neuron_histogram,
    plot_training,
)
from toy.quantize import QUANT_MODES
from toy.train import TrainConfig, train

_MEASURE_KEYS = ("key_frequencies", "restricted_loss", "excluded_loss", "gini_embed",
                 "gini_neuron_logit", "ffd", "fcr", "sum_squared_weights")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("no CUDA device is available; use --device cpu.")
    return name


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("task")
    g.add_argument("--op", default=TrainConfig.op, choices=ALL_OPS,
                   help="operation (default: %(default)s)")
    g.add_argument("--p", type=int, default=TrainConfig.p,
                   help="modulus (default: %(default)s)")
    g.add_argument("--inputs", type=int, default=TrainConfig.n_inputs,
                   help="number of inputs for --op sum")
    g.add_argument("--train-frac", type=float, default=TrainConfig.train_frac,
                   help="train fraction (default: %(default)s)")
    g.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="seeds trained together in one batched run (default: 0)")
    g.add_argument("--data-seed", type=int, default=TrainConfig.data_seed,
                   help="one split for every seed (default: each seed splits with itself)")
    m = parser.add_argument_group("model")
    m.add_argument("--model", default=ModelConfig.kind, choices=MODEL_KINDS)
    m.add_argument("--quant", default=ModelConfig.quant, choices=QUANT_MODES,
                   help="transformer weights: binary or ternary with a straight-through "
                        "estimator (default: none)")
    m.add_argument("--d-model", type=int, default=ModelConfig.d_model)
    m.add_argument("--heads", type=int, default=ModelConfig.n_heads)
    m.add_argument("--d-head", type=int, default=ModelConfig.d_head)
    m.add_argument("--d-mlp", type=int, default=ModelConfig.d_mlp)
    m.add_argument("--width", type=int, default=ModelConfig.width,
                   help="hidden width of mlp / rnn")
    m.add_argument("--power", type=int, default=ModelConfig.power,
                   help="mlp activation x^power (default: number of inputs)")
    m.add_argument("--act", default=ModelConfig.act, choices=("relu", "tanh"),
                   help="rnn activation")
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    t.add_argument("--lr", type=float, default=TrainConfig.lr)
    t.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    t.add_argument("--beta1", type=float, default=TrainConfig.beta1)
    t.add_argument("--beta2", type=float, default=TrainConfig.beta2)
    t.add_argument("--warmup", type=int, default=TrainConfig.warmup)
    t.add_argument("--log-every", type=int, default=TrainConfig.log_every,
                   help="epochs between loss logs")
    t.add_argument("--measure-every", type=int, default=TrainConfig.measure_every,
                   help="epochs between progress measures (0: end only)")
    t.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every)
    t.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    t.add_argument("--stop-test-loss", type=float, default=TrainConfig.stop_test_loss,
                   help="stop a seed once its test loss is below this")
    t.add_argument("--stop-accuracy", type=float, default=TrainConfig.stop_accuracy,
                   help="stop a seed once its train and test accuracy reach this")
    t.add_argument("--key-share", type=float, default=TrainConfig.key_share,
                   help="key-frequency energy share (default: 1.5 / number of frequencies)")
    t.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")


def configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    for name in ("epochs", "log_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1.")
    mc = ModelConfig(kind=args.model, p=args.p, n_inputs=args.inputs, d_model=args.d_model,
                     n_heads=args.heads, d_head=args.d_head, d_mlp=args.d_mlp,
                     width=args.width, power=args.power, act=args.act, quant=args.quant)
    tc = TrainConfig(op=args.op, p=args.p, n_inputs=args.inputs, train_frac=args.train_frac,
                     data_seed=args.data_seed, epochs=args.epochs, lr=args.lr,
                     weight_decay=args.weight_decay, beta1=args.beta1, beta2=args.beta2,
                     warmup=args.warmup, log_every=args.log_every,
                     measure_every=args.measure_every, checkpoint_every=args.checkpoint_every,
                     stop_test_loss=args.stop_test_loss, stop_accuracy=args.stop_accuracy,
                     key_share=args.key_share)
    return mc, tc


def run_train(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    mc, tc = configs_from_args(args)
    res = train(mc, tc, args.seeds, out=out, resume=args.resume, device=_device(args.device))
    per_seed = []
    for i, seed in enumerate(res.model.seeds):
        rows = [r for r in res.history if r["seed"] == seed]
        final = rows[-1]
        per_seed.append({"seed": seed, "epoch": final["epoch"],
                         "stopped_at": res.stopped_at[i], **phase_epochs(rows),
                         **{k: final[k] for k in ("train_loss", "train_accuracy",
                                                  "test_loss", "test_accuracy")},
                         **{k: final.get(k) for k in _MEASURE_KEYS}})
    results = {"model_config": mc.to_dict(), "train_config": tc.to_dict(),
               "checkpoint": str(out / "checkpoint.pt"), "seeds": per_seed,
               "history": res.history}
    write_json(out / "results.json", results)
    write_csv(out / "history.csv", [{k: v for k, v in r.items() if k != "key_frequencies"}
                                    for r in res.history])
    plot_training(res.history, out / "loss_curves.png")
    print(format_table(per_seed, ["seed", "epoch", "train_loss", "test_loss", "test_accuracy",
                                  "grokked_epoch", "key_frequencies"]))
    print(f"results: {out / 'results.json'}")
    return results


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint.pt of 'toy train', or a Nanda et al. / "
                                           "TransformerLens checkpoint (.pt/.pth/.safetensors)")
    parser.add_argument("--format", default="auto", choices=FORMATS)
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow unpickling Python objects (only for files you trust)")
    parser.add_argument("--seed", type=int, default=None,
                        help="which seed of a multi-seed checkpoint (default: the first)")
    parser.add_argument("--op", default=None, choices=ALL_OPS,
                        help="operation of an imported model (default: a+b)")
    parser.add_argument("--train-frac", type=float, default=None,
                        help="train fraction of an imported model (default: its config, "
                             "else 0.3)")
    parser.add_argument("--data-seed", type=int, default=None,
                        help="split seed of an imported model (default: its config, else 0)")
    parser.add_argument("--split", default="auto", choices=("auto", "ours", "nanda"),
                        help="how the train split was drawn: ours (torch.randperm) or nanda "
                             "(their random.shuffle); auto: by checkpoint format")
    parser.add_argument("--key-source", default="embed", choices=KEY_SOURCES,
                        help="where key frequencies come from (default: embed)")
    parser.add_argument("--key-share", type=float, default=None)


def run_analyze(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    loaded = load_checkpoint(args.checkpoint, args.format, args.trust_pickle)
    model, info = loaded.model, dict(loaded.task)
    seed = model.seeds[0] if args.seed is None else args.seed
    if seed not in model.seeds:
        raise UserError(f"seed {seed} is not in the checkpoint; its seeds are {model.seeds}.")
    index = model.seeds.index(seed)
    info["op"] = args.op or info["op"]
    notes = []
    for key, arg, default in (("train_frac", args.train_frac, 0.3),
                              ("data_seed", args.data_seed, 0)):
        if arg is not None:
            info[key] = arg
        elif info[key] is None and loaded.format != "ours":
            info[key] = default
            notes.append(f"{key} unknown, assumed {info[key]}")
    split = info["split"] if args.split == "auto" else args.split
    task = make_task(info["op"], info["p"], info["n_inputs"])
    split_seed = seed if info["data_seed"] is None else info["data_seed"]
    if split == "nanda":
        if not task.full_grid or task.n_inputs != 2:
            raise UserError("the nanda split exists for two-input full-grid ops only.")
        train_idx, test_idx = nanda_split(task.p, info["train_frac"], split_seed)
    else:
        train_idx, test_idx = split_indices(len(task), info["train_frac"], split_seed)
    if key_needs_linear(args.key_source, task):
        raise UserError("--key-source logits needs a linear op (a+b, a-b, sum).")
    a = analyze(model, task, train_idx, test_idx, index, args.key_source, args.key_share)
    neurons = [{"neuron": i, "frequency": int(f), "explained_share": e, "max_normalized_power":
                float(s), "neuron_logit_frequency": int(d)}
               for i, (f, e, s, d) in enumerate(zip(
                   a.pop("neuron_frequency"), a.pop("neuron_explained_share", [None] *
                                                    len(a["max_normalized_power"])),
                   a.pop("max_normalized_power"), a.pop("neuron_logit_frequency")))]
    results = {"checkpoint": str(args.checkpoint), "format": loaded.format, "split": split,
               "train_frac": info["train_frac"], "data_seed": split_seed, "notes": notes, **a}
    write_json(out / "results.json", results)
    write_csv(out / "neurons.csv", neurons)
    write_csv(out / "embedding_spectrum.csv", a["embed_spectrum"])
    plot_embedding_spectrum(a, out / "embedding_spectrum.png")
    plot_neuron_histogram(a, out / "neuron_frequencies.png")
    plot_ablation(a, out / "frequency_ablation.png")
    if loaded.history:
        plot_training([r for r in loaded.history if r["seed"] == seed], out / "loss_curves.png")
    for note in notes:
        print(f"note: {note}")
    print(format_table([{"measure": k, "value": a[k] if not isinstance(a[k], list)
                         else str(a[k])} for k in SUMMARY_KEYS]))
    print(f"results: {out / 'results.json'}")
    return results


def key_needs_linear(source: str, task) -> bool:
    return source == "logits" and (task.linear_coeffs is None or not task.full_grid)


COMMANDS = [
    Command("toy train", "train grokking models of modular arithmetic (several seeds at once)",
            add_train_arguments, run_train),
    Command("toy analyze", "Fourier analysis and progress measures of a grokking checkpoint",
            add_analyze_arguments, run_analyze),
]

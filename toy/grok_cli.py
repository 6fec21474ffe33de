"""``llm-fourier toy train`` and ``llm-fourier toy analyze``: grokking runs and their analysis.

``toy train`` keeps ``checkpoint.safetensors`` in its run folder: running the same command
again continues a killed run bit for bit, and a finished run continues when only
``--epochs`` grew. Both commands render their own section of a batch report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from llm_fourier.commands.base import Command, JobView
from llm_fourier.commands.options import OutputOptions
from llm_fourier.commands.settings import option, seed_option
from llm_fourier.errors import UserError
from llm_fourier.output.html import flat_record, html_table, percent
from llm_fourier.output.rundir import RunDir
from llm_fourier.output.tables import format_table
from toy.analysis import DEFAULT_KEY_SOURCE, KEY_SOURCES, SUMMARY_KEYS, analyze
from toy.checkpoint import CHECKPOINT_NAME
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
from toy.progress import KEY_LOSS_ATOL, KEY_LOSS_RATIO
from toy.quantize import QUANT_MODES
from toy.train import GrokConfig, train

_MEASURE_KEYS = ("key_frequencies", "restricted_loss", "excluded_loss", "gini_embed",
                 "gini_neuron_logit", "ffd", "fcr", "sum_squared_weights")
TOY_MEASURES = ("test_accuracy", "test_loss", "restricted_loss", "excluded_loss", "gini_embed",
                "gini_neuron_logit", "ffd", "fcr", "fraction_neurons_explained",
                "sum_squared_weights", "key_frequencies")
_G, _M = GrokConfig, ModelConfig
_INTRO = ("Models of modular arithmetic trained from scratch: train/test loss curves with the "
          "progress measures (restricted and excluded loss, Gini of Fourier norms, weight norm) "
          "that show the Fourier circuit forming before the test loss drops.")


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("no CUDA device is available; use --device cpu.")
    return name


@dataclass(kw_only=True)
class GrokTrainSettings(OutputOptions):
    command = "toy train"
    op: str = option(_G.op, choices=ALL_OPS, help="operation")
    p: int = option(_G.p, min=2, help="modulus")
    inputs: int = option(_G.n_inputs, min=2, help="number of inputs for --op sum")
    train_frac: float = option(_G.train_frac, above=0, max=1, help="train fraction")
    seeds: list[int] = seed_option([0], help="seeds trained together in one batched run")
    data_seed: int | None = seed_option(_G.data_seed, help="one split for every seed (default: "
                                   "each seed splits with itself)")
    model: str = option(_M.kind, choices=MODEL_KINDS, help="model kind")
    quant: str = option(_M.quant, choices=QUANT_MODES, help="transformer weights: binary or "
                        "ternary with a straight-through estimator")
    d_model: int = option(_M.d_model, min=1, help="transformer width")
    heads: int = option(_M.n_heads, min=1, help="attention heads")
    d_head: int = option(_M.d_head, min=1, help="width per head")
    d_mlp: int = option(_M.d_mlp, min=1, help="MLP width of the transformer")
    width: int = option(_M.width, min=1, help="hidden width of mlp / rnn")
    power: int = option(_M.power, min=0, help="mlp activation x^power (0: number of inputs)")
    act: str = option(_M.act, choices=("relu", "tanh"), help="rnn activation")
    epochs: int = option(_G.epochs, min=1, help="full-batch epochs")
    lr: float = option(_G.lr, above=0, help="AdamW learning rate")
    weight_decay: float = option(_G.weight_decay, min=0, help="AdamW weight decay")
    beta1: float = option(_G.beta1, min=0, max=0.9999, help="AdamW beta1")
    beta2: float = option(_G.beta2, min=0, max=0.9999, help="AdamW beta2")
    warmup: int = option(_G.warmup, min=0, help="linear warmup epochs")
    log_every: int = option(_G.log_every, min=1, help="epochs between loss logs")
    measure_every: int = option(_G.measure_every, min=0, help="epochs between progress "
                                "measures (0: end only)")
    checkpoint_every: int = option(_G.checkpoint_every, min=0, identity=False,
                                   help="epochs between checkpoints (0: end only)")
    stop_test_loss: float | None = option(_G.stop_test_loss, above=0, help="stop a seed once "
                                          "its test loss is below this")
    stop_accuracy: float | None = option(_G.stop_accuracy, above=0, max=1, help="stop a seed "
                                         "once its train and test accuracy reach this")
    key_share: float | None = option(_G.key_share, above=0, max=1, help="key-frequency energy "
                                     "share (default: 1.5 / number of frequencies)")
    device: str = option("cpu", identity=False, help="cpu, cuda or auto")

    def validate(self) -> None:
        if len(set(self.seeds)) != len(self.seeds):
            raise self.fail("seeds", "must be distinct; give each seed once")

    def configs(self) -> tuple[ModelConfig, GrokConfig]:
        mc = ModelConfig(kind=self.model, p=self.p, n_inputs=self.inputs, d_model=self.d_model,
                         n_heads=self.heads, d_head=self.d_head, d_mlp=self.d_mlp,
                         width=self.width, power=self.power, act=self.act, quant=self.quant)
        tc = GrokConfig(op=self.op, p=self.p, n_inputs=self.inputs, train_frac=self.train_frac,
                        data_seed=self.data_seed, epochs=self.epochs, lr=self.lr,
                        weight_decay=self.weight_decay, beta1=self.beta1, beta2=self.beta2,
                        warmup=self.warmup, log_every=self.log_every,
                        measure_every=self.measure_every,
                        checkpoint_every=self.checkpoint_every,
                        stop_test_loss=self.stop_test_loss, stop_accuracy=self.stop_accuracy,
                        key_share=self.key_share)
        return mc, tc


class GrokTrainCommand(Command):
    name = "toy train"
    help = "train grokking models of modular arithmetic (several seeds at once)"
    Settings = GrokTrainSettings
    extendable = ("epochs",)
    section, heading, order, intro = "toy", "Toy models and grokking", 70, _INTRO
    captions = {"loss_curves": "Train and test loss over training (memorisation and grokking "
                               "marked), with the progress measures: restricted and excluded "
                               "loss, Gini coefficients of the Fourier norms, and the sum of "
                               "squared weights."}

    def run(self, s: GrokTrainSettings, run: RunDir) -> dict:
        mc, tc = s.configs()
        device = _device(s.device)
        res = train(mc, tc, s.seeds, out=run.workspace(), resume=run.resumed, device=device)
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
                   "checkpoint": str(run.path / CHECKPOINT_NAME) if run.path else None,
                   "seeds": per_seed, "history": res.history}
        run.write_csv("history.csv", [{k: v for k, v in r.items() if k != "key_frequencies"}
                                      for r in res.history])
        if run.writes:
            plot_training(res.history, run.file("loss_curves.png"))
        run.finish(results)
        print(format_table(per_seed, ["seed", "epoch", "train_loss", "test_loss",
                                      "test_accuracy", "grokked_epoch", "key_frequencies"]))
        if run.writes:
            print(f"results: {run.file('results.json')}")
        return results

    def job_html(self, job: JobView) -> str:
        return html_table([flat_record(r) for r in job.results.get("seeds", [])],
                          caption="Per seed at the end of training: losses, accuracies, epochs "
                          "of memorisation and grokking, and progress measures.")

    def section_html(self, jobs: list[JobView], out: Path) -> str:
        rows = [{"job": job.id, **{k: flat_record(r).get(k) for k in (
            "seed", "epoch", "memorized_epoch", "grokked_epoch", "train_accuracy",
            "test_accuracy", "test_loss", "key_frequencies")}}
            for job in jobs for r in job.results.get("seeds", [])]
        return html_table(rows, caption="Grokking runs: epochs at which the model memorised the "
                          "training set and generalised (grokked), and the final key "
                          "frequencies.")

    def findings(self, job: JobView) -> list[str]:
        lines = []
        for r in job.results.get("seeds", []):
            grok = r.get("grokked_epoch")
            lines.append(f"{job.id} seed {r.get('seed')}: memorised at epoch "
                         f"{r.get('memorized_epoch')}, "
                         + (f"grokked at epoch {grok}" if grok is not None else "did not grok")
                         + f" (test accuracy {percent(r.get('test_accuracy'))}, key frequencies "
                         f"{flat_record(r).get('key_frequencies') or 'none'}).")
        return lines


@dataclass(kw_only=True)
class GrokAnalyzeSettings(OutputOptions):
    command = "toy analyze"
    checkpoint: str = option(positional=True, help="checkpoint.safetensors of 'toy train', or "
                             "a Nanda et al. / TransformerLens checkpoint (.pt/.pth/.safetensors)")
    format: str = option("auto", choices=FORMATS, help="checkpoint format")
    trust_pickle: bool = option(False, help="allow unpickling Python objects: a crafted file "
                                "can run any code, so only for files you trust")
    seed: int | None = seed_option(None, help="which seed of a multi-seed checkpoint (default: the "
                              "first)")
    op: str | None = option(None, choices=ALL_OPS, help="operation of an imported model "
                            "(default: a+b)")
    train_frac: float | None = option(None, above=0, max=1, help="train fraction of an "
                                      "imported model (default: its config, else 0.3)")
    data_seed: int | None = seed_option(None, help="split seed of an imported model (default: its "
                                   "config, else 0)")
    split: str = option("auto", choices=("auto", "ours", "nanda"), help="how the train split "
                        "was drawn: ours (torch.randperm) or nanda (their random.shuffle); "
                        "auto: by checkpoint format")
    key_source: str = option(DEFAULT_KEY_SOURCE, choices=KEY_SOURCES, help="rule for the key "
                             "frequencies: loss (the smallest set whose restricted loss stays "
                             "near the model's), or the embedding / neuron-logit / neuron / "
                             "logit energy shares; every rule is kept in results.json")
    key_share: float | None = option(None, above=0, max=1, help="energy share of the share "
                                     "rules (default: 1.5 / number of frequencies)")
    key_loss_ratio: float = option(KEY_LOSS_RATIO, min=1, help="loss rule: restricted loss at "
                                   "most this times the all-frequency restricted loss")
    key_loss_atol: float = option(KEY_LOSS_ATOL, min=0, help="loss rule: plus this many nats")


class GrokAnalyzeCommand(Command):
    name = "toy analyze"
    help = "Fourier analysis and progress measures of a grokking checkpoint"
    Settings = GrokAnalyzeSettings
    section, heading, order, intro = "toy", "Toy models and grokking", 71, _INTRO
    captions = {"embedding_spectrum": "Fourier norms of the token embedding over the residues "
                                      "mod p; the key frequencies (red) carry the algorithm.",
                "neuron_frequencies": "MLP neurons by the Fourier frequency that explains them.",
                "frequency_ablation": "Accuracy as key frequencies are ablated.",
                "loss_curves": "Train and test loss over training of the analysed seed."}

    def run(self, s: GrokAnalyzeSettings, run: RunDir) -> dict:
        loaded = load_checkpoint(s.checkpoint, s.format, s.trust_pickle)
        model, info = loaded.model, dict(loaded.task)
        seed = model.seeds[0] if s.seed is None else s.seed
        if seed not in model.seeds:
            raise UserError(f"seed {seed} is not in the checkpoint; its seeds are "
                            f"{model.seeds}.")
        info["op"] = s.op or info["op"]
        notes = []
        for key, arg, default in (("train_frac", s.train_frac, 0.3),
                                  ("data_seed", s.data_seed, 0)):
            if arg is not None:
                info[key] = arg
            elif info[key] is None and loaded.format != "ours":
                info[key] = default
                notes.append(f"{key} unknown, assumed {info[key]}")
        split = info["split"] if s.split == "auto" else s.split
        task = make_task(info["op"], info["p"], info["n_inputs"])
        split_seed = seed if info["data_seed"] is None else info["data_seed"]
        if split == "nanda":
            if not task.full_grid or task.n_inputs != 2:
                raise UserError("the nanda split exists for two-input full-grid ops only.")
            train_idx, test_idx = nanda_split(task.p, info["train_frac"], split_seed)
        else:
            train_idx, test_idx = split_indices(len(task), info["train_frac"], split_seed)
        if s.key_source == "logits" and (task.linear_coeffs is None or not task.full_grid):
            raise UserError("--key-source logits needs a linear op (a+b, a-b, sum).")
        a = analyze(model, task, train_idx, test_idx, model.seeds.index(seed), s.key_source,
                    s.key_share, key_loss_ratio=s.key_loss_ratio, key_loss_atol=s.key_loss_atol)
        neurons = [{"neuron": i, "frequency": int(f), "explained_share": e,
                    "max_normalized_power": float(m), "neuron_logit_frequency": int(d)}
                   for i, (f, e, m, d) in enumerate(zip(
                       a.pop("neuron_frequency"),
                       a.pop("neuron_explained_share", [None] * len(a["max_normalized_power"])),
                       a.pop("max_normalized_power"), a.pop("neuron_logit_frequency")))]
        results = {"checkpoint": str(s.checkpoint), "format": loaded.format, "split": split,
                   "train_frac": info["train_frac"], "data_seed": split_seed, "notes": notes,
                   **a}
        run.write_csv("neurons.csv", neurons)
        run.write_csv("embedding_spectrum.csv", a["embed_spectrum"])
        run.write_csv("key_frequencies.csv", a.get("key_frequency_table", []))
        if run.writes:
            plot_embedding_spectrum(a, run.file("embedding_spectrum.png"))
            plot_neuron_histogram(a, run.file("neuron_frequencies.png"))
            plot_ablation(a, run.file("frequency_ablation.png"))
            if loaded.history:
                plot_training([r for r in loaded.history if r["seed"] == seed],
                              run.file("loss_curves.png"))
        run.finish(results)
        for note in notes:
            print(f"note: {note}")
        print(format_table([{"measure": k, "value": a[k] if not isinstance(a[k], list)
                             else str(a[k])} for k in SUMMARY_KEYS]))
        if run.writes:
            print(f"results: {run.file('results.json')}")
        return results

    def job_html(self, job: JobView) -> str:
        res = job.results
        return html_table([{"measure": k, "value": " ".join(map(str, res[k]))
                            if isinstance(res[k], list) else res[k]}
                           for k in TOY_MEASURES if k in res],
                          caption="Fourier analysis of the checkpoint: key frequencies, "
                          "restricted / excluded loss, sparsity (Gini, FFD, FCR) and the "
                          "fraction of MLP neurons explained by one frequency.")


COMMANDS = [GrokTrainCommand(), GrokAnalyzeCommand()]

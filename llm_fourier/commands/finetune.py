"""``llm-fourier finetune``: fine-tune a causal LM on addition (or multiplication) prompts.

The loss is on the answer token only (see ``llm_fourier.finetune``). Writes ``model/`` (a
Hugging Face folder that ``probe`` / ``ablate`` take as ``--model``), ``results.json``
(settings, validation metrics per epoch, test metrics), ``history.csv``,
``predictions.csv``, ``history.png`` and ``test_errors.png``. Checkpoints in
``checkpoints/``; ``--resume`` continues a killed run exactly. Paper settings (Zhou et al.):
``--epochs 50 --batch-size 16 --lr 1e-5``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_fourier.commands import Command
from llm_fourier.errors import UserError
from llm_fourier.finetune import MIXED_PRECISION, TrainConfig, train
from llm_fourier.report.files import save_figure, write_csv, write_json
from llm_fourier.report.plots import error_histograms, pyplot
from llm_fourier.report.tables import format_table

HISTORY_COLUMNS = ("epoch", "step", "loss", "accuracy", "frac_errors_mult_10", "mod10_accuracy")


def task_numbers(tokenizer, task, name: str = ""):
    """The number tokens 0..max_answer of ``task`` (refusing tokenizers that split them)."""
    from llm_fourier.numbers import NumberTokens, find_number_tokens, require_numbers

    found = find_number_tokens(tokenizer, max_number=task.max_answer)
    require_numbers(found, task.max_answer, name)
    return NumberTokens(found.token_ids[:task.max_answer + 1], found.leading_space)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        max_grad_norm=args.max_grad_norm or None, mixed_precision=args.mixed_precision,
        seed=args.seed, eval_batch_size=args.eval_batch_size, save_every=args.save_every)


def history_plot(history: list[dict], path: Path, title: str = "") -> Path:
    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    epochs = [h["epoch"] for h in history]
    ax1.plot(epochs, [h.get("loss") for h in history], marker=".")
    ax1.set(xlabel="epoch", ylabel="validation loss (answer token)")
    ax2.plot(epochs, [h.get("accuracy") for h in history], marker=".")
    ax2.set(xlabel="epoch", ylabel="validation accuracy", ylim=(-0.02, 1.02))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def write_training_report(out: Path, state: dict, task, title: str) -> dict:
    """history.csv, predictions.csv and the two PNGs of a finished (or stopped) run."""
    history = state.get("history", [])
    write_csv(out / "history.csv", [{c: h.get(c) for c in HISTORY_COLUMNS} for h in history])
    files = ["history.csv"]
    if history:
        history_plot(history, out / "history.png", title)
        files.append("history.png")
    test = state.get("test") or {}
    if test:
        preds = test.get("predictions", [])
        write_csv(out / "predictions.csv", [{"a": e.a, "b": e.b, "answer": e.answer,
                                             "prediction": p}
                                            for e, p in zip(task.test, preds)])
        error_histograms({"test": test["error_histogram"]}, out / "test_errors.png",
                         "signed errors on the test split (prediction - answer)")
        files += ["predictions.csv", "test_errors.png"]
    return {"history": history, "test": {k: v for k, v in test.items() if k != "predictions"},
            "files": files}


def run(args: argparse.Namespace) -> dict:
    from llm_fourier.models import load_model
    from llm_fourier.tasks import make_task

    out = Path(args.out)
    config = config_from_args(args)
    config.validate()
    # weights in float32 on the CPU; accelerate moves them and runs mixed precision
    lm = load_model(args.model, args.tokenizer, device_map={"": "cpu"}, dtype=args.dtype,
                    trust_remote_code=args.trust_remote_code, verify=False)  # hooks no roles
    task = make_task(args.op, args.max_operand, ordered=args.ordered, seed=args.task_seed,
                     shots=args.shots, limit=args.limit)
    numbers = task_numbers(lm.tokenizer, task, lm.name)
    state = train(lm.model, lm.tokenizer, task, numbers, out, config, resume=args.resume,
                  stop_after_steps=args.stop_after)
    settings = {k: v for k, v in sorted(vars(args).items()) if not k.startswith("_")}
    report = write_training_report(out, state, task, f"fine-tuning {lm.name}")
    results = {"model": lm.name, "settings": settings, "task": task.settings,
               "finished": state["finished"], "steps": state["step"],
               "model_dir": state.get("model_dir"), **report}
    write_json(out / "results.json", results)
    print(format_table(report["history"], list(HISTORY_COLUMNS)))
    if state["finished"]:
        test = report["test"]
        print(f"test accuracy {test.get('accuracy', float('nan')):.4f}; model: "
              f"{state['model_dir']} (pass it to probe / ablate as --model)")
    else:
        print(f"stopped after {state['step']} steps; rerun with --resume to continue")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="hub id or local folder of a causal LM")
    parser.add_argument("--tokenizer", default=None, help="tokenizer id or folder "
                        "(default: the model's)")
    parser.add_argument("--dtype", default="float32",
                        help="dtype of the trained weights (default: float32; use "
                             "--mixed-precision for bf16/fp16 compute)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the model repository's own code (off by default)")
    parser.add_argument("--op", default="+", choices=("+", "*"))
    parser.add_argument("--max-operand", type=int, default=260,
                        help="operands 0..N (default: %(default)s, answers 0..520)")
    parser.add_argument("--ordered", action="store_true", help="ordered pairs (a, b), not a<=b")
    parser.add_argument("--shots", type=int, default=0, help="in-context examples per prompt")
    parser.add_argument("--limit", type=int, default=None, help="use the first N pairs")
    parser.add_argument("--task-seed", type=int, default=0, help="task shuffle / split seed")
    parser.add_argument("--epochs", type=int, default=3, help="(paper: 50)")
    parser.add_argument("--lr", type=float, default=1e-5, help="peak learning rate, linear "
                        "decay to 0 (default: %(default)s, the paper's)")
    parser.add_argument("--batch-size", type=int, default=16, help="per device (paper: 16)")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="0: no clipping")
    parser.add_argument("--mixed-precision", default="no", choices=MIXED_PRECISION)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--save-every", type=int, default=200,
                        help="checkpoint every N optimizer steps (and every epoch); 0: epochs")
    parser.add_argument("--seed", type=int, default=0, help="training seed (data order, dropout)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                        help="stop after this many optimizer steps (checkpoint kept; continue "
                             "with --resume)")


def _check(args: argparse.Namespace) -> None:
    if args.stop_after is not None and args.stop_after < 1:
        raise UserError("--stop-after must be at least 1 step.")


def _run(args: argparse.Namespace) -> dict:
    _check(args)
    return run(args)


COMMAND = Command("finetune", "fine-tune a causal LM on addition prompts (loss on the answer "
                  "token; accelerate; checkpoints and --resume)", add_arguments, _run)

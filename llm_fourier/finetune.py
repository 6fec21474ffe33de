"""Fine-tune a Hugging Face causal LM on an arithmetic split, loss on the answer token only.

The answer of every prompt is one number token, so the loss is the cross-entropy of the
next-token logits at the last prompt position (left padding) against that token. AdamW with
linear decay to 0 (optional warmup), epochs, batch size, gradient accumulation, gradient
clipping, mixed precision and multi-GPU (data parallel) through ``accelerate.Accelerator``.
Evaluation on the validation split after every epoch, on the test split at the end.

Checkpoints (``OUT/checkpoints/step-N/``): weights as safetensors, optimizer, scheduler,
grad scaler and RNG states, epoch / step counters. A checkpoint folder is written under a
temporary name and renamed, then ``latest.json`` is replaced atomically, so a kill at any
moment leaves the previous checkpoint usable. Data order is a permutation drawn from
(seed, epoch), so ``resume=True`` continues a killed run exactly: the resumed run's final
weights equal an uninterrupted run's. The result, ``OUT/model/``, is a normal Hugging Face
folder (``save_pretrained`` model + tokenizer) that ``probe`` / ``ablate`` take as ``--model``.

``frozen_token_ids`` keeps chosen rows of the input embedding (and of an untied output
embedding) bit-identical: their gradients are zeroed by a hook and, since AdamW's decoupled
weight decay moves rows whose gradient is zero, their values are restored after every step.
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from llm_fourier.errors import UserError
from llm_fourier.report.files import atomic_torch_save, read_json, write_json

MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class TrainConfig:
    """Hyper-parameters of one fine-tuning (or from-scratch) run."""

    epochs: int = 3
    lr: float = 1e-5
    batch_size: int = 16
    grad_accum: int = 1
    weight_decay: float = 0.01
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    seed: int = 0
    eval_batch_size: int = 64
    save_every: int = 0  # optimizer steps between checkpoints; 0: only at epoch ends
    eval_every_epochs: int = 1

    def validate(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise UserError(f"mixed precision must be one of {', '.join(MIXED_PRECISION)}, "
                            f"got {self.mixed_precision!r}.")
        for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1.")
        if not self.lr > 0:
            raise UserError("the learning rate must be positive; pass e.g. --lr 1e-5.")


class RowFreezer:
    """Keep ``rows`` of some parameters fixed: zero their gradients, restore after steps."""

    def __init__(self, params: Sequence[torch.nn.Parameter], rows) -> None:
        self.params = list({id(p): p for p in params}.values())  # tied weights once
        self.rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        self.saved = [p.detach()[self.rows.to(p.device)].clone() for p in self.params]
        self.handles = [p.register_hook(self._zero_rows) for p in self.params]

    def _zero_rows(self, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[self.rows.to(grad.device)] = 0
        return grad

    @torch.no_grad()
    def restore(self) -> None:
        for p, saved in zip(self.params, self.saved):
            p[self.rows.to(p.device)] = saved.to(p.device, p.dtype)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def embedding_params(model) -> list[torch.nn.Parameter]:
    """The input embedding weight, plus the output embedding's when untied."""
    params = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not params[0]:
        params.append(out.weight)
    return params


def answer_batch(tokenizer, examples, numbers, device=None) -> dict:
    """Left-padded prompts and the answer token of each example (``labels``)."""
    from llm_fourier.tasks import tokenize_prompts

    batch = tokenize_prompts(tokenizer, [e.prompt for e in examples], device=device)
    labels = torch.as_tensor(numbers.token_ids[[e.answer for e in examples]], dtype=torch.long)
    batch["labels"] = labels.to(batch["input_ids"].device)
    return batch


def answer_loss(model, batch: dict) -> torch.Tensor:
    """Cross-entropy of the last-position next-token logits against the answer token."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    out = model(**inputs)
    return torch.nn.functional.cross_entropy(out.logits[:, -1, :].float(), batch["labels"])


# ---------------------------------------------------------------- checkpoints
def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(out: str | Path) -> Path | None:
    pointer = Path(out) / "checkpoints" / "latest.json"
    if not pointer.exists():
        return None
    path = pointer.parent / read_json(pointer)["dir"]
    return path if path.exists() else None


def _save_checkpoint(out: Path, accelerator, model, optimizer, scheduler, state: dict) -> None:
    from safetensors.torch import save_model

    root = out / "checkpoints"
    name = f"step-{state['step']:08d}"
    rank = accelerator.process_index
    tmp = root / f"{name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    # RNG states are per process; python/numpy states are pickled tuples, so this file is
    # read with weights_only=False: it is our own checkpoint, never one a user hands us
    atomic_torch_save(_rng_state(), tmp / f"rng-{rank}.pt")
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), str(tmp / "model.safetensors"))
        atomic_torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        atomic_torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
        if accelerator.scaler is not None:
            atomic_torch_save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
        write_json(tmp / "state.json", state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(root / name, ignore_errors=True)
        tmp.rename(root / name)
        write_json(root / "latest.json", {"dir": name})
        for old in root.glob("step-*"):  # keep only the newest checkpoint
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_checkpoint(path: Path, accelerator, model, optimizer, scheduler) -> dict:
    from safetensors.torch import load_model

    load_model(accelerator.unwrap_model(model), str(path / "model.safetensors"),
               device=str(accelerator.device))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if accelerator.scaler is not None and (path / "scaler.pt").exists():
        accelerator.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    rng = path / f"rng-{accelerator.process_index}.pt"
    if rng.exists():
        _set_rng_state(torch.load(rng, weights_only=False))
    return read_json(path / "state.json")


# ---------------------------------------------------------------- training
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The data order of one epoch: a permutation fixed by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _micro_batches(n: int, config: TrainConfig, epoch: int, rank: int, world: int):
    order = epoch_order(n, config.seed, epoch)
    per_step = config.batch_size * world
    n_micro = math.ceil(n / per_step)
    order = np.resize(order, n_micro * per_step) if world > 1 else order  # equal shards
    return [order[i * per_step + rank * config.batch_size:
                  i * per_step + (rank + 1) * config.batch_size] for i in range(n_micro)]


def steps_per_epoch(n_train: int, config: TrainConfig, world: int = 1) -> int:
    return math.ceil(math.ceil(n_train / (config.batch_size * world)) / config.grad_accum)


def _default_evaluate(model, tokenizer, examples, numbers, batch_size: int) -> dict:
    from llm_fourier.ablate import evaluate
    from llm_fourier.models import LoadedModel, roles_for

    lm = LoadedModel(model=model, tokenizer=tokenizer, roles=roles_for(model), name="training")
    return evaluate(lm, examples, numbers, batch_size=batch_size, progress=False)


def train(
    model,
    tokenizer,
    splits,
    numbers,
    out: str | Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    frozen_token_ids=None,
    stop_after_steps: int | None = None,
    evaluate_fn: Callable | None = None,
    progress: bool = True,
) -> dict:
    """Train ``model`` on ``splits.train``; write checkpoints and ``OUT/model``.

    ``stop_after_steps`` stops (after a checkpoint) once that many optimizer steps are done
    in total, as a killed run would; rerun with ``resume=True`` to continue. Returns
    ``{"finished", "step", "epoch", "history", "test", "model_dir"}``; ``history`` holds the
    validation metrics after each epoch, ``test`` the test metrics (when finished).
    """
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    config.validate()
    out = Path(out)
    if not splits.train:
        raise UserError("the training split is empty; use a larger --max-operand or --limit.")
    evaluate_fn = evaluate_fn or _default_evaluate
    done_file = out / "train_state.json"
    ckpt = latest_checkpoint(out)
    if done_file.exists() and read_json(done_file).get("finished"):
        if not resume:
            raise UserError(f"{out} already holds a finished run; pass --resume to reuse it "
                            "or choose another --out.")
        return read_json(done_file)
    if ckpt is not None and not resume:
        raise UserError(f"{out} already holds a checkpoint; pass --resume to continue it or "
                        "choose another --out.")

    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    model.train()
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "norm" in n.lower()]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n.lower()]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    world = accelerator.num_processes
    total = config.epochs * steps_per_epoch(len(splits.train), config, world)
    scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, total)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)

    state = {"epoch": 0, "batch": 0, "step": 0, "history": [], "config": asdict(config),
             "finished": False}
    if ckpt is not None:
        state = _load_checkpoint(ckpt, accelerator, model, optimizer, scheduler)
    freezer = None
    if frozen_token_ids is not None and len(frozen_token_ids):
        freezer = RowFreezer(embedding_params(raw), frozen_token_ids)

    bar = tqdm(total=total, initial=state["step"], desc=f"train {out.name}",
               disable=not (progress and accelerator.is_local_main_process), leave=False)
    stopped = False
    try:
        for epoch in range(state["epoch"], config.epochs):
            micro = _micro_batches(len(splits.train), config, epoch, accelerator.process_index,
                                   world)
            groups = [micro[i:i + config.grad_accum]
                      for i in range(0, len(micro), config.grad_accum)]
            for g in range(state["batch"], len(groups)):
                for j, idx in enumerate(groups[g]):
                    batch = answer_batch(tokenizer, [splits.train[i] for i in idx], numbers,
                                         accelerator.device)
                    sync = j == len(groups[g]) - 1
                    with nullcontext() if sync else accelerator.no_sync(model):
                        with accelerator.autocast():
                            loss = answer_loss(model, batch) / len(groups[g])
                        accelerator.backward(loss)
                if config.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if freezer is not None:
                    freezer.restore()
                state.update(epoch=epoch, batch=g + 1, step=state["step"] + 1)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item() * len(groups[g]):.3g}")
                if stop_after_steps is not None and state["step"] >= stop_after_steps:
                    stopped = True
                elif not (config.save_every and state["step"] % config.save_every == 0):
                    continue
                _save_checkpoint(out, accelerator, model, optimizer, scheduler, state)
                if stopped:
                    break
            if stopped:
                break
            if (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == config.epochs:
                raw.eval()
                metrics = evaluate_fn(raw, tokenizer, splits.val, numbers,
                                      config.eval_batch_size) if splits.val else {}
                raw.train()
                state["history"].append({"epoch": epoch + 1, "step": state["step"],
                                         **_scalars(metrics)})
            state.update(epoch=epoch + 1, batch=0)
            _save_checkpoint(out, accelerator, model, optimizer, scheduler, state)
    finally:
        bar.close()
        if freezer is not None:
            freezer.remove()
    if stopped:
        return {**state, "model_dir": None}

    raw.eval()
    test = evaluate_fn(raw, tokenizer, splits.test, numbers, config.eval_batch_size) \
        if splits.test else {}
    model_dir = out / "model"
    if accelerator.is_main_process:
        raw.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    state.update(finished=True, test=test, model_dir=str(model_dir))
    if accelerator.is_main_process:
        write_json(done_file, state)
    accelerator.wait_for_everyone()
    return read_json(done_file)  # the same (JSON) form a resumed, finished run returns


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, np.number))}

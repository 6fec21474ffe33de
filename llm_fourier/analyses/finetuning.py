"""Fine-tune a Hugging Face causal LM on an arithmetic split, loss on the answer token only.

The answer of every prompt is one number token, so the loss is the cross-entropy of the
next-token logits at the last prompt position (left padding, the position ids evaluation
uses) against that token. AdamW with linear decay to 0 (optional warmup), gradient
accumulation, clipping, mixed precision and data parallelism through ``accelerate``.

Checkpoints (``OUT/checkpoints/step-N/``) are ``Accelerator.save_state`` (model as
safetensors; optimizer, scheduler, scaler and per-process RNG states read back with
``weights_only``) plus ``state.json``, written under a temporary name and renamed before
``latest.json`` is replaced, so a kill at any moment leaves the previous one usable. Data
order is drawn from (seed, epoch), so a resumed run ends with the weights of an
uninterrupted one. ``OUT/model/`` is a Hugging Face folder that ``probe`` / ``ablate`` take.

``frozen_token_ids`` keeps chosen rows of the input embedding (and of an untied output
embedding) bit-identical: their gradients are zeroed by a hook and, since AdamW's decoupled
weight decay moves rows whose gradient is zero, their values are restored after every step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from accelerate.utils import set_seed
from transformers import get_linear_schedule_with_warmup

from llm_fourier.analyses.ablation import evaluate
from llm_fourier.errors import UserError
from llm_fourier.model.loading import LoadedModel
from llm_fourier.model.tasks import tokenize_prompts
from llm_fourier.output.files import read_json, to_jsonable, write_json
from llm_fourier.output.paths import make_own_dir, remove
from llm_fourier.output.progress import tqdm

MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class FinetuneConfig:
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
        for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size",
                     "eval_every_epochs"):
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
        for h in self.handles:  # removing a handle twice is harmless
            h.remove()


def embedding_params(model) -> list[torch.nn.Parameter]:
    """The input embedding weight, plus the output embedding's when untied."""
    params = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not params[0]:
        params.append(out.weight)
    return params


def answer_batch(tokenizer, examples, numbers, device=None) -> dict:
    """Left-padded prompts and the answer token of each example (``labels``)."""
    batch = tokenize_prompts(tokenizer, [e.prompt for e in examples], device=device)
    labels = torch.as_tensor(numbers.token_ids[[e.answer for e in examples]], dtype=torch.long)
    batch["labels"] = labels.to(batch["input_ids"].device)
    return batch


def answer_loss(model, batch: dict) -> torch.Tensor:
    """Cross-entropy of the last-position next-token logits against the answer token."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    out = model(**inputs)
    return torch.nn.functional.cross_entropy(out.logits[:, -1, :].float(), batch["labels"])


def latest_checkpoint(out: str | Path) -> Path | None:
    pointer = Path(out) / "checkpoints" / "latest.json"
    if not pointer.exists():
        return None
    try:
        path = pointer.parent / read_json(pointer)["dir"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{pointer} cannot be read ({type(err).__name__}); rerun with --restart "
                        "to start the run over.") from err
    return path if path.exists() else None


class FineTuner:
    """One fine-tuning run of ``lm`` on ``splits`` into ``out`` (see the module docstring)."""

    def __init__(self, lm: LoadedModel, splits, numbers, out: str | Path,
                 config: FinetuneConfig, *, frozen_token_ids=None, progress: bool = True) -> None:
        config.validate()
        if not splits.train:
            raise UserError("the training split is empty; use a larger --max-operand or "
                            "--max-pairs.")
        self.lm, self.splits, self.numbers, self.config = lm, splits, numbers, config
        self.out, self.progress = Path(out), progress
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision,
                                       step_scheduler_with_optimizer=False)
        set_seed(config.seed)
        model = lm.model
        model.train()
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "norm" in n.lower()]
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n.lower()]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
        self.world = self.accelerator.num_processes
        self.total = config.epochs * len(self.groups(0))  # optimizer steps
        scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, self.total)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(
            model, optimizer, scheduler)
        self.state = {"epoch": 0, "batch": 0, "step": 0, "history": [],
                      "config": asdict(config), "finished": False}
        self.freezer = RowFreezer(embedding_params(model), frozen_token_ids) \
            if frozen_token_ids is not None and len(frozen_token_ids) else None

    # -------------------------------------------------------------- pieces
    def groups(self, epoch: int) -> list[list[np.ndarray]]:
        """This process's micro-batches of ``epoch``, grouped per optimizer step."""
        c, rank = self.config, self.accelerator.process_index
        order = np.random.default_rng([c.seed, epoch]).permutation(len(self.splits.train))
        per_step = c.batch_size * self.world
        if self.world > 1:  # equal shards
            order = np.resize(order, math.ceil(len(order) / per_step) * per_step)
        micro = [order[start:start + c.batch_size]
                 for start in range(rank * c.batch_size, len(order), per_step)]
        return [micro[i:i + c.grad_accum] for i in range(0, len(micro), c.grad_accum)]

    def step(self, group: list[np.ndarray]) -> float:
        """One optimizer step over a group of micro-batches; returns the mean loss."""
        acc, total = self.accelerator, 0.0
        for j, idx in enumerate(group):
            batch = answer_batch(self.lm.tokenizer, [self.splits.train[i] for i in idx],
                                 self.numbers, acc.device)
            with nullcontext() if j == len(group) - 1 else acc.no_sync(self.model):
                with acc.autocast():
                    loss = answer_loss(self.model, batch) / len(group)
                acc.backward(loss)
            total += loss.item()
        if self.config.max_grad_norm:
            acc.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.freezer is not None:
            self.freezer.restore()
        return total

    def evaluate(self, examples) -> dict:
        self.lm.model.eval()
        try:
            return evaluate(self.lm, examples, self.numbers, batch_size=self.config.eval_batch_size,
                            progress=False) if examples else {}
        finally:
            self.lm.model.train()

    def checkpoint(self) -> None:
        """Save the whole training state (atomically, see the module docstring)."""
        acc = self.accelerator
        root = self.out / "checkpoints"
        name = f"step-{self.state['step']:08d}"
        tmp = root / f"{name}.tmp"
        if acc.is_main_process:
            remove(tmp, self.out)
            make_own_dir(root)
            tmp.mkdir()
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        if acc.is_main_process:
            write_json(tmp / "state.json", self.state)
            remove(root / name, self.out)
            tmp.rename(root / name)
            write_json(root / "latest.json", {"dir": name})
            for old in root.glob("step-*"):  # keep only the newest checkpoint
                if old.name != name:
                    remove(old, self.out)
        acc.wait_for_everyone()

    def restore(self, path: Path) -> None:
        """Load a checkpoint; an unreadable or foreign file is one sentence, never unpickled."""
        rng = path / f"random_states_{self.accelerator.process_index}.pkl"
        try:
            if rng.exists():  # accelerate skips an unreadable RNG file silently: check it
                accelerate_load(rng)
            self.accelerator.load_state(str(path))
            self.state = read_json(path / "state.json")
        except Exception as err:
            raise UserError(f"the checkpoint {path} cannot be read ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:120] if str(err) else ''}); it is not "
                            "loaded. Rerun with --restart to start the run over.") from err

    # -------------------------------------------------------------- the loop
    def train(self, resume: bool = False, stop_after_steps: int | None = None) -> dict:
        """Train (resuming from the latest checkpoint when ``resume``); write ``OUT/model``.

        ``stop_after_steps`` stops (after a checkpoint) once that many optimizer steps are
        done in total, as a killed run would. Returns ``{"finished", "step", "epoch",
        "history", "test", "model_dir"}``.
        """
        c, acc = self.config, self.accelerator
        ckpt = latest_checkpoint(self.out) if resume else None
        if not resume and acc.is_main_process:
            remove(self.out / "checkpoints", self.out)  # a finished run's
        if ckpt is not None:
            self.restore(ckpt)
        bar = tqdm(total=self.total, initial=self.state["step"], desc=f"train {self.out.name}",
                   disable=not (self.progress and acc.is_local_main_process), leave=False)
        try:
            for epoch in range(self.state["epoch"], c.epochs):
                groups = self.groups(epoch)
                for g in range(self.state["batch"], len(groups)):
                    loss = self.step(groups[g])
                    self.state.update(epoch=epoch, batch=g + 1, step=self.state["step"] + 1)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3g}")
                    stopped = stop_after_steps is not None and self.state["step"] >= \
                        stop_after_steps
                    if stopped or (c.save_every and self.state["step"] % c.save_every == 0):
                        self.checkpoint()
                    if stopped:
                        return {**self.state, "model_dir": None}
                if (epoch + 1) % c.eval_every_epochs == 0 or epoch + 1 == c.epochs:
                    scalars = {k: v for k, v in self.evaluate(self.splits.val).items()
                               if isinstance(v, (int, float, np.number))}
                    self.state["history"].append({"epoch": epoch + 1, "step": self.state["step"],
                                                  **scalars})
                self.state.update(epoch=epoch + 1, batch=0)
                self.checkpoint()
        finally:
            bar.close()
            if self.freezer is not None:
                self.freezer.remove()
        test = self.evaluate(self.splits.test)
        self.lm.model.eval()
        model_dir = self.out / "model"
        if acc.is_main_process:  # a fresh folder: no file of an old one (or link) written through
            remove(model_dir, self.out)
            make_own_dir(model_dir)
            acc.unwrap_model(self.model).save_pretrained(model_dir)
            self.lm.tokenizer.save_pretrained(model_dir)
        acc.wait_for_everyone()
        # the JSON form a checkpointed state has, whether or not the run was resumed
        return json.loads(json.dumps(to_jsonable({**self.state, "finished": True, "test": test,
                                                  "model_dir": str(model_dir)})))

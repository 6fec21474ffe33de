"""Full-batch training of several seeds at once, with checkpoints, exact resume and stops.

Seed s gets its own initialisation and its own train/test split (both seeded by s, or the
split by ``data_seed`` when given), its own loss term (the gradient of the summed per-seed
losses is each seed's own gradient) and its own AdamW state (``StackedAdamW`` is
elementwise, with per-seed step counts). A seed that meets a stop threshold is frozen
while the others go on, so every seed ends where it would have ended trained alone.

Defaults follow Nanda et al.: AdamW lr 1e-3, weight decay 1.0, betas (0.9, 0.98), linear
warmup ``lr * min(epoch / 10, 1)``, full batch, loss from float64 log-softmax. Checkpoints
are written atomically every ``checkpoint_every`` epochs; resuming from one replays the
same arithmetic, so an interrupted run ends bit for bit where the uninterrupted one does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from llm_fourier.errors import UserError
from llm_fourier.output.progress import tqdm
from toy.checkpoint import CHECKPOINT_NAME, read_checkpoint, split_prefix, write_checkpoint
from toy.data import Task, make_task, split_indices
from toy.models import JsonConfig, ModelConfig, StackedModel, build_model
from toy.progress import loss_and_accuracy, progress_measures

# Settings that change the arithmetic of a run: a resumed run must match them.
_RUN_IDENTITY = ("op", "p", "n_inputs", "train_frac", "data_seed", "lr", "weight_decay",
                 "beta1", "beta2", "eps", "warmup")


@dataclass
class GrokConfig(JsonConfig):
    op: str = "a+b"
    p: int = 113
    n_inputs: int = 2
    train_frac: float = 0.3
    data_seed: int | None = None  # None: each seed splits the data with its own seed
    epochs: int = 20000
    lr: float = 1e-3
    weight_decay: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    warmup: int = 10
    log_every: int = 100
    measure_every: int = 1000  # progress measures (0: only at the end)
    checkpoint_every: int = 1000  # 0: only at the end
    stop_test_loss: float | None = None  # a seed stops once its test loss is below this
    stop_accuracy: float | None = None  # ... or once train and test accuracy reach this
    key_share: float | None = None  # key-frequency energy share (default 1.5 / K)


class StackedAdamW:
    """AdamW (decoupled weight decay, as ``torch.optim.AdamW``) over stacked parameters,
    with per-seed step counts and a per-seed ``active`` mask (frozen seeds are untouched)."""

    def __init__(self, params: dict[str, torch.nn.Parameter], n_seeds: int,
                 betas=(0.9, 0.98), eps: float = 1e-8, weight_decay: float = 1.0) -> None:
        self.params = params
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.steps = torch.zeros(n_seeds, dtype=torch.long)
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}

    @torch.no_grad()
    def step(self, lr: float, active: torch.Tensor) -> None:
        b1, b2 = self.betas
        all_active = bool(active.all())
        self.steps += active.long().cpu()
        t = self.steps.double().clamp(min=1)
        step_size = lr / (1 - b1**t)
        bc2_sqrt = (1 - b2**t).sqrt()
        for name, p in self.params.items():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            shape = (-1,) + (1,) * (p.dim() - 1)
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            new_m = m.lerp(g, 1 - b1)
            new_v = v * b2 + (1 - b2) * g * g
            denom = new_v.sqrt() / bc2_sqrt.to(p).view(shape) + self.eps
            new_p = p * (1 - lr * self.weight_decay) - step_size.to(p).view(shape) * new_m / denom
            if not all_active:
                keep = active.to(p.device).view(shape)
                new_m, new_v, new_p = (torch.where(keep, a, b) for a, b in
                                       ((new_m, m), (new_v, v), (new_p, p)))
            m.copy_(new_m)
            v.copy_(new_v)
            p.copy_(new_p)

    def state_dict(self) -> dict:
        return {"steps": self.steps.clone(), "exp_avg": dict(self.exp_avg),
                "exp_avg_sq": dict(self.exp_avg_sq)}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"].clone()
        for n in self.params:
            self.exp_avg[n].copy_(state["exp_avg"][n])
            self.exp_avg_sq[n].copy_(state["exp_avg_sq"][n])


def lr_at(epoch: int, cfg: GrokConfig) -> float:
    return cfg.lr * min(epoch / cfg.warmup, 1.0) if cfg.warmup > 0 else cfg.lr


def seed_splits(task: Task, cfg: GrokConfig, seeds) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, n_train) and (S, n_test) row indices, one deterministic split per seed."""
    splits = [split_indices(len(task), cfg.train_frac,
                            s if cfg.data_seed is None else cfg.data_seed) for s in seeds]
    return torch.stack([a for a, _ in splits]), torch.stack([b for _, b in splits])


def save_checkpoint(path: Path, model: StackedModel, opt: StackedAdamW, cfg: GrokConfig,
                    epoch: int, active: torch.Tensor, history: list[dict]) -> None:
    """The state at the start of ``epoch`` (see ``toy.checkpoint``)."""
    state = opt.state_dict()
    tensors = {"active": active, "optimizer.steps": state["steps"],
               **{f"model.{n}": p for n, p in model.named_parameters()},
               **{f"optimizer.exp_avg.{n}": t for n, t in state["exp_avg"].items()},
               **{f"optimizer.exp_avg_sq.{n}": t for n, t in state["exp_avg_sq"].items()}}
    info = {"epoch": epoch, "model_config": model.cfg.to_dict(), "train_config": cfg.to_dict(),
            "seeds": list(model.seeds), "history": history}
    write_checkpoint(path, info, tensors)


def _stop(row: dict, cfg: GrokConfig) -> bool:
    if cfg.stop_test_loss is not None and row["test_loss"] < cfg.stop_test_loss:
        return True
    return (cfg.stop_accuracy is not None and row["train_accuracy"] >= cfg.stop_accuracy
            and row["test_accuracy"] >= cfg.stop_accuracy)


@dataclass
class TrainResult:
    model: StackedModel
    task: Task
    train_idx: torch.Tensor
    test_idx: torch.Tensor
    history: list[dict]
    epoch: int
    stopped_at: list[int | None]


def train(model_cfg: ModelConfig, cfg: GrokConfig, seeds, out: str | Path | None = None,
          resume: bool = False, device: str = "cpu", progress: bool = True,
          stop_after: int | None = None) -> TrainResult:
    """Train ``seeds`` together; checkpoints go to ``out/checkpoint.safetensors`` when ``out``
    is set; ``resume`` continues from it (a run whose settings differ is refused).

    ``stop_after`` ends the call after that many epochs of this call (as an interruption
    would), leaving the latest checkpoint behind; used to test resuming.
    """
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise UserError("seeds must be distinct; pass each seed once.")
    if model_cfg.p != cfg.p or model_cfg.n_inputs != cfg.n_inputs:
        raise UserError("the model's p and number of inputs must match the task's.")
    task = make_task(cfg.op, cfg.p, cfg.n_inputs)
    train_idx, test_idx = seed_splits(task, cfg, seeds)
    ckpt_path = Path(out) / CHECKPOINT_NAME if out is not None else None
    history: list[dict] = []
    start = 0
    if resume and ckpt_path is not None and ckpt_path.exists():
        info, tensors = read_checkpoint(ckpt_path)
        _check_resumable(info, model_cfg, cfg, seeds)
        model = build_model(model_cfg, seeds, split_prefix(tensors, "model")).to(device)
        start, active = int(info["epoch"]), tensors["active"].to(device)
        history = [r for r in info["history"] if r["epoch"] < start]
    else:
        model = build_model(model_cfg, seeds).to(device)
        active = torch.ones(len(seeds), dtype=torch.bool, device=device)
    params = dict(model.named_parameters())
    opt = StackedAdamW(params, len(seeds), (cfg.beta1, cfg.beta2), cfg.eps, cfg.weight_decay)
    if start:
        opt.load_state_dict({"steps": tensors["optimizer.steps"],
                             **{k: {n: t.to(device) for n, t in
                                    split_prefix(tensors, f"optimizer.{k}").items()}
                                for k in ("exp_avg", "exp_avg_sq")}})
    x_tr, y_tr = task.inputs[train_idx].to(device), task.labels[train_idx].to(device)
    x_te, y_te = task.inputs[test_idx].to(device), task.labels[test_idx].to(device)
    task_dev = Task(task.op, task.p, task.inputs.to(device), task.labels.to(device),
                    task.full_grid)
    if start > cfg.epochs:
        raise UserError(f"the checkpoint is already at epoch {start}, beyond --epochs "
                        f"{cfg.epochs}; pass a larger --epochs to train on.")
    end = cfg.epochs if stop_after is None else min(cfg.epochs, start + stop_after)
    bar = tqdm(range(start, end + 1), desc="train", disable=not progress, leave=False)
    epoch, active_start = start, active.clone()
    for epoch in bar:
        last = epoch == cfg.epochs
        if epoch == end and not last:
            break  # interrupted on purpose (stop_after): the state is that of epoch `end`
        active_start = active.clone()  # a checkpoint holds the state before this epoch's log
        logits = model(x_tr)
        loss, acc = loss_and_accuracy(logits, y_tr)
        if epoch % cfg.log_every == 0 or last:
            rows = _log_rows(model, epoch, lr_at(epoch, cfg), loss, acc, x_te, y_te, active)
            if last or (cfg.measure_every and epoch % cfg.measure_every == 0):
                for s, m in enumerate(progress_measures(model, task_dev, train_idx,
                                                        cfg.key_share)):
                    if s in rows:
                        rows[s].update(m)
            for s, row in rows.items():
                if _stop(row, cfg):
                    active[s] = False
            history += rows.values()
            bar.set_postfix(train_loss=f"{loss.max():.2e}",
                            test_loss=f"{max(r['test_loss'] for r in rows.values()):.2e}")
        if last or not bool(active.any()):
            break
        loss.sum().backward()
        opt.step(lr_at(epoch, cfg), active)
        for p in params.values():
            p.grad = None
        active_start = active.clone()
        if (ckpt_path is not None and cfg.checkpoint_every
                and (epoch + 1) % cfg.checkpoint_every == 0):
            save_checkpoint(ckpt_path, model, opt, cfg, epoch + 1, active, history)
    if ckpt_path is not None:
        save_checkpoint(ckpt_path, model, opt, cfg, epoch, active_start, history)
    stopped = [None] * len(seeds)
    for r in history:
        stopped[seeds.index(r["seed"])] = r["epoch"]
    stopped = [e if not bool(active[i]) else None for i, e in enumerate(stopped)]
    return TrainResult(model, task, train_idx, test_idx, history, epoch, stopped)


@torch.no_grad()
def _log_rows(model, epoch, lr, loss, acc, x_te, y_te, active) -> dict[int, dict]:
    test_loss, test_acc = loss_and_accuracy(model(x_te), y_te)
    return {s: {"epoch": epoch, "seed": model.seeds[s], "lr": lr,
                "train_loss": float(loss[s]), "train_accuracy": float(acc[s]),
                "test_loss": float(test_loss[s]), "test_accuracy": float(test_acc[s])}
            for s in range(model.n_seeds) if bool(active[s])}


def _check_resumable(ck: dict, model_cfg: ModelConfig, cfg: GrokConfig, seeds) -> None:
    old = GrokConfig.from_dict(ck["train_config"])
    diff = [k for k in _RUN_IDENTITY if getattr(old, k) != getattr(cfg, k)]
    if ck["model_config"] != model_cfg.to_dict():
        diff.append("model settings")
    if list(ck["seeds"]) != list(seeds):
        diff.append("seeds")
    if diff:
        raise UserError(f"cannot resume: {', '.join(diff)} differ from the checkpoint's run; "
                        f"use the original settings, --restart, or another --out folder.")

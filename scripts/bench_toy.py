"""Benchmark of the toy trainer on Nanda et al.'s mainline ((a + b) mod 113, 30% train).

Prints, measured in one run:
  1. steps/s of our trainer (last-position-only stacked model + StackedAdamW) against a
     straightforward reference (plain nn.Module computing all positions, torch AdamW,
     LambdaLR) -- target ratio >= 2;
  2. time per step of 8 seeds batched against 1 seed -- target <= 4x;
  3. with --grok: wall time until test accuracy >= 99% (target <= 10 minutes on 2 cores).

    python scripts/bench_toy.py [--steps 30] [--threads 2] [--grok] [--grok-limit 900]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from toy.data import make_task, split_indices
from toy.models import ModelConfig, build_model
from toy.progress import loss_and_accuracy
from toy.train import GrokConfig, StackedAdamW, lr_at, train


class Reference(nn.Module):
    """Nanda et al.'s one-layer transformer written plainly: every position computed."""

    def __init__(self, p=113, d=128, H=4, dh=32, m=512):
        super().__init__()
        self.H, self.dh = H, dh
        self.embed = nn.Parameter(torch.randn(p + 1, d) / math.sqrt(d))
        self.pos = nn.Parameter(torch.randn(3, d) / math.sqrt(d))
        self.qkv = nn.Linear(d, 3 * H * dh, bias=False)
        self.o = nn.Linear(H * dh, d, bias=False)
        self.w_in, self.w_out = nn.Linear(d, m), nn.Linear(m, d)
        self.unembed = nn.Linear(d, p, bias=False)
        self.register_buffer("mask", torch.tril(torch.ones(3, 3, dtype=torch.bool)))

    def forward(self, tokens):
        x = self.embed[tokens] + self.pos
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.H, self.dh).unbind(2)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(self.dh)
        attn = scores.masked_fill(~self.mask, float("-inf")).softmax(-1)
        z = torch.einsum("bhqk,bkhe->bqhe", attn, v).reshape(B, T, -1)
        x = x + self.o(z)
        x = x + self.w_out(torch.relu(self.w_in(x)))
        return self.unembed(x)[:, -1]


def time_steps(step, n: int) -> float:
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def bench_reference(x, y, n):
    torch.manual_seed(0)
    model = Reference()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s / 10, 1))
    tokens = torch.cat([x, torch.full((len(x), 1), 113)], dim=1)

    def step():
        logits = model(tokens).double()
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return time_steps(step, n)


def bench_ours(task, seeds, n):
    model = build_model(ModelConfig(), seeds)
    idx = torch.stack([split_indices(len(task), 0.3, s)[0] for s in seeds])
    x, y = task.inputs[idx], task.labels[idx]
    opt = StackedAdamW(dict(model.named_parameters()), len(seeds))
    active = torch.ones(len(seeds), dtype=torch.bool)
    cfg, count = GrokConfig(), [0]

    def step():
        loss, _ = loss_and_accuracy(model(x), y)
        loss.sum().backward()
        opt.step(lr_at(count[0], cfg), active)
        count[0] += 1
        for p in model.parameters():
            p.grad = None
    return time_steps(step, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grok", action="store_true",
                    help="also time a full run to 99%% test accuracy")
    ap.add_argument("--grok-limit", type=float, default=900.0, help="seconds before giving up")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = make_task("a+b", 113)
    tr, _ = split_indices(len(task), 0.3, 0)
    ref = bench_reference(task.inputs[tr], task.labels[tr], args.steps)
    one = bench_ours(task, [0], args.steps)
    eight = bench_ours(task, list(range(8)), args.steps)
    print(f"threads {args.threads}, p 113, 30% train ({len(tr)} pairs), full batch")
    print(f"reference : {1 / ref:8.1f} steps/s ({ref * 1e3:.1f} ms/step)")
    print(f"ours 1 seed: {1 / one:8.1f} steps/s ({one * 1e3:.1f} ms/step)  "
          f"speed-up {ref / one:.2f}x (target >= 2)")
    print(f"ours 8 seeds: {eight * 1e3:.1f} ms/step = {eight / one:.2f}x one seed "
          f"(target <= 4)")
    if args.grok:
        cfg = GrokConfig(epochs=50000, log_every=100, measure_every=0, checkpoint_every=0,
                          stop_accuracy=0.99)
        t0 = time.perf_counter()
        deadline = t0 + args.grok_limit
        res, chunk = None, 1000
        start = 0
        while time.perf_counter() < deadline:
            res = train(ModelConfig(), cfg, [0], progress=False, stop_after=chunk,
                        out=_grok_dir(), resume=start > 0)
            start = res.epoch
            if res.stopped_at[0] is not None or res.epoch >= cfg.epochs:
                break
        elapsed = time.perf_counter() - t0
        last = res.history[-1]
        status = "grokked" if res.stopped_at[0] is not None else "NOT grokked"
        print(f"time to grok: {status} at epoch {last['epoch']} after {elapsed:.0f} s "
              f"(test accuracy {last['test_accuracy']:.4f}, test loss {last['test_loss']:.2e}; "
              f"target <= 600 s)")


_GROK_DIR: list = []


def _grok_dir():
    import tempfile

    if not _GROK_DIR:
        _GROK_DIR.append(tempfile.mkdtemp(prefix="bench_toy_"))
    return _GROK_DIR[0]


if __name__ == "__main__":
    main()

"""The batched trainer: per-seed equivalence, AdamW, stop thresholds, exact resume."""

import pytest
import torch

from llm_fourier.errors import UserError
from toy.checkpoint import read_checkpoint
from toy.models import ModelConfig
from toy.train import GrokConfig, StackedAdamW, lr_at, train

P = 11
MC = ModelConfig(p=P, d_model=16, n_heads=2, d_head=8, d_mlp=32)


def tc(**kw) -> GrokConfig:
    base = dict(p=P, train_frac=0.5, epochs=60, lr=3e-3, log_every=10, measure_every=30,
                checkpoint_every=0)
    return GrokConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def three_seeds():
    return train(MC, tc(), [0, 1, 2], progress=False)


def test_stacked_adamw_matches_torch_adamw():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 5, generator=g)
    ours = torch.nn.Parameter(w.clone())
    theirs = [torch.nn.Parameter(w[s].clone()) for s in range(3)]
    opt = StackedAdamW({"w": ours}, 3, (0.9, 0.98), 1e-8, 1.0)
    ref = torch.optim.AdamW(theirs, lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=1.0)
    cfg = GrokConfig(warmup=3)
    for step in range(6):
        grads = torch.randn(3, 4, 5, generator=g)
        ours.grad = grads.clone()
        for s in range(3):
            theirs[s].grad = grads[s].clone()
        for group in ref.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.step(lr_at(step, cfg), torch.ones(3, dtype=torch.bool))
        ref.step()
    for s in range(3):
        torch.testing.assert_close(ours.data[s], theirs[s].data, rtol=1e-6, atol=1e-7)
    assert lr_at(0, cfg) == 0.0 and lr_at(1, cfg) == pytest.approx(1e-3 / 3)


def test_batched_seed_equals_seed_trained_alone(three_seeds):
    alone = train(MC, tc(), [1], progress=False)
    for (name, a), (_, b) in zip(three_seeds.model.named_parameters(),
                                 alone.model.named_parameters()):
        torch.testing.assert_close(a[1], b[0], rtol=1e-5, atol=1e-6, msg=name)
    rows = [r for r in three_seeds.history if r["seed"] == 1]
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in alone.history]
    for r, q in zip(rows, alone.history):
        assert r["train_loss"] == pytest.approx(q["train_loss"], rel=1e-4, abs=1e-7)
        assert r["test_loss"] == pytest.approx(q["test_loss"], rel=1e-4)
    # different seeds really are different runs, each with its own split
    assert not torch.equal(three_seeds.train_idx[0], three_seeds.train_idx[1])
    assert three_seeds.history[-1]["train_loss"] < three_seeds.history[0]["train_loss"]


def test_stopped_seed_is_frozen_where_it_would_stop_alone(three_seeds):
    hist = {s: {r["epoch"]: r["test_loss"] for r in three_seeds.history if r["seed"] == s}
            for s in (0, 1)}

    def first_hit(s, thr):
        return next((e for e in sorted(hist[s]) if hist[s][e] < thr), None)

    thr, early = None, None
    for cand in sorted(set(hist[0].values()) | set(hist[1].values())):
        hits = {s: first_hit(s, cand * 1.0001) for s in (0, 1)}
        for a, b in ((0, 1), (1, 0)):
            if hits[a] is not None and 0 < hits[a] < (hits[b] or 10**9):
                thr, early = cand * 1.0001, a
        if thr:
            break
    assert thr is not None, "no threshold separates the seeds"
    stop_epoch = first_hit(early, thr)
    both = train(MC, tc(stop_test_loss=thr), [0, 1], progress=False)
    assert both.stopped_at[early] == stop_epoch
    assert max(r["epoch"] for r in both.history if r["seed"] == early) == stop_epoch
    truncated = train(MC, tc(epochs=stop_epoch), [early], progress=False)
    for (name, a), (_, b) in zip(both.model.named_parameters(),
                                 truncated.model.named_parameters()):
        torch.testing.assert_close(a[early], b[0], rtol=1e-5, atol=1e-6, msg=name)
    other = 1 - early  # the other seed went on training
    assert max(r["epoch"] for r in both.history if r["seed"] == other) > stop_epoch


@pytest.mark.parametrize("interrupt_after", [40, 47])
def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, interrupt_after):
    cfg = tc(epochs=90, checkpoint_every=20)
    full = train(MC, cfg, [0, 5], out=tmp_path / "full", progress=False)
    part = train(MC, cfg, [0, 5], out=tmp_path / "part", progress=False,
                 stop_after=interrupt_after)
    assert part.epoch == interrupt_after
    resumed = train(MC, cfg, [0, 5], out=tmp_path / "part", resume=True, progress=False)
    for (name, a), (_, b) in zip(full.model.named_parameters(),
                                 resumed.model.named_parameters()):
        assert torch.equal(a, b), name
    assert resumed.history == full.history
    info, tensors = read_checkpoint(tmp_path / "part" / "checkpoint.safetensors")
    assert info["epoch"] == 90 and info["seeds"] == [0, 5]
    assert torch.equal(tensors["model.W_E"], full.model.W_E.detach())


def test_resume_guards(tmp_path):
    train(MC, tc(epochs=20), [0], out=tmp_path, progress=False)
    with pytest.raises(UserError, match="lr"):
        train(MC, tc(epochs=30, lr=1e-2), [0], out=tmp_path, resume=True, progress=False)
    with pytest.raises(UserError, match="seeds"):
        train(MC, tc(epochs=30), [1], out=tmp_path, resume=True, progress=False)
    more = train(MC, tc(epochs=30), [0], out=tmp_path, resume=True, progress=False)
    assert more.epoch == 30 and more.history[-1]["epoch"] == 30

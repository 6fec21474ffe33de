"""Stacked toy models against independent forward passes written here."""

import math

import numpy as np
import pytest
import torch

from llm_fourier.errors import UserError
from toy.data import make_task
from toy.models import ModelConfig, build_model
from toy.quantize import quantize, quantize_ste


def reference_transformer(P: dict, x: torch.Tensor, p: int, dh: int) -> torch.Tensor:
    """All positions, causal mask, TransformerLens-style einsums; returns last-position logits."""
    toks = torch.cat([x, torch.full((len(x), 1), p)], 1)
    r = P["W_E"][toks] + P["W_pos"]
    q, k, v = (torch.einsum("npd,hde->nphe", r, P[f"W_{n}"]) + P.get(f"b_{n}", 0) for n in "QKV")
    scores = torch.einsum("nqhe,nkhe->nhqk", q, k) / math.sqrt(dh)
    n_ctx = toks.shape[1]
    mask = torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool))
    z = torch.einsum("nhqk,nkhe->nqhe", scores.masked_fill(~mask, -1e9).softmax(-1), v)
    r = r + torch.einsum("nqhe,hed->nqd", z, P["W_O"]) + P.get("b_O", 0)
    r = r + torch.relu(r @ P["W_in"] + P["b_in"]) @ P["W_out"] + P["b_out"]
    return (r @ P["W_U"] + P.get("b_U", 0))[:, -1]


@pytest.mark.parametrize("n_inputs,bias", [(2, False), (2, True), (3, True)])
def test_transformer_matches_full_position_reference(n_inputs, bias):
    p = 7
    cfg = ModelConfig(p=p, n_inputs=n_inputs, d_model=16, n_heads=2, d_head=4, d_mlp=24,
                      attn_bias=bias, unembed_bias=bias)
    model = build_model(cfg, [3, 4])
    with torch.no_grad():
        for name, t in model.named_parameters():
            if name.startswith("b_"):
                t.normal_()  # biases start at zero; make them matter
    x = make_task("sum", p, n_inputs).inputs
    logits = model(x)
    for s in range(2):
        P = {n: t[s].detach() for n, t in model.named_parameters()}
        torch.testing.assert_close(logits[s], reference_transformer(P, x, p, 4),
                                   rtol=1e-4, atol=1e-4)
    hidden = model.neurons(x)
    assert hidden.shape == (2, len(x), 24) and (hidden >= 0).all()


def test_per_seed_init_does_not_depend_on_companions():
    cfg = ModelConfig(p=7, d_model=8, n_heads=2, d_head=4, d_mlp=8)
    both, alone = build_model(cfg, [1, 9]), build_model(cfg, [9])
    for (n, a), (_, b) in zip(both.named_parameters(), alone.named_parameters()):
        assert torch.equal(a[1], b[0]), n
    assert not torch.equal(both.W_E[0], both.W_E[1])
    picked = both.select([1])
    assert picked.seeds == [9] and torch.equal(picked.W_E, alone.W_E)


def test_power_mlp_matches_numpy():
    p, k = 5, 3
    model = build_model(ModelConfig(kind="mlp", p=p, n_inputs=k, width=6), [0])
    x = make_task("sum", p, k).inputs
    W_in = model.W_in[0].detach().double().numpy()  # (k, p, width)
    W_out = model.W_out[0].detach().double().numpy()
    onehot = np.eye(p)[x.numpy()]  # (N, k, p)
    expected = np.einsum("nip,ipm->nm", onehot, W_in) ** 3 @ W_out
    np.testing.assert_allclose(model(x)[0].detach().numpy(), expected, rtol=1e-4, atol=1e-4)
    assert model.embedding().shape == (1, p, k * 6)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_rnn_matches_step_by_step_loop(act):
    p = 5
    model = build_model(ModelConfig(kind="rnn", p=p, n_inputs=3, width=4, act=act,
                                    unembed_bias=True), [2])
    with torch.no_grad():
        model.b_h.normal_()
        model.b_U.normal_()
    P = {n: t[0].detach().double().numpy() for n, t in model.named_parameters()}
    f = (lambda z: np.maximum(z, 0)) if act == "relu" else np.tanh
    x = make_task("sum", p, 3).inputs.numpy()
    for row in (0, 17, 124):
        h = np.zeros(4)
        for t, tok in enumerate(x[row]):
            h = f(P["E"][tok] + (h @ P["W_h"] if t else 0) + P["b_h"])
        got = model(torch.as_tensor(x[row : row + 1]))[0, 0].detach().double().numpy()
        np.testing.assert_allclose(got, h @ P["W_U"] + P["b_U"], rtol=1e-5, atol=1e-5)


def test_quantizers_and_straight_through_gradient():
    w = torch.tensor([[[0.5, -1.0], [2.0, 0.1]]])  # one seed
    beta = w.abs().mean()
    assert torch.allclose(quantize(w, "binary"),
                          torch.tensor([[[1.0, -1.0], [1.0, -1.0]]]) * beta)  # sign(w - mean)
    assert torch.allclose(quantize(w, "ternary"), torch.tensor([[[1.0, -1.0], [1.0, 0.0]]]) * beta)
    w = w.clone().requires_grad_(True)
    (quantize_ste(w, "ternary") * torch.arange(4.0).view(1, 2, 2)).sum().backward()
    assert torch.equal(w.grad, torch.arange(4.0).view(1, 2, 2))  # identity gradient


@pytest.mark.parametrize("quant,levels", [("binary", 2), ("ternary", 3)])
def test_quantized_transformer_sees_quantized_weights(quant, levels):
    model = build_model(ModelConfig(p=7, d_model=8, n_heads=2, d_head=4, d_mlp=8, quant=quant),
                        [0, 1])
    for name in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"):
        assert model.weight(name)[0].unique().numel() <= levels
    assert model.weight("W_E") is model.W_E  # embeddings stay full precision
    full = build_model(ModelConfig(p=7, d_model=8, n_heads=2, d_head=4, d_mlp=8), [0, 1])
    x = make_task("a+b", 7).inputs
    assert not torch.allclose(model(x), full(x))  # same latent weights, different forward


def test_bad_configs_are_user_errors():
    with pytest.raises(UserError):
        ModelConfig(kind="mlp", quant="binary")
    with pytest.raises(UserError):
        ModelConfig(kind="cnn")

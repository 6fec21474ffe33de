"""The ``heads`` role on every architecture type: N x H x D terms that add up to ``attn``.

Independent of the role's own arithmetic, keeping one head (``edit_heads`` zeroes the others'
slices of the projection input) must leave exactly that head's term plus the bias in the
attention output of a block without a post-norm.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from llm_fourier.errors import UserError
from llm_fourier.model.architectures import ROLES, logit_multiplier
from llm_fourier.model.heads import n_heads
from llm_fourier.model.hooks import capture, edit_heads
from llm_fourier.model.loading import load_model
from llm_fourier.model.roles_check import heads_tolerance, measure_roles
from tests.llm.test_architectures import IDS, VARIANTS
from tests.tiny import ARCHS, N_LAYERS

BATCH = torch.cat([IDS, IDS.flip(-1)])


def _with_biases(model):
    """Random biases everywhere (GPT-2 starts them at zero): the bias term must count."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and "norm" not in name and "ln" not in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("name", list(ARCHS) + list(VARIANTS))
def test_heads_add_up_to_attn_and_leave_logits_bit_identical(tiny_models, name):
    arch, overrides = VARIANTS.get(name, (name, {}))
    model, tok = tiny_models(arch, **overrides)
    lm = load_model(model, tok)
    assert lm.heads_refusal is None
    report = measure_roles(lm)
    assert len(report.heads_errors) == N_LAYERS
    assert max(e for _, e in report.heads_errors) <= report.heads_tolerance
    h = n_heads(model.config)
    with torch.inference_mode():
        plain = model(BATCH).logits
        with capture(lm, ("attn", "heads"), positions="all") as cap:
            hooked = model(BATCH).logits
        with capture(lm, ("attn", "heads")) as last:
            model(BATCH)
    assert torch.equal(plain, hooked)
    eps = heads_tolerance(torch.float32, h)
    for layer in range(N_LAYERS):
        heads = cap.get("heads", layer)
        assert heads.shape == (2, BATCH.shape[1], h, lm.d_model)
        total = heads.double().sum(-2) + cap.head_bias(layer).double()
        attn = cap.get("attn", layer).double()
        err = ((total - attn).norm(dim=-1) / attn.norm(dim=-1)).max()
        assert err <= eps, (name, layer, float(err))
        assert torch.equal(last.get("heads", layer), heads[:, -1])
        assert last.get("heads", layer).shape == (2, h, lm.d_model)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "bloom", "opt", "granite"])
def test_one_head_kept_alone_is_its_term_plus_the_bias(tiny_models, arch):
    model, tok = tiny_models(arch)
    lm = load_model(_with_biases(copy.deepcopy(model)), tok)
    model, keep = lm.model, 1

    def only(z):
        out = torch.zeros_like(z)
        out[:, keep] = z[:, keep]
        return out

    with torch.inference_mode():
        with capture(lm, ("heads",), layers=[0]) as cap:
            model(BATCH)
        with edit_heads(lm, {0: only}), capture(lm, ("attn",), layers=[0]) as alone:
            model(BATCH)
    want = cap.get("heads", 0)[:, keep] + cap.head_bias(0)
    torch.testing.assert_close(alone.get("attn", 0), want, rtol=1e-5, atol=1e-5)
    assert cap.head_bias(0).abs().max() > 0.01 or arch in ("llama", "qwen2", "granite")


def test_wrong_projection_refuses_heads_in_one_sentence(tiny_models, monkeypatch):
    model, tok = tiny_models("gpt2")
    monkeypatch.setitem(ROLES, "gpt2", dataclasses.replace(ROLES["gpt2"],
                                                           attn_proj="mlp.c_proj"))
    lm = load_model(model, tok)  # the model itself still loads
    text = lm.heads_refusal
    assert text and "heads role is not available for this gpt2 model" in text
    assert "\n" not in text and text.endswith("(attn).")
    with pytest.raises(UserError, match="heads role is not available"):
        with capture(lm, ("heads",)):
            pass


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_are_the_final_norm_through_w_u_times_the_logit_multiplier(tiny_models, arch):
    """What the direct effects scale by: every type's logits equal its final norm's output
    times W_U (plus the unembedding's bias), times ``logit_multiplier`` (Granite 1/4,
    Cohere 0.25 here; 1 elsewhere). Gemma 2's soft-cap is off in this check."""
    overrides = {"final_logit_softcapping": None} if arch.startswith("gemma") else {}
    model, tok = tiny_models(arch, **overrides)
    model = copy.deepcopy(model)  # the session's models stay as built
    if arch == "granite":  # distinctive scales (Cohere's model keeps a copy of its own)
        model.config.logits_scaling = 4.0
    if arch == "cohere":
        model.config.logit_scale = model.logit_scale = 0.25
    lm = load_model(model, tok)
    seen = []
    handle = lm.final_norm.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.inference_mode():
            logits = model(BATCH).logits
    finally:
        handle.remove()
    bias = getattr(model.get_output_embeddings(), "bias", None)
    want = seen[0] @ lm.unembedding().T + (0 if bias is None else bias)
    multiplier = logit_multiplier(model.config)
    assert multiplier == {"granite": 0.25, "cohere": 0.25}.get(arch, 1.0)
    torch.testing.assert_close(logits, want * multiplier, atol=1e-5, rtol=1e-4)

"""Binary and ternary weight quantization with a straight-through estimator (BitNet-style).

Weights carry a leading seed axis; each seed's matrix gets its own scale beta = mean |W|:

* binary (BitNet): ``sign(W - mean(W)) * beta``;
* ternary (BitNet b1.58): ``clip(round(W / beta), -1, 1) * beta``.

The forward pass sees the quantized weights; gradients flow to the latent full-precision
weights unchanged (``Q.detach() + (W - W.detach())``). Activations stay in full precision.
"""

from __future__ import annotations

import torch

QUANT_MODES = ("none", "binary", "ternary")
_EPS = 1e-8


def quantize(w: torch.Tensor, mode: str) -> torch.Tensor:
    """The quantized value of ``w`` (seed axis first), without the estimator."""
    if mode == "none":
        return w
    dims = tuple(range(1, w.dim()))
    beta = w.abs().mean(dim=dims, keepdim=True)
    if mode == "binary":
        centered = w - w.mean(dim=dims, keepdim=True)
        return torch.where(centered >= 0, 1.0, -1.0).to(w.dtype) * beta
    if mode == "ternary":
        return (w / (beta + _EPS)).round().clamp(-1, 1) * beta
    raise ValueError(f"unknown quantization {mode!r}; choose one of {QUANT_MODES}")


def quantize_ste(w: torch.Tensor, mode: str) -> torch.Tensor:
    """Quantized forward value with a straight-through (identity) gradient."""
    if mode == "none":
        return w
    return quantize(w, mode).detach() + (w - w.detach())  # exact value, identity gradient

"""The ``heads`` role: what each attention head adds to the residual stream.

The attention output projection (``Roles.attn_proj``: ``o_proj``, ``c_proj``, ``dense``,
``out_proj``) sees the heads' outputs side by side, N x T x (H * d_head), H the number of
*query* heads (grouped-query attention shares keys and values, not outputs). Head i adds
``z_i W_i`` where W_i is its d_head-row block of the projection (GPT-2's ``Conv1D`` stores
(in, out), ``nn.Linear`` (out, in): the column block of its weight); the projection's bias is
one more term. The block's multiplier (Granite's ``residual_multiplier``) scales every term.

Under a post-attention norm (Gemma-2/3, OLMo-2/3: ``post_attention_layernorm``) the block
adds norm(o), o = sum_i z_i W_i (+ bias). An RMSNorm is y = w * o / rms(o), a LayerNorm
w * (o - mean(o)) / std(o) + beta: nonlinear only through the scale. With that scale frozen
at the value it takes on the whole output o, each head's share w * c(z_i W_i) / s(o) (c the
centring, if any) is linear and the shares sum exactly to y - beta; beta joins the bias term.
``FrozenNorm`` reads w, beta and the centring from the norm module itself (two probe calls)
and s(o) from the forward's own input and output, ``s = |w * c(o)| / |y - beta|``, so no
epsilon or class-specific formula (Gemma's 1 + w) is assumed. The same frozen map gives a
head's direct effect through the final norm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from llm_fourier.errors import UserError
from llm_fourier.model.architectures import is_conv1d, projection, scale_of

HEAD_COUNT_KEYS = ("num_attention_heads", "n_head", "num_heads", "n_heads")


class FrozenNorm:
    """A norm's linear map at a frozen scale: ``f(h) = w * c(h) / s``."""

    def __init__(self, norm: nn.Module, width: int) -> None:
        param = next(norm.parameters(), None)
        dev, dtype = (param.device, param.dtype) if param is not None else ("cpu",
                                                                            torch.float32)
        alt = torch.ones(width, device=dev, dtype=torch.float32)
        alt[1::2] = -1
        # mean 0, |alt| = sqrt(width): the scale is the same for +-alt; forward() runs no hooks
        with torch.no_grad():
            plus, minus = (norm.forward((s * 64 * alt).to(dtype)[None]).float()[0] for s in (1, -1))
            self.beta = (plus + minus) / 2
            self.w = (plus - minus) / 2 * alt  # w up to a constant factor (cancels in s)
            flat = norm.forward(torch.full((1, width), 64.0, device=dev, dtype=dtype)).float()[0]
        # a centring norm maps a constant row to beta; an RMSNorm to w * 1 / rms
        self.centres = bool((flat - self.beta).norm() < 1e-3 * self.w.norm())

    def centre(self, h: Tensor) -> Tensor:
        return h - h.mean(-1, keepdim=True) if self.centres else h

    def scale(self, x: Tensor, y: Tensor) -> Tensor:
        """s per row (``...`` x 1) from the norm's input rows x and output rows y."""
        w = self.w.to(x.device)
        num = (w * self.centre(x.float())).norm(dim=-1, keepdim=True)
        den = (y.float() - self.beta.to(y.device)).norm(dim=-1, keepdim=True)
        return num / den.clamp_min(torch.finfo(torch.float32).tiny)

    def apply(self, h: Tensor, s: Tensor) -> Tensor:
        """``w * c(h) / s`` for terms h (``...`` x D) with s broadcast against them."""
        return self.w.to(h.device) * self.centre(h) / s


def n_heads(config) -> int | None:
    """The number of query heads named by the config (None when it names none)."""
    for key in HEAD_COUNT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass(frozen=True)
class HeadSite:
    """Where a layer's heads are read: the projection, its head blocks, the multiplier and
    the post-norm the block applies after it (None: the projection output is added)."""

    proj: nn.Module
    n_heads: int
    d_head: int
    scale: float = 1.0
    norm: nn.Module | None = None
    frozen: FrozenNorm | None = None

    def blocks(self) -> Tensor:
        """H x d_head x D: head i's rows of the projection as a right factor (float32)."""
        w = self.proj.weight.detach().float()
        w = w if is_conv1d(self.proj) else w.T  # (H * d_head) x D
        return w.reshape(self.n_heads, self.d_head, w.shape[-1])

    def split(self, z: Tensor) -> Tensor:
        """Per-head terms (... x H x D, float32) of projection inputs z (... x H * d_head)."""
        z = z.float().reshape(*z.shape[:-1], self.n_heads, self.d_head)
        w = self.blocks().to(z.device)
        return torch.einsum("...hd,hdo->...ho", z, w)

    def bias(self, like: Tensor) -> Tensor:
        """The projection's bias as rows shaped like one head term (zeros if it has none)."""
        b = getattr(self.proj, "bias", None)
        if b is None:
            return like.new_zeros(like.shape)
        return b.detach().float().to(like.device).expand(like.shape).clone()


def _in_width(proj: nn.Module) -> int:
    return proj.weight.shape[0] if is_conv1d(proj) else proj.weight.shape[1]


def head_site(lm, layer: int) -> HeadSite:
    """The ``HeadSite`` of ``layer``; one sentence when the model's heads cannot be read."""
    refused = getattr(lm, "heads_refusal", None)
    if refused:
        raise UserError(refused)
    config = getattr(lm.model, "config", None)
    proj = projection(lm.block(layer), lm.roles, "attn", lm.d_model)
    h = n_heads(config)
    if proj is None or h is None or _in_width(proj) % h:
        what = ("no attention output projection writing d_model" if proj is None else
                "no head count in its config" if h is None else
                f"a projection input of {_in_width(proj)} not divisible by {h} heads")
        raise UserError(f"cannot split {lm.name}'s attention into heads ({what}); add its "
                        "attn_proj to llm_fourier.model.architectures.ROLES.")
    site = lm.site(layer, "attn")
    norm = None if any(m is proj for m in site.module.modules()) else site.module
    return HeadSite(proj, h, _in_width(proj) // h, scale_of(config, lm.roles.attn.scale), norm,
                    FrozenNorm(norm, lm.d_model) if norm is not None else None)


def head_capture_hooks(site: HeadSite, rows: Callable[[Tensor], Tensor],
                       keep: Callable[[Tensor], None]) -> list:
    """Hooks that ``keep`` the heads and the bias term, ``... x (H + 1) x D`` (float32), at
    the rows ``rows`` selects from an N x T x W tensor; the handles are the caller's to
    remove. Nothing is returned from a hook: the forward is unchanged."""
    pending: list[Tensor] = []

    def terms(z: Tensor) -> Tensor:
        heads = site.split(z)
        return torch.cat([heads, site.bias(heads[..., :1, :])], dim=-2)

    def pre(module, args) -> None:
        z = args[0].detach()
        if z.dim() != 3:
            raise UserError(f"the attention output projection saw a tensor of shape "
                            f"{tuple(z.shape)}, not N x T x (H * d_head).")
        t = terms(rows(z))
        if site.norm is None:
            keep(t * site.scale if site.scale != 1.0 else t)
        else:
            pending.append(t)

    def post(module, args, output) -> None:
        t = pending.pop()
        x = rows(args[0].detach())
        y = rows((output[0] if isinstance(output, (tuple, list)) else output).detach())
        out = site.frozen.apply(t, site.frozen.scale(x, y)[..., None, :])
        out[..., -1, :] += site.frozen.beta.to(out.device)
        keep(out * site.scale if site.scale != 1.0 else out)

    handles = [site.proj.register_forward_pre_hook(pre)]
    if site.norm is not None:
        handles.append(site.norm.register_forward_hook(post))
    return handles

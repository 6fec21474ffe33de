"""A hand-built adder whose answer is a known function of the helix at operand a's token.

Width 64, two blocks, word-level tokenizer (numbers 0..200 single tokens). Coordinates:

* 0..6   helix of the token's number ``[A (n/100 - 1/2), cos, sin (2 pi n/T) for T in 2, 5, 10]``,
         written by block 0's MLP at every number token;
* 7..10  a large template vector (block 0's attention: a function of the prompt's first
         token), which nothing reads;
* 11..30 a random embedding per token, which nothing reads;
* 32..45 block 1's attention copies the helix coordinates of the last two number tokens
         (a, then b) to the last position.

The head reads the copies: logit(c) = sum_T cos(theta_a + theta_b - 2 pi c/T) (bilinear in
the circle coordinates) - 0.05 relu(|L_a + L_b - c| - 4)^2 (L: the decoded linear
coordinate). The circles fix c mod 10, the linear term only the tens, so the model needs
both: a helix fit restores it, a circle fit (no linear term) does not, and patching block
1 (after the copy) changes nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from llm_fourier.model.loading import LoadedModel, Roles
from llm_fourier.model.numbers import find_number_tokens
from llm_fourier.model.tokenizers import word_level_tokenizer

D = 64
PERIODS = (2, 5, 10)
A_LIN = 2.0
HELIX, NUISANCE, JUNK, COPY_A, COPY_B = (slice(0, 7), slice(7, 11), slice(11, 31),
                                         slice(32, 39), slice(39, 46))


def helix(n: torch.Tensor) -> torch.Tensor:
    n = n.to(torch.float32)
    cols = [A_LIN * (n / 100 - 0.5)]
    for T in PERIODS:
        cols += [torch.cos(2 * torch.pi * n / T), torch.sin(2 * torch.pi * n / T)]
    out = torch.stack(cols, -1)
    out[..., 2] = 0.0  # sin(pi n) is zero; keep it exact
    return out


def number_values(tokenizer, max_number: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """(the token ids of 0..max_number, token id -> the number it writes, -1 elsewhere)."""
    ids = torch.as_tensor(find_number_tokens(tokenizer, max_number).token_ids)
    value = torch.full((len(tokenizer),), -1, dtype=torch.long)
    value[ids] = torch.arange(len(ids))
    return ids, value


class _Context(nn.Module):
    """Holds the token ids and mask of the current forward for the blocks to read."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value)  # token id -> number (-1: not a number)
        self.ids: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None


class Nuisance(nn.Module):
    def __init__(self, ctx: _Context, vocab: int, gen: torch.Generator) -> None:
        super().__init__()
        self.ctx = [ctx]
        self.table = nn.Parameter(3 * torch.randn(vocab, 4, generator=gen))

    def forward(self, h):
        ids, mask = self.ctx[0].ids, self.ctx[0].mask
        first = ids.gather(1, mask.to(torch.long).argmax(-1, keepdim=True))[:, 0]
        out = torch.zeros_like(h)
        out[..., NUISANCE] = self.table[first][:, None, :]
        return out


class HelixMLP(nn.Module):
    def __init__(self, ctx: _Context) -> None:
        super().__init__()
        self.ctx = [ctx]

    def forward(self, h):
        value = self.ctx[0].value[self.ctx[0].ids]
        out = torch.zeros_like(h)
        out[..., HELIX] = helix(value.clamp(min=0)) * (value >= 0)[..., None]
        return out


class Mover(nn.Module):
    def __init__(self, ctx: _Context) -> None:
        super().__init__()
        self.ctx = [ctx]

    def forward(self, h):
        is_num = self.ctx[0].value[self.ctx[0].ids] >= 0
        out = torch.zeros_like(h)
        for row in range(h.shape[0]):
            where = torch.nonzero(is_num[row]).flatten()
            if len(where) >= 2:
                out[row, -1, COPY_A] = h[row, where[-2], HELIX]
                out[row, -1, COPY_B] = h[row, where[-1], HELIX]
        return out


class Zero(nn.Module):
    def forward(self, h):
        return torch.zeros_like(h)


class Block(nn.Module):
    def __init__(self, attn: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.attn, self.mlp = attn, mlp

    def forward(self, h):
        h = h + self.attn(h)
        return h + self.mlp(h)


class Head(nn.Module):
    def __init__(self, ctx: _Context, number_ids: torch.Tensor, vocab: int) -> None:
        super().__init__()
        self.ctx = [ctx]
        self.register_buffer("number_ids", number_ids)
        self.weight = nn.Parameter(torch.zeros(vocab, D))  # the unembedding API only

    def forward(self, h):
        a, b = h[..., COPY_A], h[..., COPY_B]
        c = torch.arange(len(self.number_ids), dtype=torch.float32)
        number_logits = torch.zeros(*h.shape[:-1], len(c))
        for j, T in enumerate(PERIODS):
            ca, sa = a[..., 1 + 2 * j], a[..., 2 + 2 * j]
            cb, sb = b[..., 1 + 2 * j], b[..., 2 + 2 * j]
            cos_ab, sin_ab = ca * cb - sa * sb, sa * cb + ca * sb
            phi = 2 * torch.pi * c / T
            number_logits += cos_ab[..., None] * torch.cos(phi) + sin_ab[..., None] * torch.sin(phi)
        total = 100 * (a[..., 0] / A_LIN + 0.5) + 100 * (b[..., 0] / A_LIN + 0.5)
        number_logits -= 0.05 * torch.relu((total[..., None] - c).abs() - 4) ** 2
        logits = torch.full((*h.shape[:-1], self.weight.shape[0]), -10.0)
        logits[..., self.number_ids] = number_logits
        return logits


class _Output(dict):
    """What a Hugging Face forward returns, as far as the engine reads it."""

    __getattr__ = dict.__getitem__


class PlantedAdder(nn.Module):
    def __init__(self, tokenizer, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        vocab = len(tokenizer)
        ids, value = number_values(tokenizer)
        self.ctx = _Context(value)
        self.embed = nn.Embedding(vocab, D)
        with torch.no_grad():
            self.embed.weight.zero_()
            self.embed.weight[:, JUNK] = torch.randn(vocab, JUNK.stop - JUNK.start,
                                                     generator=gen)
        self.blocks = nn.ModuleList([Block(Nuisance(self.ctx, vocab, gen), HelixMLP(self.ctx)),
                                     Block(Mover(self.ctx), Zero())])
        self.norm = nn.Identity()
        self.head = Head(self.ctx, ids, vocab)

    def forward(self, input_ids, attention_mask=None, **_ignored):
        self.ctx.ids = input_ids
        self.ctx.mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h)
        return _Output(logits=self.head(self.norm(h)), past_key_values=None)  # no cache


def planted_adder(seed: int = 0) -> LoadedModel:
    tok = word_level_tokenizer(200)
    model = PlantedAdder(tok, seed).eval()
    roles = Roles("blocks", "attn", "mlp", "norm", "head", "embed")
    return LoadedModel(model, tok, roles, "planted-adder")


def expected_answer(a: int, b: int) -> int:
    """The planted model's answer computed in numpy from the formula (for checks)."""
    c = np.arange(201)
    logits = sum(np.cos(2 * np.pi * (a + b - c) / T) for T in PERIODS)
    logits = logits - 0.05 * np.maximum(np.abs(a + b - c) - 4, 0) ** 2
    return int(np.argmax(logits))

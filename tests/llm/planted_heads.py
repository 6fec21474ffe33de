"""A hand-built model whose head 0 copies operand a's period-10 code to the last token.

Width 256, one block of 4 heads (d_head 8), word-level tokenizer (numbers 0..200 single
tokens). Coordinates of the residual stream:

* 0..1    a number token's embedding holds cos, sin (2 pi n / 10); head 0 (attending only to
          operand a's token) copies coordinates 0..7 of it, so at the last token it writes
          a's code there; the unembedding's number rows read it with 10 [cos, sin](2 pi c/10):
          a logit of 10 cos(2 pi (a - c) / 10), a pure period-10 spectrum;
* 8..31   a random embedding per token; heads 1 (uniform over the prompt), 2 (the first
          token) and 3 (the token itself) copy 8-wide slices of it, read by small random
          number rows: heads with no role;
* 32..232 one coordinate per number c: the block's "MLP" writes 3 at the ten numbers
          a + b - 5 .. a + b + 4 (an oracle of the window).

With b a multiple of 10 the answer a + b is the one number of the window with a's residue,
so the model is right only with head 0; mean-ablating head 0 leaves a ten-way tie.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig

from llm_fourier.model.loading import LoadedModel, Roles
from llm_fourier.model.tasks import Example
from llm_fourier.model.tokenizers import word_level_tokenizer
from tests.llm.planted import number_values

D, H, DH, ONE_HOT = 256, 4, 8, 32


class Attention(nn.Module):
    def __init__(self, ctx) -> None:
        super().__init__()
        self.ctx = [ctx]
        self.o_proj = nn.Linear(H * DH, D, bias=False)
        with torch.no_grad():
            self.o_proj.weight.zero_()
            self.o_proj.weight[:H * DH, :] = torch.eye(H * DH)

    def weights(self, mask: torch.Tensor) -> torch.Tensor:
        ids = self.ctx[0]["ids"]
        n, t = ids.shape
        w = torch.zeros(n, H, t, t)
        is_num = self.ctx[0]["value"][ids] >= 0
        for r in range(n):
            real = torch.nonzero(mask[r]).flatten()
            a_pos = torch.nonzero(is_num[r]).flatten()[-2]
            w[r, 0, :, a_pos] = 1.0
            w[r, 1][:, real] = 1.0 / len(real)
            w[r, 2, :, real[0]] = 1.0
            w[r, 3] = torch.eye(t)
        return w

    def forward(self, h):
        mask = self.ctx[0]["mask"]
        w = self.weights(mask)
        values = h[..., :H * DH].reshape(*h.shape[:2], H, DH).transpose(1, 2)  # N H T dh
        z = (w @ values).transpose(1, 2).reshape(*h.shape[:2], H * DH)
        return self.o_proj(z), w


class Oracle(nn.Module):
    def __init__(self, ctx) -> None:
        super().__init__()
        self.ctx = [ctx]

    def forward(self, h):
        ids, value = self.ctx[0]["ids"], self.ctx[0]["value"]
        out = torch.zeros_like(h)
        for r in range(ids.shape[0]):
            nums = value[ids[r]][value[ids[r]] >= 0]
            s = int(nums[-2] + nums[-1])
            lo, hi = max(s - 5, 0), min(s + 5, 201)
            out[r, -1, ONE_HOT + lo:ONE_HOT + hi] = 3.0
        return out


class Block(nn.Module):
    def __init__(self, ctx) -> None:
        super().__init__()
        self.self_attn, self.mlp = Attention(ctx), Oracle(ctx)

    def forward(self, h):
        a, w = self.self_attn(h)
        h = h + a
        return h + self.mlp(h), w


class PlantedHeads(nn.Module):
    def __init__(self, tokenizer, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        vocab = len(tokenizer)
        ids, value = number_values(tokenizer)
        self.ctx = {"value": value}
        self.config = PretrainedConfig(num_attention_heads=H, hidden_size=D,
                                       num_hidden_layers=1)
        self.embed = nn.Embedding(vocab, D)
        self.head = nn.Linear(D, vocab, bias=False)
        n = torch.arange(len(ids), dtype=torch.float32)
        with torch.no_grad():
            self.embed.weight.zero_()
            self.embed.weight[:, 8:32] = torch.randn(vocab, 24, generator=gen)
            self.embed.weight[ids, 0] = torch.cos(2 * torch.pi * n / 10)
            self.embed.weight[ids, 1] = torch.sin(2 * torch.pi * n / 10)
            self.head.weight.zero_()
            self.head.weight[ids, 0] = 10 * torch.cos(2 * torch.pi * n / 10)
            self.head.weight[ids, 1] = 10 * torch.sin(2 * torch.pi * n / 10)
            self.head.weight[ids, 8:32] = 0.05 * torch.randn(len(ids), 24, generator=gen)
            self.head.weight[ids, ONE_HOT + n.long()] = 1.0
        self.layers = nn.ModuleList([Block(self.ctx)])
        self.norm = nn.Identity()

    def forward(self, input_ids, attention_mask=None, past_key_values=None,
                output_attentions=False, **_ignored):
        """The cache keeps the earlier token ids (``planted_ids``): the forward reruns the
        whole sequence (the engine's prefix caching then changes nothing but is exercised)."""
        before = getattr(past_key_values, "planted_ids", None)
        if before is not None and before.shape[0] != input_ids.shape[0]:  # stacked conditions
            before = before.repeat(input_ids.shape[0] // before.shape[0], 1)
        ids = input_ids if before is None else torch.cat([before, input_ids], 1)
        if past_key_values is not None:
            past_key_values.planted_ids = ids
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask
        self.ctx.update(ids=ids, mask=mask)
        h = self.embed(ids)
        weights = []
        for block in self.layers:
            h, w = block(h)
            weights.append(w)
        return Output(logits=self.head(self.norm(h)), past_key_values=past_key_values,
                      attentions=tuple(weights) if output_attentions else None)


class Output(dict):
    """What the engine reads of a Hugging Face output: attributes and ``out[key]``."""

    __getattr__ = dict.__getitem__


def planted_heads(seed: int = 0) -> LoadedModel:
    tok = word_level_tokenizer(200)
    model = PlantedHeads(tok, seed).eval()
    roles = Roles("layers", "self_attn", "mlp", "norm", "head", "embed",
                  attn_proj="self_attn.o_proj")
    return LoadedModel(model, tok, roles, "planted-heads")


def planted_examples(n: int = 40, seed: int = 0) -> list[Example]:
    """Prompts whose b is a multiple of 10 (the answer has a's residue)."""
    rng = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        a = int(torch.randint(0, 100, (1,), generator=rng))
        b = 10 * int(torch.randint(0, 10, (1,), generator=rng))
        out.append(Example(a, b, a + b, f"Total of {a} and {b}. Answer: "))
    return out

"""Toy models of modular arithmetic, with several seeds stacked in one module.

Every parameter carries a leading seed axis S and the forward pass uses batched matmuls,
so S seeds train in one run. Seed s is initialised from its own generator
(``torch.Generator().manual_seed(s)``), so its weights do not depend on its companions.

* ``transformer`` -- Nanda et al.'s one-layer transformer on ``[x_1, .., x_k, =]``: no
  LayerNorm, learned positions, untied embed/unembed, ReLU MLP, optional binary/ternary
  quantized attention and MLP weights (toy.quantize). The answer reads the last position
  only, whose token is always "=" (id p): its query is one vector per seed, and keys and
  values of the input positions are looked up in per-token tables (p rows) instead of
  being projected per example.
* ``mlp`` -- Li et al.'s one-hidden-layer network with activation x^power on k one-hot
  inputs: ``logits = (sum_i W_in[i][x_i])^power @ W_out``.
* ``rnn`` -- a one-layer vanilla (Elman) RNN reading x_1..x_k; logits from the last state.

Each model also exposes what the analysis needs: ``embedding()`` (S, p, D),
``neuron_logit_map()`` (S, neurons, p) and ``neurons(x)`` (S, N, neurons).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from llm_fourier.errors import UserError
from toy.quantize import QUANT_MODES, quantize_ste

MODEL_KINDS = ("transformer", "mlp", "rnn")


class JsonConfig:
    """``to_dict`` / ``from_dict`` for the config dataclasses stored in checkpoints
    (unknown keys, e.g. from a newer version, are ignored)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class ModelConfig(JsonConfig):
    kind: str = "transformer"
    p: int = 113
    n_inputs: int = 2
    d_model: int = 128  # transformer
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 512
    width: int = 512  # hidden width of the mlp and the rnn
    power: int = 0  # mlp activation exponent; 0 means n_inputs (Li et al.)
    act: str = "relu"  # rnn activation: relu or tanh
    quant: str = "none"  # transformer weights: none, binary, ternary
    attn_bias: bool = False  # b_Q, b_K, b_V, b_O (TransformerLens models have them)
    unembed_bias: bool = False

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise UserError(f"unknown model kind {self.kind!r}; choose one of "
                            f"{', '.join(MODEL_KINDS)}.")
        if self.quant not in QUANT_MODES:
            raise UserError(f"unknown quantization {self.quant!r}; choose one of "
                            f"{', '.join(QUANT_MODES)}.")
        if self.quant != "none" and self.kind != "transformer":
            raise UserError("quantized weights are available for the transformer only; "
                            "use --model transformer or --quant none.")
        if self.act not in ("relu", "tanh"):
            raise UserError(f"unknown RNN activation {self.act!r}; choose relu or tanh.")


def lookup(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per-seed row lookup: table (S, V, *F), idx (S, N) -> (S, N, *F)."""
    S, V = table.shape[:2]
    flat = table.reshape(S * V, -1)
    offset = (torch.arange(S, device=idx.device) * V)[:, None]
    return F.embedding(idx + offset, flat).reshape(*idx.shape, *table.shape[2:])


class StackedModel(nn.Module):
    """Base: parameters named by ``spec()`` with a leading seed axis."""

    def __init__(self, cfg: ModelConfig, seeds, state: dict | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.seeds = [int(s) for s in seeds]
        spec = self.spec()
        if state is None:
            per_seed = [self._init_one(spec, s) for s in self.seeds]
            state = {name: torch.stack([d[name] for d in per_seed]) for name, _, _ in spec}
        for name, shape, _ in spec:
            t = state[name]
            if tuple(t.shape) != (len(self.seeds), *shape):
                raise UserError(f"parameter {name} has shape {tuple(t.shape)}, expected "
                                f"{(len(self.seeds), *shape)}; the checkpoint does not match "
                                f"its configuration.")
            self.register_parameter(name, nn.Parameter(t.detach().clone().float()))

    @staticmethod
    def _init_one(spec, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {name: torch.randn(shape, generator=g) * std if std else torch.zeros(shape)
                for name, shape, std in spec}

    def spec(self) -> list[tuple[str, tuple[int, ...], float]]:
        """(name, per-seed shape, init std; 0 = zeros) of every parameter, in init order."""
        raise NotImplementedError

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    def _expand(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(0).expand(self.n_seeds, *x.shape) if x.dim() == 2 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (S, N, p) of inputs x (S, N, k), or (N, k) shared by every seed."""
        return self._run(self._expand(x))[0]

    def neurons(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden activations (S, N, neurons) the output layer reads."""
        return self._run(self._expand(x))[1]

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def sum_squared_weights(self) -> torch.Tensor:
        """Per seed, the sum of squares of every (latent) parameter: (S,)."""
        return sum(p.detach().double().pow(2).flatten(1).sum(1) for p in self.parameters())

    def select(self, indices) -> StackedModel:
        """A new model holding the seeds at ``indices`` (copies)."""
        indices = list(indices)
        state = {n: p.detach()[indices] for n, p in self.named_parameters()}
        return type(self)(self.cfg, [self.seeds[i] for i in indices], state)


class Transformer(StackedModel):
    def spec(self):
        c = self.cfg
        d, H, dh, m, p, n_ctx = c.d_model, c.n_heads, c.d_head, c.d_mlp, c.p, c.n_inputs + 1
        s = 1 / math.sqrt(d)
        out = [("W_E", (p + 1, d), s), ("W_pos", (n_ctx, d), s), ("W_Q", (H, d, dh), s),
               ("W_K", (H, d, dh), s), ("W_V", (H, d, dh), s), ("W_O", (H, dh, d), s),
               ("W_in", (d, m), s), ("b_in", (m,), 0), ("W_out", (m, d), s),
               ("b_out", (d,), 0), ("W_U", (d, p), 1 / math.sqrt(p + 1))]
        if c.attn_bias:
            out += [("b_Q", (H, dh), 0), ("b_K", (H, dh), 0), ("b_V", (H, dh), 0),
                    ("b_O", (d,), 0)]
        if c.unembed_bias:
            out += [("b_U", (p,), 0)]
        return out

    def weight(self, name: str) -> torch.Tensor:
        """A weight as the forward pass sees it (quantized for W_Q/K/V/O, W_in, W_out)."""
        w = getattr(self, name)
        if name in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"):
            return quantize_ste(w, self.cfg.quant)
        return w

    def _bias(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return getattr(self, name) if hasattr(self, name) else like.new_zeros(())

    def _run(self, x):
        c = self.cfg
        S, N, k = x.shape
        p, H, dh = c.p, c.n_heads, c.d_head
        W_E, W_pos = self.W_E, self.W_pos
        W_kv = torch.cat([self.weight("W_K"), self.weight("W_V")], dim=-1)  # (S, H, d, 2dh)
        b_kv = torch.cat([self._bias("b_K", W_E).expand(S, H, dh),
                          self._bias("b_V", W_E).expand(S, H, dh)], dim=-1)
        x_eq = W_E[:, p] + W_pos[:, k]  # the last position's input, same for every example
        q = torch.einsum("sd,shde->she", x_eq, self.weight("W_Q")) + self._bias("b_Q", W_E)
        tok_kv = torch.einsum("svd,shdf->svhf", W_E, W_kv)  # (S, p + 1, H, 2dh)
        pos_kv = torch.einsum("sjd,shdf->sjhf", W_pos, W_kv) + b_kv[:, None]
        kv_eq = tok_kv[:, p] + pos_kv[:, k]  # (S, H, 2dh)
        tok_k, tok_v = tok_kv[:, :p, :, :dh], tok_kv[:, :p, :, dh:]
        scale = 1 / math.sqrt(dh)
        tok_score = torch.einsum("she,svhe->svh", q, tok_k) * scale  # (S, p, H)
        pos_score = torch.einsum("she,sjhe->sjh", q, pos_kv[..., :dh]) * scale
        eq_score = torch.einsum("she,she->sh", q, kv_eq[..., :dh]) * scale
        scores = [lookup(tok_score, x[..., j]) + pos_score[:, j, None] for j in range(k)]
        scores.append(eq_score[:, None].expand(S, N, H))
        attn = torch.stack(scores, dim=-1).softmax(dim=-1)  # (S, N, H, k + 1)
        z = attn[..., k, None] * kv_eq[:, None, :, dh:]
        for j in range(k):
            v_j = lookup(tok_v, x[..., j]) + pos_kv[:, j, None, :, dh:]
            z = z + attn[..., j, None] * v_j
        W_O = self.weight("W_O").reshape(S, H * dh, -1)
        resid = x_eq[:, None] + torch.bmm(z.reshape(S, N, H * dh), W_O)
        if hasattr(self, "b_O"):
            resid = resid + self.b_O[:, None]
        hidden = torch.relu(torch.baddbmm(self.b_in[:, None], resid, self.weight("W_in")))
        resid = resid + torch.baddbmm(self.b_out[:, None], hidden, self.weight("W_out"))
        logits = torch.bmm(resid, self.W_U)
        if hasattr(self, "b_U"):
            logits = logits + self.b_U[:, None]
        return logits, hidden

    def embedding(self) -> torch.Tensor:
        return self.W_E[:, : self.cfg.p]

    def neuron_logit_map(self) -> torch.Tensor:
        return torch.bmm(self.weight("W_out"), self.W_U)


class PowerMLP(StackedModel):
    """Li et al.: one hidden layer, activation x^power, no biases."""

    @property
    def power(self) -> int:
        return self.cfg.power or self.cfg.n_inputs

    def spec(self):
        c = self.cfg
        return [("W_in", (c.n_inputs, c.p, c.width), 1 / math.sqrt(c.n_inputs)),
                ("W_out", (c.width, c.p), 1 / math.sqrt(c.width))]

    def _run(self, x):
        pre = sum(lookup(self.W_in[:, i], x[..., i]) for i in range(x.shape[-1]))
        hidden = pre**self.power
        return torch.bmm(hidden, self.W_out), hidden

    def embedding(self) -> torch.Tensor:
        """Input weights of every input position side by side: (S, p, k * width)."""
        return torch.cat(list(self.W_in.unbind(1)), dim=-1)

    def neuron_logit_map(self) -> torch.Tensor:
        return self.W_out


class RNN(StackedModel):
    """h_1 = act(E[x_1] + b), h_t = act(E[x_t] + h_{t-1} W_h + b), logits = h_k W_U."""

    def spec(self):
        c = self.cfg
        out = [("E", (c.p, c.width), 1.0), ("W_h", (c.width, c.width), 1 / math.sqrt(c.width)),
               ("b_h", (c.width,), 0), ("W_U", (c.width, c.p), 1 / math.sqrt(c.width))]
        return out + ([("b_U", (c.p,), 0)] if c.unembed_bias else [])

    def _run(self, x):
        act = torch.relu if self.cfg.act == "relu" else torch.tanh
        h = act(lookup(self.E, x[..., 0]) + self.b_h[:, None])
        for j in range(1, x.shape[-1]):
            h = act(torch.baddbmm(lookup(self.E, x[..., j]) + self.b_h[:, None], h, self.W_h))
        logits = torch.bmm(h, self.W_U)
        if hasattr(self, "b_U"):
            logits = logits + self.b_U[:, None]
        return logits, h

    def embedding(self) -> torch.Tensor:
        return self.E

    def neuron_logit_map(self) -> torch.Tensor:
        return self.W_U


MODEL_CLASSES = {"transformer": Transformer, "mlp": PowerMLP, "rnn": RNN}


def build_model(cfg: ModelConfig, seeds, state: dict | None = None) -> StackedModel:
    """A model of ``cfg.kind`` for ``seeds``: fresh per-seed init, or from a stacked state."""
    return MODEL_CLASSES[cfg.kind](cfg, seeds, state)

"""Importers: synthetic state dicts of each format against forward passes in that format."""

import math

import pytest
import torch
from safetensors.torch import save_file

from llm_fourier.errors import UserError
from toy.data import make_task
from toy.importers import detect_format, load_checkpoint

p, d, H, dh, m = 7, 12, 3, 4, 10
V = p + 1


def rand(*shape, g):
    return torch.randn(*shape, generator=g) * 0.5


def nanda_state(seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"embed.W_E": rand(d, V, g=g), "pos_embed.W_pos": rand(3, d, g=g),
            "blocks.0.attn.W_K": rand(H, dh, d, g=g), "blocks.0.attn.W_Q": rand(H, dh, d, g=g),
            "blocks.0.attn.W_V": rand(H, dh, d, g=g), "blocks.0.attn.W_O": rand(d, H * dh, g=g),
            "blocks.0.attn.mask": torch.tril(torch.ones(3, 3)),
            "blocks.0.mlp.W_in": rand(m, d, g=g), "blocks.0.mlp.b_in": rand(m, g=g),
            "blocks.0.mlp.W_out": rand(d, m, g=g), "blocks.0.mlp.b_out": rand(d, g=g),
            "unembed.W_U": rand(d, V, g=g)}


def nanda_forward(S: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Nanda et al.'s Transformer.forward (their einsums), logits[:, -1, :-1]."""
    x = S["embed.W_E"][:, tokens].permute(1, 2, 0) + S["pos_embed.W_pos"]
    k = torch.einsum("ihd,bpd->biph", S["blocks.0.attn.W_K"], x)
    q = torch.einsum("ihd,bpd->biph", S["blocks.0.attn.W_Q"], x)
    v = torch.einsum("ihd,bpd->biph", S["blocks.0.attn.W_V"], x)
    scores = torch.einsum("biph,biqh->biqp", k, q)
    scores = torch.tril(scores) - 1e10 * (1 - S["blocks.0.attn.mask"])
    attn = torch.softmax(scores / math.sqrt(dh), dim=-1)
    z = torch.einsum("biph,biqp->biqh", v, attn)
    z_flat = z.permute(0, 2, 1, 3).reshape(z.shape[0], z.shape[2], -1)  # b q (i h)
    x = x + torch.einsum("df,bqf->bqd", S["blocks.0.attn.W_O"], z_flat)
    h = torch.relu(torch.einsum("md,bpd->bpm", S["blocks.0.mlp.W_in"], x)
                   + S["blocks.0.mlp.b_in"])
    x = x + torch.einsum("dm,bpm->bpd", S["blocks.0.mlp.W_out"], h) + S["blocks.0.mlp.b_out"]
    return (x @ S["unembed.W_U"])[:, -1, :-1]


def tl_state(seed=1) -> dict:
    g = torch.Generator().manual_seed(seed)
    s = {"embed.W_E": rand(V, d, g=g), "pos_embed.W_pos": rand(3, d, g=g)}
    for n in "QKV":
        s[f"blocks.0.attn.W_{n}"] = rand(H, d, dh, g=g)
        s[f"blocks.0.attn.b_{n}"] = rand(H, dh, g=g)
    s.update({"blocks.0.attn.W_O": rand(H, dh, d, g=g), "blocks.0.attn.b_O": rand(d, g=g),
              "blocks.0.attn.mask": torch.tril(torch.ones(3, 3)).bool(),
              "blocks.0.attn.IGNORE": torch.tensor(-1e5),
              "blocks.0.mlp.W_in": rand(d, m, g=g), "blocks.0.mlp.b_in": rand(m, g=g),
              "blocks.0.mlp.W_out": rand(m, d, g=g), "blocks.0.mlp.b_out": rand(d, g=g),
              "unembed.W_U": rand(d, p, g=g), "unembed.b_U": rand(p, g=g)})
    return s


def tl_forward(S: dict, tokens: torch.Tensor) -> torch.Tensor:
    """HookedTransformer's conventions: W_Q (h, d, e), W_O (h, e, d), W_in (d, m)."""
    x = S["embed.W_E"][tokens] + S["pos_embed.W_pos"]
    q, k, v = (torch.einsum("bpd,hde->bphe", x, S[f"blocks.0.attn.W_{n}"])
               + S[f"blocks.0.attn.b_{n}"] for n in "QKV")
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(dh)
    scores = scores.masked_fill(~S["blocks.0.attn.mask"], -1e5)
    z = torch.einsum("bhqk,bkhe->bqhe", scores.softmax(-1), v)
    x = x + torch.einsum("bqhe,hed->bqd", z, S["blocks.0.attn.W_O"]) + S["blocks.0.attn.b_O"]
    h = torch.relu(x @ S["blocks.0.mlp.W_in"] + S["blocks.0.mlp.b_in"])
    x = x + h @ S["blocks.0.mlp.W_out"] + S["blocks.0.mlp.b_out"]
    return (x @ S["unembed.W_U"] + S["unembed.b_U"])[:, -1]


class PickledConfig:  # a Python object in a checkpoint: needs unpickling to load
    def __init__(self):
        self.p, self.frac_train, self.seed = p, 0.5, 3


def tokens():
    x = make_task("a+b", p).inputs
    return x, torch.cat([x, torch.full((len(x), 1), p)], dim=1)


def test_nanda_checkpoint_matches_their_forward(tmp_path):
    state = nanda_state()
    path = tmp_path / "nanda.pth"
    torch.save({"model": state, "config": {"p": p, "frac_train": 0.3, "seed": 0}}, path)
    loaded = load_checkpoint(path)
    assert loaded.format == "nanda" and loaded.model.cfg.p == p
    assert loaded.task == {"op": "a+b", "p": p, "n_inputs": 2, "train_frac": 0.3,
                           "data_seed": 0, "split": "nanda"}
    x, toks = tokens()
    torch.testing.assert_close(loaded.model(x)[0], nanda_forward(state, toks),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_transformerlens_state_dict_matches_its_forward(tmp_path, suffix):
    state = tl_state()
    path = tmp_path / f"tl{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = load_checkpoint(path)
    assert loaded.format == "transformerlens"
    x, toks = tokens()
    torch.testing.assert_close(loaded.model(x)[0], tl_forward(state, toks),
                               rtol=1e-4, atol=1e-4)


def test_detection_and_unsafe_files(tmp_path):
    assert detect_format(nanda_state()) == "nanda"
    assert detect_format({"model": tl_state(), "config": {}}) == "transformerlens"
    with pytest.raises(UserError, match="embed.W_E"):
        detect_format({"foo": torch.zeros(1)})
    bad = dict(tl_state(), **{"blocks.0.ln1.w": torch.ones(d)})
    torch.save(bad, tmp_path / "ln.pt")
    with pytest.raises(UserError, match="LayerNorm"):
        load_checkpoint(tmp_path / "ln.pt")

    torch.save({"model": nanda_state(), "config": PickledConfig()}, tmp_path / "obj.pt")
    with pytest.raises(UserError, match="trust-pickle"):
        load_checkpoint(tmp_path / "obj.pt")
    trusted = load_checkpoint(tmp_path / "obj.pt", trust_pickle=True)
    assert trusted.task["train_frac"] == 0.5 and trusted.task["data_seed"] == 3
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")

"""Load grokking checkpoints: ours, Nanda et al.'s progress-measures code, TransformerLens.

Files are read safely: ``.safetensors`` with safetensors (ours: ``toy.checkpoint``),
anything else with ``torch.load(weights_only=True)``; unpickling arbitrary objects needs
``trust_pickle``, which says what it risks.
Foreign weights are converted to the layout of ``toy.models.Transformer`` (one seed):

* Nanda et al. (``{"model": state_dict, "config": ...}``): ``embed.W_E`` (d_model,
  d_vocab), ``pos_embed.W_pos`` (n_ctx, d_model), ``blocks.0.attn.W_Q/W_K/W_V`` (heads,
  d_head, d_model), ``blocks.0.attn.W_O`` (d_model, heads * d_head), ``blocks.0.mlp.W_in``
  (d_mlp, d_model), ``b_in``, ``W_out`` (d_model, d_mlp), ``b_out``, ``unembed.W_U``
  (d_model, d_vocab); no biases in attention, no unembedding bias.
* TransformerLens ``HookedTransformer``: ``embed.W_E`` (d_vocab, d_model), ``W_Q/W_K/W_V``
  (heads, d_model, d_head) with ``b_Q/b_K/b_V`` (heads, d_head), ``W_O`` (heads, d_head,
  d_model), ``b_O``, ``W_in`` (d_model, d_mlp), ``W_out`` (d_mlp, d_model), ``unembed.W_U``
  (d_model, d_vocab_out), ``b_U``; only models without LayerNorm (``normalization_type
  None``) and with a ReLU MLP, as in the grokking setups.

The token "=" is id p (d_vocab = p + 1); an unembedding with p + 1 columns is cut to the p
answers, as Nanda et al.'s analysis does (``logits[:, -1, :-1]``).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llm_fourier.errors import UserError
from toy.checkpoint import CHECKPOINT_FORMAT, is_ours, read_checkpoint, split_prefix
from toy.models import ModelConfig, StackedModel, Transformer, build_model

FORMATS = ("auto", "ours", "nanda", "transformerlens")


@dataclass
class Loaded:
    model: StackedModel
    format: str
    task: dict  # op, p, n_inputs, train_frac, data_seed, split ("ours" or "nanda")
    history: list[dict] = field(default_factory=list)


def read_file(path: str | Path, trust_pickle: bool = False):
    """The object stored in ``path`` (safetensors -> dict of tensors)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass the path of a .pt, .pth "
                        f"or .safetensors file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:
            raise UserError(f"{path} is not a readable safetensors file "
                            f"({type(err).__name__}).") from None
    if trust_pickle:
        print(f"warning: unpickling {path} with --trust-pickle: a crafted file can run any code "
              "on this machine.")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "weights_only" not in text.lower() and "Weights only load failed" not in text:
            raise UserError(f"{path} is not a torch checkpoint ({text.splitlines()[0][:80]}); "
                            "pass a .pt/.pth file written by torch.save, or a "
                            ".safetensors file.") from None
        raise UserError(f"{path} holds Python objects that cannot be loaded safely; re-save "
                        "its config as a plain dict, or pass --trust-pickle if you trust the "
                        "file (unpickling can run code).") from None
    except Exception as err:  # zip / tar / truncated-file errors of torch.load
        raise UserError(f"{path} is not a readable torch checkpoint "
                        f"({type(err).__name__}); pass a .pt/.pth or .safetensors file.") from None


def _split_state(obj) -> tuple[dict, dict]:
    if not isinstance(obj, dict):
        raise UserError("the checkpoint is not a state dict or a dict holding one.")
    if isinstance(obj.get("model"), dict):
        cfg = obj.get("config") or {}
        return obj["model"], cfg if isinstance(cfg, dict) else dict(vars(cfg))
    return obj, {}


def detect_format(obj) -> str:
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return "ours"
    state, _ = _split_state(obj)
    w_o = state.get("blocks.0.attn.W_O")
    if w_o is None or "embed.W_E" not in state:
        raise UserError("unrecognised checkpoint: expected keys embed.W_E and "
                        "blocks.0.attn.W_O (Nanda et al. or TransformerLens); pass --format.")
    return "nanda" if w_o.dim() == 2 else "transformerlens"


def _check_one_layer(state: dict) -> None:
    if any(k.startswith("blocks.1.") for k in state):
        raise UserError("only one-layer transformers can be analysed; this checkpoint has "
                        "more blocks.")
    if any(".ln" in k or k.startswith("ln_final") for k in state):
        raise UserError("this checkpoint has LayerNorm weights; only models without "
                        "LayerNorm (the grokking setup) can be analysed.")


def _get(state: dict, key: str) -> torch.Tensor:
    if key not in state:
        raise UserError(f"the checkpoint lacks {key}; is it a one-layer grokking transformer?")
    return state[key].detach().float()


def from_nanda(state: dict) -> Transformer:
    """A one-seed Transformer from Nanda et al.'s state dict."""
    _check_one_layer(state)
    W_E = _get(state, "embed.W_E").T  # (d_vocab, d_model)
    p = W_E.shape[0] - 1
    W_Q, W_K, W_V = (_get(state, f"blocks.0.attn.W_{n}").transpose(1, 2) for n in "QKV")
    H, d, dh = W_Q.shape
    W_O = _get(state, "blocks.0.attn.W_O").T.reshape(H, dh, d)
    W_in = _get(state, "blocks.0.mlp.W_in").T
    params = {"W_E": W_E, "W_pos": _get(state, "pos_embed.W_pos"), "W_Q": W_Q, "W_K": W_K,
              "W_V": W_V, "W_O": W_O, "W_in": W_in, "b_in": _get(state, "blocks.0.mlp.b_in"),
              "W_out": _get(state, "blocks.0.mlp.W_out").T,
              "b_out": _get(state, "blocks.0.mlp.b_out"),
              "W_U": _get(state, "unembed.W_U")[:, :p]}
    cfg = ModelConfig(kind="transformer", p=p, n_inputs=params["W_pos"].shape[0] - 1,
                      d_model=d, n_heads=H, d_head=dh, d_mlp=W_in.shape[1])
    return build_model(cfg, [0], {k: v[None] for k, v in params.items()})


def from_transformerlens(state: dict) -> Transformer:
    """A one-seed Transformer from a HookedTransformer state dict (no LayerNorm, ReLU)."""
    _check_one_layer(state)
    W_E = _get(state, "embed.W_E")
    W_U = _get(state, "unembed.W_U")
    p = W_E.shape[0] - 1
    if W_U.shape[1] < p:
        raise UserError(f"the unembedding has {W_U.shape[1]} outputs for {p} numbers; "
                        f"expected d_vocab = p + 1 and d_vocab_out >= p.")
    W_Q = _get(state, "blocks.0.attn.W_Q")
    H, d, dh = W_Q.shape
    zeros = torch.zeros
    params = {"W_E": W_E[: p + 1], "W_pos": _get(state, "pos_embed.W_pos"), "W_Q": W_Q,
              "W_K": _get(state, "blocks.0.attn.W_K"), "W_V": _get(state, "blocks.0.attn.W_V"),
              "W_O": _get(state, "blocks.0.attn.W_O"),
              "W_in": _get(state, "blocks.0.mlp.W_in"), "b_in": _get(state, "blocks.0.mlp.b_in"),
              "W_out": _get(state, "blocks.0.mlp.W_out"),
              "b_out": _get(state, "blocks.0.mlp.b_out"), "W_U": W_U[:, :p]}
    for n, shape in (("b_Q", (H, dh)), ("b_K", (H, dh)), ("b_V", (H, dh)), ("b_O", (d,))):
        key = f"blocks.0.attn.{n}"
        params[n] = _get(state, key) if key in state else zeros(shape)
    params["b_U"] = _get(state, "unembed.b_U")[:p] if "unembed.b_U" in state else zeros(p)
    cfg = ModelConfig(kind="transformer", p=p, n_inputs=params["W_pos"].shape[0] - 1,
                      d_model=d, n_heads=H, d_head=dh, d_mlp=params["W_in"].shape[1],
                      attn_bias=True, unembed_bias=True)
    return build_model(cfg, [0], {k: v[None] for k, v in params.items()})


def _ours(info: dict, params: dict) -> Loaded:
    cfg = ModelConfig.from_dict(info["model_config"])
    tc = info["train_config"]
    task = {k: tc[k] for k in ("op", "p", "n_inputs", "train_frac", "data_seed")}
    return Loaded(build_model(cfg, info["seeds"], params), "ours", {**task, "split": "ours"},
                  list(info.get("history", [])))


def load_checkpoint(path: str | Path, fmt: str = "auto", trust_pickle: bool = False) -> Loaded:
    """Read any supported checkpoint into a ``Loaded`` (model, format, task, history)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if Path(path).suffix == ".safetensors" and is_ours(path):
        if fmt not in ("auto", "ours"):
            raise UserError(f"{path} is a 'toy train' checkpoint, not --format {fmt}.")
        info, tensors = read_checkpoint(path)
        return _ours(info, split_prefix(tensors, "model"))
    obj = read_file(path, trust_pickle)
    fmt = detect_format(obj) if fmt == "auto" else fmt
    if fmt == "ours":  # version 1 of our format: a torch file of plain tensors and dicts
        if not (isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT):
            raise UserError(f"{path} was not written by 'llm-fourier toy train'.")
        return _ours(obj, obj["model"])
    state, config = _split_state(obj)
    model = from_nanda(state) if fmt == "nanda" else from_transformerlens(state)
    task = {"op": "a+b", "p": model.cfg.p, "n_inputs": model.cfg.n_inputs,
            "train_frac": config.get("frac_train"), "data_seed": config.get("seed"),
            "split": "nanda" if fmt == "nanda" else "ours"}
    if config.get("p") not in (None, model.cfg.p):
        raise UserError(f"the config says p = {config['p']} but the weights have "
                        f"{model.cfg.p} numbers; the checkpoint is inconsistent.")
    return Loaded(model, fmt, task)

"""Architecture roles as data: where each block's residual contributions are read and written.

A role names what a block adds to the residual stream. ``Roles`` holds, per model type, the
module paths of the blocks, the final norm, the unembedding and the input embedding, and for
attention and MLP a ``Contribution``: the module whose output (element 0 of a tuple), times
a config multiplier where the block scales it, is exactly what the block adds. Facts taken
from transformers 5 (``models/<type>/modeling_<type>.py``), each pinned by a test:

- Gemma-2/3, OLMo-2/3 normalise the attention and MLP outputs before adding them: the roles
  are ``post_attention_layernorm`` / ``post_feedforward_layernorm``. (In Llama-style blocks
  ``post_attention_layernorm`` is the MLP's *input* norm; those blocks have no post-FFN norm.)
- Granite adds ``output * config.residual_multiplier`` and scales the embedding by
  ``config.embedding_multiplier``.
- Bloom's attention and MLP add the residual inside their own forward (``dropout_add``); their
  last linear layers (``self_attention.dense``, ``mlp.dense_4h_to_h``) give the contribution
  itself, without subtracting the residual (which would cancel bits in half precision).
  Bloom normalises the token embedding (``word_embeddings_layernorm``) before block 0.
- OPT's MLP has no module of its own: ``fc2`` sees (N*T) x D rows (``flat``); OPT may project
  the embedding (``project_in``) and adds learned position embeddings, as GPT-2 does.
- Gemma's sqrt(d) embedding scale lives in its embedding module (``*ScaledWordEmbedding``).

``attn_proj`` / ``mlp_proj`` name the attention output projection (its input is the heads'
outputs side by side, N x T x (H * d_head)) and the MLP down projection (its input is the
neuron activations): the ``heads`` role and the Fourier neurons read them. GPT-2's ``Conv1D``
stores its weight as (in, out), every ``nn.Linear`` as (out, in). Where they are unset (a
mixture of experts has no single down projection) or do not resolve, ``projection``
discovers the last Linear / Conv1D inside the role's module that writes d_model.

Unknown types go through ``discover_roles``; the self-check in ``roles_check`` verifies any
roles against the model's own block outputs at load.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from llm_fourier.errors import UserError


@dataclass(frozen=True)
class Contribution:
    """What a block adds: ``path``'s output (relative to the block), times the config value
    ``scale`` when set; ``flat`` when the module sees (N*T) x D rows instead of N x T x D."""

    path: str
    scale: str | None = None
    flat: bool = False


def _contribution(value: str | Contribution) -> Contribution:
    return value if isinstance(value, Contribution) else Contribution(value)


@dataclass(frozen=True)
class Roles:
    """Module paths from the model root (``attn`` / ``mlp`` relative to one block).

    ``embed_scale``: config attribute the model multiplies the token embedding by;
    ``embed_post``: a row-wise module applied to the token embedding before block 0 (skipped
    where the model sets it to None); ``positions``: learned position embeddings added to it.
    """

    blocks: str
    attn: Contribution | str
    mlp: Contribution | str
    final_norm: str
    unembed: str
    embed: str
    embed_scale: str | None = None
    embed_post: str | None = None
    positions: str | None = None
    attn_proj: str | None = None
    mlp_proj: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "attn", _contribution(self.attn))
        object.__setattr__(self, "mlp", _contribution(self.mlp))


_DECODER = Roles("model.layers", "self_attn", "mlp", "model.norm", "lm_head", "model.embed_tokens",
                 attn_proj="self_attn.o_proj", mlp_proj="mlp.down_proj")
_MOE = replace(_DECODER, mlp_proj=None)  # experts: no single down projection
_POST_NORM = Roles("model.layers", "post_attention_layernorm", "post_feedforward_layernorm",
                   "model.norm", "lm_head", "model.embed_tokens", attn_proj="self_attn.o_proj",
                   mlp_proj="mlp.down_proj")
_GPT2 = Roles("transformer.h", "attn", "mlp", "transformer.ln_f", "lm_head", "transformer.wte",
              positions="transformer.wpe", attn_proj="attn.c_proj", mlp_proj="mlp.c_proj")
_RESIDUAL = Contribution("self_attn", scale="residual_multiplier")

ROLES: dict[str, Roles] = {
    "gpt2": _GPT2,
    "gpt_neo": replace(_GPT2, attn_proj="attn.attention.out_proj"),
    "gpt_bigcode": _GPT2,
    "gptj": Roles("transformer.h", "attn", "mlp", "transformer.ln_f", "lm_head",
                  "transformer.wte", attn_proj="attn.out_proj", mlp_proj="mlp.fc_out"),
    "gpt_neox": Roles("gpt_neox.layers", "attention", "mlp", "gpt_neox.final_layer_norm",
                      "lm_head", "gpt_neox.embed_in", attn_proj="attention.dense",
                      mlp_proj="mlp.dense_4h_to_h"),
    "phi": Roles("model.layers", "self_attn", "mlp", "model.final_layernorm", "lm_head",
                 "model.embed_tokens", attn_proj="self_attn.dense", mlp_proj="mlp.fc2"),
    **{t: _DECODER for t in ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "olmo",
                             "cohere", "stablelm", "smollm3")},
    **{t: _MOE for t in ("mixtral", "qwen3_moe")},
    "starcoder2": replace(_DECODER, mlp_proj="mlp.c_proj"),
    **{t: _POST_NORM for t in ("gemma2", "gemma3_text", "olmo2", "olmo3")},
    "granite": Roles("model.layers", _RESIDUAL, Contribution("mlp", scale="residual_multiplier"),
                     "model.norm", "lm_head", "model.embed_tokens",
                     embed_scale="embedding_multiplier", attn_proj="self_attn.o_proj",
                     mlp_proj="mlp.down_proj"),
    "falcon": Roles("transformer.h", "self_attention", "mlp", "transformer.ln_f", "lm_head",
                    "transformer.word_embeddings", attn_proj="self_attention.dense",
                    mlp_proj="mlp.dense_4h_to_h"),
    "bloom": Roles("transformer.h", "self_attention.dense", "mlp.dense_4h_to_h",
                   "transformer.ln_f", "lm_head", "transformer.word_embeddings",
                   embed_post="transformer.word_embeddings_layernorm",
                   attn_proj="self_attention.dense", mlp_proj="mlp.dense_4h_to_h"),
    "opt": Roles("model.decoder.layers", "self_attn", Contribution("fc2", flat=True),
                 "model.decoder.final_layer_norm", "lm_head", "model.decoder.embed_tokens",
                 embed_post="model.decoder.project_in", positions="model.decoder.embed_positions",
                 attn_proj="self_attn.out_proj", mlp_proj="fc2"),
}


@dataclass(frozen=True)
class Refusal:
    """A configuration whose residual stream is not a sum of contributions."""

    applies: Callable[[object], bool]
    reason: str
    fix: str = field(default="analyse another model")


REFUSED: dict[str, list[Refusal]] = {
    "opt": [Refusal(lambda c: not getattr(c, "do_layer_norm_before", True),
                    "sets do_layer_norm_before=False (as opt-350m does): it normalises the "
                    "residual stream after every attention and MLP, so the stream is not a sum "
                    "of their outputs")],
    "bloom": [
        Refusal(lambda c: getattr(c, "apply_residual_connection_post_layernorm", False),
                "sets apply_residual_connection_post_layernorm=True: its residual is the "
                "normalised stream, so the stream is not a sum of the blocks' outputs"),
        Refusal(lambda c: getattr(c, "pretraining_tp", 1) > 1 and getattr(
            c, "slow_but_exact", False),
                "sets slow_but_exact=True with pretraining_tp > 1: its attention and MLP "
                "outputs come from sliced F.linear calls that no module hook sees",
                "set slow_but_exact=False in its config.json"),
    ],
}


def refusal(config) -> str | None:
    """One sentence when ``config`` describes a known layout whose stream does not decompose."""
    model_type = getattr(config, "model_type", None)
    for rule in REFUSED.get(model_type, ()):
        if rule.applies(config):
            return (f"this {model_type} model {rule.reason}, and llm-fourier's hooks need the "
                    "residual stream to be the embedding plus each block's contributions; "
                    f"{rule.fix}, or pass --skip-roles-check (load_model(..., verify=False)) "
                    "at your own risk.")
    return None


def submodule(model: nn.Module, path: str | None) -> nn.Module | None:
    """``model.get_submodule(path)``, also from a base model (the causal LM's
    ``base_model_prefix`` stripped); None where the attribute is unset or None."""
    if not path:
        return None
    candidates = [path]
    prefix = getattr(model, "base_model_prefix", "") + "."
    if path.startswith(prefix) and getattr(model, "base_model", None) is model:
        candidates.append(path[len(prefix):])
    for candidate in candidates:
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    return None


def scale_of(config, name: str | None) -> float:
    """The config value ``name`` (a multiplier), 1.0 when unset."""
    return 1.0 if name is None else float(getattr(config, name))


def logit_multiplier(config) -> float:
    """What the model multiplies ``final_norm(x) @ W_U.T`` by to give its logits: Granite
    divides by ``logits_scaling``, Cohere multiplies by ``logit_scale``; 1.0 elsewhere.
    (Gemma 2's soft-capping is not linear: direct effects there are before the cap.)"""
    multiplier = 1.0
    if getattr(config, "logits_scaling", None):
        multiplier /= float(config.logits_scaling)
    if str(getattr(config, "model_type", "")).startswith("cohere") and \
            getattr(config, "logit_scale", None) is not None:
        multiplier *= float(config.logit_scale)
    return multiplier


def embed_tokens(model: nn.Module, roles: Roles | None = None,
                 ids: torch.Tensor | None = None) -> torch.Tensor:
    """Token embeddings as the model adds them to the residual stream (before position
    embeddings): the embedding module's own output (Gemma's sqrt(d) scale included), times the
    config multiplier, through the row-wise ``embed_post`` module. ``ids=None``: all rows
    (vocab x D; W_E itself, not a copy, where nothing transforms it)."""
    roles = roles if roles is not None else ROLES.get(getattr(model.config, "model_type", None))
    module = model.get_input_embeddings()
    post = submodule(model, roles.embed_post) if roles else None
    scale = scale_of(model.config, roles.embed_scale) if roles else 1.0
    plain = type(module).forward is nn.Embedding.forward
    with torch.no_grad():
        if ids is None and plain and scale == 1.0 and post is None:
            return module.weight.detach()
        if ids is None:
            ids = torch.arange(module.weight.shape[0], device=module.weight.device)
        x = module(ids)
        if scale != 1.0:
            x = x * scale
        if post is not None:
            x = post(x)
    return x.detach()


_ATTN = re.compile(r"attn|attention", re.I)
_MLP = re.compile(r"mlp|ffn|feed_?forward", re.I)
_NORM = re.compile(r"norm|ln_?f", re.I)
_NOT_A_SUBLAYER = re.compile(r"norm|drop|^ln_?\d*$", re.I)
_POST_ATTN_NORM = re.compile(r"^post_?(self_?)?(attn|attention).*norm", re.I)
_POST_MLP_NORM = re.compile(r"^post_?(feed_?forward|ffw|ffn|mlp).*norm", re.I)
_POSITIONS = re.compile(r"^(wpe|pos|position)|positions?_?emb", re.I)


def path_of(model: nn.Module, target: nn.Module | None) -> str | None:
    if target is None:
        return None
    return next((n for n, m in model.named_modules() if m is target), None)


def discover_roles(model: nn.Module) -> Roles:
    """Guess roles from module names: the longest ``ModuleList`` is the stack of blocks; in
    block 0 the post-attention / post-feed-forward norms when it has both (Gemma-2 style),
    else the first children named like attention / MLP that are not norms or dropouts; the
    last norm outside the blocks;
    an ``nn.Embedding`` named like positions; ``residual_multiplier`` /
    ``embedding_multiplier`` from the config; the attention and MLP projections as
    ``projection`` finds them. The self-check at load verifies the guess."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise UserError(f"cannot find the transformer blocks of {type(model).__name__}: it has "
                        "no ModuleList; add its roles to llm_fourier.model.architectures.ROLES.")
    blocks, stack = max(lists, key=lambda nm: len(nm[1]))
    children = [n for n, _ in stack[0].named_children()]
    attn = next((n for n in children if _POST_ATTN_NORM.search(n)), None)
    mlp = next((n for n in children if _POST_MLP_NORM.search(n)), None)
    if attn is None or mlp is None:  # the sublayers themselves, not their norms or dropouts
        sublayers = [n for n in children if not _NOT_A_SUBLAYER.search(n)]
        attn = next((n for n in sublayers if _ATTN.search(n)), None)
        mlp = next((n for n in sublayers if _MLP.search(n)), None)
    outside = [(n, m) for n, m in model.named_modules()
               if n and not n.startswith(blocks + ".") and not list(m.children())]
    norms = [n for n, _ in outside if _NORM.search(n.rsplit(".", 1)[-1])]
    embed_layer = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    embed = path_of(model, embed_layer)
    unembed = path_of(model, model.get_output_embeddings()) if hasattr(
        model, "get_output_embeddings") else None
    positions = next((n for n, m in outside if isinstance(m, nn.Embedding)
                      and m is not embed_layer and _POSITIONS.search(n.rsplit(".", 1)[-1])),
                     None)
    found = {"attn": attn, "mlp": mlp, "final_norm": norms[-1] if norms else None,
             "embed": embed, "unembed": unembed}
    missing = [k for k, v in found.items() if v is None]
    if missing:
        raise UserError(f"cannot find the {', '.join(missing)} module(s) of "
                        f"{type(model).__name__} (blocks at {blocks!r}); add its roles to "
                        "llm_fourier.model.architectures.ROLES.")
    config = getattr(model, "config", None)
    scale = "residual_multiplier" if hasattr(config, "residual_multiplier") else None
    roles = Roles(blocks=blocks, attn=Contribution(attn, scale), mlp=Contribution(mlp, scale),
                  final_norm=found["final_norm"], unembed=unembed, embed=embed,
                  embed_scale="embedding_multiplier" if hasattr(
                      config, "embedding_multiplier") else None,
                  positions=positions)
    width = getattr(config, "hidden_size", None) or (embed_layer.weight.shape[1]
                                                     if embed_layer is not None else None)
    found_proj = {w: path_of(stack[0], projection(stack[0], roles, w, width))
                  for w in ("attn", "mlp")}
    roles = replace(roles, attn_proj=found_proj["attn"], mlp_proj=found_proj["mlp"])
    model_type = getattr(config, "model_type", type(model).__name__)
    print(f"llm-fourier: model type {model_type!r} is not in the roles table; discovered "
          f"{roles}", file=sys.stderr)
    return roles


def roles_for(model: nn.Module) -> Roles:
    """The roles of ``model``: from ``ROLES`` by ``config.model_type``, else discovered."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    roles = ROLES.get(model_type)
    if roles is not None and resolves(model, roles):
        return roles
    return discover_roles(model)  # unknown type, or a different layout (e.g. a base model)


def set_to_none(model: nn.Module, path: str) -> bool:
    """Whether ``path``'s last attribute exists and is None (OPT's final_layer_norm when it
    normalises after each sublayer, its project_in when it has none)."""
    parent, _, name = path.rpartition(".")
    try:
        owner = model.get_submodule(parent) if parent else model
    except AttributeError:
        return False
    return name in owner.__dict__ and owner.__dict__[name] is None


def resolves(model: nn.Module, roles: Roles) -> bool:
    """Whether every required path of ``roles`` names a module of ``model`` (a final norm the
    model sets to None counts: such a model is refused by the check, or used at one's risk)."""
    paths = [f"{roles.blocks}.0.{roles.attn.path}", f"{roles.blocks}.0.{roles.mlp.path}",
             roles.unembed, roles.embed]
    if roles.positions:
        paths.append(roles.positions)
    if not set_to_none(model, roles.final_norm):
        paths.append(roles.final_norm)
    try:
        for path in paths:
            model.get_submodule(path)
    except AttributeError:
        return False
    return True


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D``: weight stored as (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def out_width(module: nn.Module) -> int | None:
    """Output width of a Linear / Conv1D; None for other modules."""
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.nf if is_conv1d(module) else None


_SUBLAYER = {"attn": ("self_attn", "attn", "attention", "self_attention"),
             "mlp": ("mlp", "feed_forward", "ffn", "block_sparse_moe")}


def sublayer(block: nn.Module, roles: Roles, which: str) -> nn.Module:
    """The attention or MLP module itself (the role may name a post-norm after it)."""
    path = getattr(roles, which).path
    proj = getattr(roles, f"{which}_proj")
    if proj and "." in proj and not path.startswith(proj.rsplit(".", 1)[0]):
        found = submodule(block, proj.rsplit(".", 1)[0])
        if found is not None:
            return found
    for name in _SUBLAYER[which]:
        if isinstance(getattr(block, name, None), nn.Module):
            return getattr(block, name)
    return block.get_submodule(path)


def projection(block: nn.Module, roles: Roles, which: str, d_model: int) -> nn.Module | None:
    """The attention output projection (``which="attn"``) or MLP down projection
    (``"mlp"``) of ``block``: ``roles.<which>_proj`` when it resolves to a Linear / Conv1D
    writing d_model, else the last such module inside the sublayer (None if there is none)."""
    path = getattr(roles, f"{which}_proj")
    found = submodule(block, path)
    if found is not None and out_width(found) == d_model:
        return found
    inside = [m for m in sublayer(block, roles, which).modules() if out_width(m) == d_model]
    return inside[-1] if inside else None

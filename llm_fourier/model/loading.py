"""Load Hugging Face causal LMs (hub id, folder or GGUF file) and name their parts.

``load_model`` wraps ``from_pretrained`` (remote code off), turns "cannot get the weights"
(and weights that do not fit the config: ``sources.check_loading``) into one ``UserError``,
finds the roles (``architectures.roles_for``) and checks them (``roles_check``). A ``.gguf``
file (or a folder holding exactly one and no config.json) loads through transformers' GGUF
support, dequantized, with the tokenizer stored in its metadata (optional ``gguf`` package).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llm_fourier.errors import UserError
from llm_fourier.model.architectures import (  # noqa: F401 - re-exported
    ROLES,
    Contribution,
    Roles,
    discover_roles,
    embed_tokens,
    refusal,
    roles_for,
    scale_of,
)
from llm_fourier.model.hooks import Site
from llm_fourier.model.roles_check import verify_roles
from llm_fourier.model.sources import (  # noqa: F401 - re-exported
    cannot_load,
    from_pretrained,
    hub_reachable,
    load_config,
    load_tokenizer,
    resolve_source,
    unreadable_weights,
    weights_kwargs,
)

ROLE_NAMES = ("attn", "mlp", "block")


@dataclass
class LoadedModel:
    """A model, its tokenizer and its roles, with accessors for layers and matrices."""

    model: nn.Module
    tokenizer: object
    roles: Roles
    name: str
    heads_refusal: str | None = None  # set by the roles check: why heads cannot be read

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.get_submodule(self.roles.blocks)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        """Width of the residual stream (config.hidden_size; else the embedding's width)."""
        width = getattr(getattr(self.model, "config", None), "hidden_size", None)
        return int(width or self.model.get_submodule(self.roles.embed).weight.shape[1])

    def block(self, i: int) -> nn.Module:
        if not -self.n_layers <= i < self.n_layers:
            raise UserError(f"layer {i} does not exist; {self.name} has layers "
                            f"0..{self.n_layers - 1}.")
        return self.blocks[i]

    def site(self, layer: int, role: str) -> Site:
        """Where ``role`` ("attn", "mlp" or "block") of ``layer`` is read and written: the
        module whose output (times ``scale``) the block adds to the residual stream, or the
        block itself (its output is the residual stream after it)."""
        if role not in ROLE_NAMES:
            raise UserError(f"unknown role {role!r}; choose one of {', '.join(ROLE_NAMES)}.")
        block = self.block(layer)
        if role == "block":
            return Site(block)
        part: Contribution = getattr(self.roles, role)
        config = getattr(self.model, "config", None)
        return Site(block.get_submodule(part.path), scale_of(config, part.scale), part.flat)

    def module(self, layer: int, role: str) -> nn.Module:
        """The module hooked for ``role`` ("attn", "mlp" or "block") in ``layer``."""
        return self.site(layer, role).module

    @property
    def final_norm(self) -> nn.Module:
        try:
            return self.model.get_submodule(self.roles.final_norm)
        except AttributeError:
            raise UserError(f"{self.name} has no final norm ({self.roles.final_norm} is None); "
                            "read the residual stream without it.") from None

    def unembedding(self) -> torch.Tensor:
        """W_U as (vocab x D), in the model's dtype and device (tied or not)."""
        return self.model.get_submodule(self.roles.unembed).weight.detach()

    def embedding(self) -> torch.Tensor:
        """W_E as (vocab x D) as the model adds it to the residual stream (Gemma's sqrt(d),
        Granite's ``embedding_multiplier``, Bloom's embedding LayerNorm), in its dtype and
        device; position embeddings are not included."""
        return embed_tokens(self.model, self.roles)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows of ``embedding()`` for ``ids`` (any shape), computed for those ids only."""
        return embed_tokens(self.model, self.roles, ids.to(self.input_device))

    @property
    def input_device(self) -> torch.device:
        """Where inputs go: the device of the input embedding (also under a device_map)."""
        return self.model.get_submodule(self.roles.embed).weight.device


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype:
    """``"auto"`` (the checkpoint's dtype), a ``torch.dtype`` or a name like ``"bf16"``."""
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return "auto" if dtype is None else dtype
    if dtype not in _DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use auto or one of {', '.join(_DTYPES)}.")
    return _DTYPES[dtype]


def parse_max_memory(text: str | dict | None) -> dict | None:
    """``"0=20GiB,cpu=60GiB"`` -> ``{0: "20GiB", "cpu": "60GiB"}`` (dicts pass through)."""
    if text is None or isinstance(text, dict):
        return text
    out: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not value:
            raise UserError(f"bad max_memory entry {part!r}; write e.g. 0=20GiB,cpu=60GiB.")
        out[int(key) if key.strip().isdigit() else key.strip()] = value.strip()
    return out


def is_encoder(config) -> bool:
    """An encoder (BERT, RoBERTa, ...) that was not saved as a causal LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    causal = any("CausalLM" in a or "LMHeadModel" in a for a in config.architectures or ())
    return (config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
            and not getattr(config, "is_decoder", False) and not causal)


def default_device_map(device_map):
    """``"auto"`` when CUDA is available, else ``None`` (plain CPU)."""
    if device_map is not None:
        return device_map
    return "auto" if torch.cuda.is_available() else None


def load_model(
    model,
    tokenizer=None,
    *,
    device_map=None,
    dtype: str | torch.dtype = "auto",
    max_memory: dict | str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    verify: bool = True,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a hub id (at ``revision``: a branch such as
    Pythia's ``step1000``, a tag or a commit), a local folder or a GGUF file, or wrap a model
    already in memory. ``tokenizer``: a tokenizer object, or a path/id to load it from
    (default: the model's own, at the same revision). The weights are loaded once, in
    ``dtype``. ``verify`` (default on) checks on one short forward that the roles' attention
    and MLP contributions add up to the residual stream (``roles_check.verify_roles``); turn
    it off only for a model you have checked yourself."""
    from transformers import AutoModelForCausalLM, PreTrainedModel

    if isinstance(model, PreTrainedModel):
        src = getattr(model, "name_or_path", "") or ""
        tok = load_tokenizer(tokenizer, trust_remote_code)
        if tok is None:
            if not src:
                raise UserError("the model in memory has no name_or_path; pass its tokenizer "
                                "too (load_model(model, tokenizer)).")
            tok = load_tokenizer(src, trust_remote_code)
        return _finish(model.eval(), tok, src or type(model).__name__, verify)
    name = str(model)
    where, kwargs = resolve_source(name, trust_remote_code, revision)
    own_tokenizer = tokenizer is None
    tok = load_tokenizer(name if own_tokenizer else tokenizer, trust_remote_code,
                         revision if own_tokenizer else None)
    config = load_config(name, trust_remote_code, revision)
    if is_encoder(config):
        raise UserError(f"{name} is an encoder ({config.model_type}), not a causal language "
                        "model; probe and ablate need one, embed works on any model.")
    if verify and (reason := refusal(config)):
        raise UserError(reason)
    device_map = default_device_map(device_map)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if max_memory is not None:
        kwargs["max_memory"] = parse_max_memory(max_memory)
    try:
        hf = from_pretrained(AutoModelForCausalLM, where, name, config,
                             dtype=resolve_dtype(dtype), **weights_kwargs(kwargs))
    except ValueError as err:  # "Unrecognized configuration class"
        raise UserError(f"{name} is not a causal language model (it has no LM head); "
                        "probe and ablate need one, embed works on any model.") from err
    return _finish(hf.eval(), tok, name, verify)


def _finish(hf: nn.Module, tok, name: str, verify: bool) -> LoadedModel:
    """Roles for ``hf`` and, with ``verify``, the check that they add up."""
    if verify and (reason := refusal(getattr(hf, "config", None))):
        raise UserError(reason)
    lm = LoadedModel(hf, tok, roles_for(hf), name)
    if verify:
        verify_roles(lm)
    return lm

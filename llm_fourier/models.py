"""Load Hugging Face causal LMs and name their parts: architecture roles as data.

``ROLES`` maps ``config.model_type`` to the module paths of the blocks, the attention and
MLP outputs (what each adds to the residual stream), the final norm, the unembedding and
the input embedding. Unknown types fall back to a discovery over ``named_modules()`` that
reports what it chose. ``load_model`` wraps ``from_pretrained`` (device_map, dtype,
max_memory; remote code off) and turns "cannot get the weights" into one ``UserError``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llm_fourier.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Roles:
    """Module paths: ``blocks``, ``final_norm``, ``unembed``, ``embed`` from the model root;
    ``attn`` and ``mlp`` relative to one block (their output, or element 0 of a returned
    tuple, is what the block adds to the residual stream)."""

    blocks: str
    attn: str
    mlp: str
    final_norm: str
    unembed: str
    embed: str


_DECODER = Roles("model.layers", "self_attn", "mlp", "model.norm", "lm_head", "model.embed_tokens")
_GPT2 = Roles("transformer.h", "attn", "mlp", "transformer.ln_f", "lm_head", "transformer.wte")

ROLES: dict[str, Roles] = {
    "gpt2": _GPT2,
    "gptj": _GPT2,
    "gpt_neo": _GPT2,
    "gpt_neox": Roles("gpt_neox.layers", "attention", "mlp", "gpt_neox.final_layer_norm",
                      "lm_head", "gpt_neox.embed_in"),
    "phi": Roles("model.layers", "self_attn", "mlp", "model.final_layernorm", "lm_head",
                 "model.embed_tokens"),
    **{t: _DECODER for t in ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "olmo")},
}

_ATTN = re.compile(r"attn|attention", re.I)
_MLP = re.compile(r"mlp|ffn|feed_?forward", re.I)
_NORM = re.compile(r"norm|ln_?f", re.I)


def _path_of(model: nn.Module, target: nn.Module | None) -> str | None:
    if target is None:
        return None
    return next((n for n, m in model.named_modules() if m is target), None)


def discover_roles(model: nn.Module) -> Roles:
    """Guess roles from module names: the longest ``ModuleList`` is the stack of blocks; in
    block 0 the first child named like attention / MLP; the last norm outside the blocks."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise UserError(f"cannot find the transformer blocks of {type(model).__name__}: it has "
                        "no ModuleList; add its module paths to llm_fourier.models.ROLES.")
    blocks, stack = max(lists, key=lambda nm: len(nm[1]))
    children = [n for n, _ in stack[0].named_children()]
    attn = next((n for n in children if _ATTN.search(n)), None)
    mlp = next((n for n in children if _MLP.search(n)), None)
    norms = [n for n, m in model.named_modules()
             if n and _NORM.search(n.rsplit(".", 1)[-1]) and not n.startswith(blocks + ".")
             and not list(m.children())]
    embed = _path_of(model, model.get_input_embeddings()) if hasattr(
        model, "get_input_embeddings") else None
    unembed = _path_of(model, model.get_output_embeddings()) if hasattr(
        model, "get_output_embeddings") else None
    found = {"attn": attn, "mlp": mlp, "final_norm": norms[-1] if norms else None,
             "embed": embed, "unembed": unembed}
    missing = [k for k, v in found.items() if v is None]
    if missing:
        raise UserError(f"cannot find the {', '.join(missing)} module(s) of "
                        f"{type(model).__name__} (blocks at {blocks!r}); add its module paths "
                        "to llm_fourier.models.ROLES.")
    roles = Roles(blocks=blocks, **found)
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    msg = f"llm-fourier: model type {model_type!r} is not in the roles table; discovered {roles}"
    log.info(msg)
    print(msg, file=sys.stderr)
    return roles


def roles_for(model: nn.Module) -> Roles:
    """The roles of ``model``: from ``ROLES`` by ``config.model_type``, else discovered."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    roles = ROLES.get(model_type)
    if roles is not None and _resolves(model, roles):
        return roles
    return discover_roles(model)  # unknown type, or a different layout (e.g. a base model)


def _resolves(model: nn.Module, roles: Roles) -> bool:
    paths = (f"{roles.blocks}.0.{roles.attn}", f"{roles.blocks}.0.{roles.mlp}",
             roles.final_norm, roles.unembed, roles.embed)
    try:
        for path in paths:
            model.get_submodule(path)
    except AttributeError:
        return False
    return True


ROLE_NAMES = ("attn", "mlp", "block")


@dataclass
class LoadedModel:
    """A model, its tokenizer and its roles, with accessors for layers and matrices."""

    model: nn.Module
    tokenizer: object
    roles: Roles
    name: str

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

    def module(self, layer: int, role: str) -> nn.Module:
        """The module of ``role`` ("attn", "mlp" or "block") in ``layer``."""
        if role not in ROLE_NAMES:
            raise UserError(f"unknown role {role!r}; choose one of {', '.join(ROLE_NAMES)}.")
        block = self.block(layer)
        return block if role == "block" else block.get_submodule(getattr(self.roles, role))

    @property
    def final_norm(self) -> nn.Module:
        return self.model.get_submodule(self.roles.final_norm)

    def unembedding(self) -> torch.Tensor:
        """W_U as (vocab x D), in the model's dtype and device (tied or not)."""
        return self.model.get_submodule(self.roles.unembed).weight.detach()

    def embedding(self) -> torch.Tensor:
        """W_E as (vocab x D), in the model's dtype and device."""
        return self.model.get_submodule(self.roles.embed).weight.detach()

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


def _looks_local(name: str) -> bool:
    return (name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1
            or Path(name).expanduser().exists())


def hub_reachable() -> bool:
    """Whether the Hugging Face Hub's host name resolves (offline mode counts as no).

    Without network, huggingface_hub retries every request for tens of seconds before it
    gives up; a failed name lookup answers at once and is not worth retrying.
    """
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except (OSError, UnicodeError):
        return False
    return True


def source_kwargs(name: str, trust_remote_code: bool) -> dict:
    """Check a hub id / folder before loading; prefer safetensors in local folders. A hub id
    with the Hub out of reach loads from the local cache only (``local_files_only``)."""
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if not _looks_local(name):
        if not hub_reachable():
            kwargs["local_files_only"] = True
    else:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise UserError(f"model folder {name} does not exist; pass a folder made by "
                            "save_pretrained (or a hub id such as gpt2).")
        if not (path / "config.json").is_file():
            raise UserError(f"{name} has no config.json; pass a folder made by "
                            "save_pretrained or huggingface-cli download.")
        if any(path.glob("*.safetensors")):
            kwargs["use_safetensors"] = True
    return kwargs


def cannot_load(name: str, err: Exception) -> UserError:
    """One sentence for 'the weights cannot be had' (no network, wrong id, bad folder)."""
    reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    if _looks_local(name):
        return UserError(f"could not load the model folder {name} ({reason}); pass a folder "
                         "written by save_pretrained or huggingface-cli download, with its "
                         "config, tokenizer and weights.")
    return UserError(f"could not load {name!r} ({reason}); without network, download it "
                     f"elsewhere (huggingface-cli download {name} --local-dir DIR) and pass "
                     "the local folder instead.")


def _generic_fast_tokenizer(source: str) -> bool:
    """A local folder whose tokenizer.json was saved by the generic fast class: load it as
    saved (AutoTokenizer would rebuild it as the model type's class, e.g. Qwen2Tokenizer)."""
    config = Path(source).expanduser() / "tokenizer_config.json"
    if not config.is_file() or not config.with_name("tokenizer.json").is_file():
        return False
    try:
        name = json.loads(config.read_text()).get("tokenizer_class")
    except (OSError, ValueError):
        return False
    return name in ("TokenizersBackend", "PreTrainedTokenizerFast")


def _load_tokenizer(source, trust_remote_code: bool):
    from transformers import AutoTokenizer

    if source is None or not isinstance(source, (str, os.PathLike)):
        return source
    source = str(source)
    kwargs = source_kwargs(source, trust_remote_code)
    kwargs.pop("use_safetensors", None)
    try:
        if _generic_fast_tokenizer(source):
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(source, **kwargs)
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise cannot_load(source, err) from err


def load_tokenizer(model, tokenizer=None, *, trust_remote_code: bool = False):
    """The tokenizer ``load_model(model, tokenizer)`` would use (``tokenizer``: an object, id
    or folder; default the model's own), without loading any weights."""
    return _load_tokenizer(tokenizer if tokenizer is not None else str(model), trust_remote_code)


def _load_config(name: str, trust_remote_code: bool):
    from transformers import AutoConfig

    kwargs = source_kwargs(name, trust_remote_code)
    kwargs.pop("use_safetensors", None)
    try:
        return AutoConfig.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        raise cannot_load(name, err) from err


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
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a hub id or a local folder (or wrap a model
    already in memory). ``tokenizer``: a tokenizer object, or a path/id to load it from
    (default: the model's own). The weights are loaded once, in ``dtype``."""
    from transformers import AutoModelForCausalLM, PreTrainedModel

    if isinstance(model, PreTrainedModel):
        tok = _load_tokenizer(tokenizer, trust_remote_code)
        if tok is None:
            src = getattr(model, "name_or_path", "") or ""
            if not src:
                raise UserError("the model in memory has no name_or_path; pass its tokenizer "
                                "too (load_model(model, tokenizer)).")
            tok = _load_tokenizer(src, trust_remote_code)
        return LoadedModel(model.eval(), tok, roles_for(model),
                           getattr(model, "name_or_path", "") or type(model).__name__)
    name = str(model)
    kwargs = source_kwargs(name, trust_remote_code)
    tok = _load_tokenizer(tokenizer if tokenizer is not None else name, trust_remote_code)
    config = _load_config(name, trust_remote_code)
    if is_encoder(config):
        raise UserError(f"{name} is an encoder ({config.model_type}), not a causal language "
                        "model; probe and ablate need one, embed works on any model.")
    device_map = default_device_map(device_map)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if max_memory is not None:
        kwargs["max_memory"] = parse_max_memory(max_memory)
    try:
        hf = AutoModelForCausalLM.from_pretrained(name, config=config,
                                                  dtype=resolve_dtype(dtype), **kwargs)
    except ValueError as err:
        if "Unrecognized configuration class" in str(err):
            raise UserError(f"{name} is not a causal language model (it has no LM head); "
                            "probe and ablate need one, embed works on any model.") from err
        raise cannot_load(name, err) from err
    except OSError as err:
        raise cannot_load(name, err) from err
    return LoadedModel(hf.eval(), tok, roles_for(hf), name)

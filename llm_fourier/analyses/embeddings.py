"""The embedding (W_E) or unembedding (W_U) matrix of any Hugging Face model.

W_E is returned as the model adds it to the residual stream (``scaled``, the default):
times its embedding module's own scale (Gemma's sqrt(d)) and the config multiplier
(Granite's ``embedding_multiplier``), through a row-wise embedding norm where there is one
(Bloom). For a local folder with safetensors weights only that one tensor is read: the
module path and the module's scale come from a weightless skeleton of the model (built on
the meta device), so a 70B model's embedding costs its own size, not the model's. Otherwise
(hub ids, GGUF files, .bin weights, renamed checkpoint keys, quantized models, an embedding
norm) the model is loaded once with ``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from llm_fourier.errors import UserError
from llm_fourier.model.architectures import ROLES, embed_tokens, path_of, scale_of, submodule
from llm_fourier.model.loading import default_device_map, is_encoder, resolve_dtype
from llm_fourier.model.sources import (
    from_pretrained,
    load_config,
    load_tokenizer,
    resolve_source,
    unreadable_weights,
    weights_kwargs,
)


def _first_fit(config, unembed: bool, build):
    """``build(cls)`` for the first model class that fits ``config`` (with ``unembed``: an
    LM head, an encoder's masked-LM head first); None when none does."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    classes = (AutoModelForCausalLM, AutoModelForMaskedLM) if unembed else (AutoModel,)
    for cls in classes[::-1] if unembed and is_encoder(config) else classes:
        try:
            return build(cls)
        except ValueError:  # "Unrecognized configuration class": try the next class
            continue
    return None


def embedding_scale(skeleton, layer, config) -> float | None:
    """What the model multiplies rows of its input embedding ``layer`` by before block 0: the
    module's own scale times the config multiplier; None when a row-wise module follows
    (Bloom's norm) or the module computes something this cannot name (load the model then)."""
    if type(layer).forward is nn.Embedding.forward:
        own = 1.0
    elif isinstance(getattr(layer, "scalar_embed_scale", None), (int, float)):
        own = float(layer.scalar_embed_scale)  # Gemma's *ScaledWordEmbedding
    else:
        return None
    roles = ROLES.get(config.model_type)
    if roles is not None and submodule(skeleton, roles.embed_post) is not None:
        return None
    return own * scale_of(config, roles.embed_scale if roles else None)


def read_from_safetensors(folder: str | Path, name: str, shape: tuple) -> torch.Tensor | None:
    """The tensor ``name`` (or the one checkpoint key that matches it up to a module
    prefix) from a folder's safetensors files; None when absent, ambiguous or misshapen."""
    from safetensors import safe_open

    owner: dict[str, Path] = {}
    for path in sorted(Path(folder).expanduser().glob("*.safetensors")):
        with safe_open(path, "pt") as fh:
            owner.update(dict.fromkeys(fh.keys(), path))
    keys = [k for k in owner if k == name] or [
        k for k in owner if k.endswith("." + name) or name.endswith("." + k)]
    if len(keys) != 1:
        return None
    with safe_open(owner[keys[0]], "pt") as fh:
        tensor = fh.get_tensor(keys[0])
    return tensor if tuple(tensor.shape) == tuple(shape) else None


def _fast_path(name: str, config, unembed: bool, dtype, trust_remote_code: bool,
               scaled: bool = True):
    folder = Path(name).expanduser()
    if (not folder.is_dir() or getattr(config, "quantization_config", None)
            or not any(folder.glob("*.safetensors"))):
        return None
    try:
        with torch.device("meta"):  # a weightless skeleton of what from_pretrained builds
            skeleton = _first_fit(config, unembed, lambda cls: cls.from_config(
                config, trust_remote_code=trust_remote_code))
        layer = None if skeleton is None else (
            skeleton.get_output_embeddings() if unembed else skeleton.get_input_embeddings())
        if layer is None:
            return None
        shape = tuple(layer.weight.shape)
        # the parameter's name; for tied weights the first owner's (the input embedding's)
        param = next((n for n, w in skeleton.named_parameters() if w is layer.weight),
                     f"{path_of(skeleton, layer)}.weight")
        scale = 1.0 if unembed or not scaled else embedding_scale(skeleton, layer, config)
    except Exception:  # noqa: BLE001 - any skeleton failure falls back to a full load
        return None
    matrix = read_from_safetensors(folder, param, shape) if scale is not None else None
    if matrix is None:
        return None
    matrix = matrix if dtype == "auto" else matrix.to(dtype)
    # as the model computes it: W_E in its dtype times the scale (Gemma rounds the scale to
    # that dtype first; a Python float multiplier behaves the same for Granite's product)
    return matrix if scale == 1.0 else matrix * torch.tensor(scale, dtype=matrix.dtype)


def load_embedding_matrix(model, tokenizer=None, *, unembed: bool = False,
                          dtype: str | torch.dtype = "auto", device_map=None,
                          trust_remote_code: bool = False, revision: str | None = None,
                          scaled: bool = True) -> tuple[torch.Tensor, object]:
    """(W_E, or W_U with ``unembed``, as vocab x D; tokenizer) of any model with an input
    embedding: causal LMs, and encoders (``AutoModel``; their masked-LM head for W_U).
    ``scaled``: W_E as the model adds it to the residual stream (else the raw parameter)."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        hf, name = model, getattr(model, "name_or_path", "") or type(model).__name__
        tok = load_tokenizer(tokenizer if tokenizer is not None else name, trust_remote_code)
        return _matrix_of(hf, name, unembed, scaled), tok
    name = str(model)
    where, kwargs = resolve_source(name, trust_remote_code, revision)
    own = tokenizer is None
    tok = load_tokenizer(name if own else tokenizer, trust_remote_code, revision if own else None)
    config = load_config(name, trust_remote_code, revision)
    dtype = resolve_dtype(dtype)
    if "gguf_file" not in kwargs:
        try:
            matrix = _fast_path(where, config, unembed, dtype, trust_remote_code, scaled)
        except SafetensorError as err:
            raise unreadable_weights(name, err) from err
        if matrix is not None:
            return matrix, tok
    if default_device_map(device_map) is not None:
        kwargs["device_map"] = default_device_map(device_map)
    hf = _first_fit(config, unembed, lambda cls: from_pretrained(
        cls, where, name, config, strict=False, dtype=dtype, **weights_kwargs(kwargs)))
    if hf is None:
        raise UserError(f"{name} has no language-model head to unembed with; drop --unembed "
                        "to analyse its input embedding.")
    return _matrix_of(hf, name, unembed, scaled), tok


def _matrix_of(hf, name: str, unembed: bool, scaled: bool = True) -> torch.Tensor:
    layer = hf.get_output_embeddings() if unembed else hf.get_input_embeddings()
    if layer is None or getattr(layer, "weight", None) is None:
        what = "output (unembedding)" if unembed else "input embedding"
        raise UserError(f"{name} has no {what} matrix; try {'without' if unembed else 'with'} "
                        "--unembed.")
    return layer.weight.detach() if unembed or not scaled else embed_tokens(hf)

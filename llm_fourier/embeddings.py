"""The embedding (W_E) or unembedding (W_U) matrix of any Hugging Face model.

For a local folder with safetensors weights only that one tensor is read: the module path
comes from a weightless skeleton of the model (built on the meta device), so a 70B model's
embedding costs its own size, not the model's. Otherwise (hub ids, .bin weights, renamed
checkpoint keys, quantized models) the model is loaded once with ``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llm_fourier.errors import UserError
from llm_fourier.models import (
    _load_config,
    _load_tokenizer,
    _path_of,
    cannot_load,
    default_device_map,
    is_encoder,
    resolve_dtype,
    source_kwargs,
)


def _model_classes(config, unembed: bool) -> tuple:
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    if not unembed:
        return (AutoModel,)
    if is_encoder(config):
        return (AutoModelForMaskedLM, AutoModelForCausalLM)
    return (AutoModelForCausalLM, AutoModelForMaskedLM)


def tensor_name(config, unembed: bool, trust_remote_code: bool = False) -> tuple[str, tuple]:
    """(parameter name of W_E / W_U in the model ``from_pretrained`` would build, shape).

    For tied weights the unembedding is the input embedding's parameter."""
    for cls in _model_classes(config, unembed):
        try:
            with torch.device("meta"):
                skeleton = cls.from_config(config, trust_remote_code=trust_remote_code)
        except ValueError:  # no such head for this config class
            continue
        layer = skeleton.get_output_embeddings() if unembed else skeleton.get_input_embeddings()
        if layer is None:
            return "", ()
        weight = layer.weight
        for name, param in skeleton.named_parameters():  # tied: the first owner's name
            if param is weight:
                return name, tuple(weight.shape)
        return f"{_path_of(skeleton, layer)}.weight", tuple(weight.shape)
    return "", ()


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


def _fast_path(name: str, config, unembed: bool, dtype, trust_remote_code: bool):
    folder = Path(name).expanduser()
    if (not folder.is_dir() or getattr(config, "quantization_config", None)
            or not any(folder.glob("*.safetensors"))):
        return None
    try:
        param, shape = tensor_name(config, unembed, trust_remote_code)
    except Exception:  # noqa: BLE001 - any skeleton failure falls back to a full load
        return None
    matrix = read_from_safetensors(folder, param, shape) if param else None
    if matrix is None:
        return None
    return matrix if dtype == "auto" else matrix.to(dtype)


def load_embedding_matrix(
    model,
    tokenizer=None,
    *,
    unembed: bool = False,
    dtype: str | torch.dtype = "auto",
    device_map=None,
    trust_remote_code: bool = False,
) -> tuple[torch.Tensor, object]:
    """(W_E, or W_U with ``unembed``, as vocab x D; tokenizer) of any model with an input
    embedding: causal LMs, and encoders (``AutoModel``; their masked-LM head for W_U)."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        hf, name = model, getattr(model, "name_or_path", "") or type(model).__name__
        tok = _load_tokenizer(tokenizer if tokenizer is not None else name, trust_remote_code)
        return _matrix_of(hf, name, unembed), tok
    name = str(model)
    kwargs = source_kwargs(name, trust_remote_code)
    tok = _load_tokenizer(tokenizer if tokenizer is not None else name, trust_remote_code)
    config = _load_config(name, trust_remote_code)
    dtype = resolve_dtype(dtype)
    matrix = _fast_path(name, config, unembed, dtype, trust_remote_code)
    if matrix is not None:
        return matrix, tok
    if default_device_map(device_map) is not None:
        kwargs["device_map"] = default_device_map(device_map)
    for cls in _model_classes(config, unembed):
        try:
            hf = cls.from_pretrained(name, config=config, dtype=dtype, **kwargs)
        except ValueError as err:
            if "Unrecognized configuration class" in str(err):
                continue
            raise cannot_load(name, err) from err
        except OSError as err:
            raise cannot_load(name, err) from err
        return _matrix_of(hf, name, unembed), tok
    raise UserError(f"{name} has no language-model head to unembed with; drop --unembed to "
                    "analyse its input embedding.")


def _matrix_of(hf, name: str, unembed: bool) -> torch.Tensor:
    layer = hf.get_output_embeddings() if unembed else hf.get_input_embeddings()
    if layer is None or getattr(layer, "weight", None) is None:
        what = "output (unembedding)" if unembed else "input embedding"
        raise UserError(f"{name} has no {what} matrix; try {'without' if unembed else 'with'} "
                        "--unembed.")
    return layer.weight.detach()

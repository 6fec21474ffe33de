"""Where a model comes from: a hub id (at a revision), a local folder, or a GGUF file.

``resolve_source(name)`` checks the source before anything loads and returns what
``from_pretrained`` needs: the id or folder, and keyword arguments (``revision``,
``local_files_only`` when the Hub is out of reach, ``use_safetensors`` in local folders,
``gguf_file`` for GGUF). A path that exists but is neither a model folder nor a GGUF file
gets one sentence that says what it is, and so does a GGUF file that gguf's reader cannot
parse (cut inside its header or data) or a config.json that is not a JSON object.
``load_tokenizer`` / ``load_config`` use it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import logging
import os
import re
import socket
from pathlib import Path

from llm_fourier.errors import UserError

GGUF_MAGIC = b"GGUF"
GGUF_MIN_VERSION = (0, 10, 0)  # transformers' own minimum for its GGUF loader
GGUF_INSTALL = "pip install 'llm-fourier[gguf]'"


def looks_local(name: str) -> bool:
    return (name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1
            or Path(name).expanduser().exists())


def hub_reachable() -> bool:
    """Whether the Hugging Face Hub's host name resolves (offline mode counts as no). Without
    network, huggingface_hub retries every request for tens of seconds before it gives up;
    a failed name lookup answers at once and is not worth retrying."""
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


def is_gguf_file(path: Path) -> bool:
    """Whether ``path`` is a file that starts with the GGUF magic bytes."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def gguf_version() -> tuple[int, ...] | None:
    """The installed ``gguf`` package's version, None when it is not installed."""
    try:
        text = importlib.metadata.version("gguf")
    except importlib.metadata.PackageNotFoundError:
        return None
    return tuple(int(p) for p in (text.split(".") + ["0", "0"])[:3] if p.isdigit())


def _describe_file(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt"):
        return f"a weights file ({suffix})"
    if path.name == "config.json":
        return "a model config file"
    if suffix == ".gguf":
        return "named .gguf but not a GGUF file (it does not start with the GGUF magic bytes)"
    if suffix in (".json", ".txt", ".model"):
        return f"a {suffix[1:]} file"
    return "a file"


def _local(name: str) -> tuple[Path, str | None]:
    """(folder, GGUF file name or None) for a local path; one sentence for anything else."""
    path = Path(name).expanduser()
    if not path.exists():
        raise UserError(f"model folder {name} does not exist; pass a folder made by "
                        "save_pretrained, a .gguf file, or a hub id such as gpt2.")
    if path.is_file():
        if is_gguf_file(path):
            return path.parent, path.name
        raise UserError(f"{name} is {_describe_file(path)}, not a model folder or a GGUF file; "
                        "pass the folder that holds config.json, tokenizer and weights, or a "
                        ".gguf file.")
    if not path.is_dir():
        raise UserError(f"{name} is neither a file nor a folder; pass a model folder or a "
                        ".gguf file.")
    if (path / "config.json").is_file():
        _check_config_json(path / "config.json")
        return path, None
    ggufs = sorted(p for p in path.glob("*.gguf") if is_gguf_file(p))
    if len(ggufs) == 1:
        return path, ggufs[0].name
    if ggufs:
        raise UserError(f"{name} holds {len(ggufs)} GGUF files and no config.json; pass one of "
                        f"them, e.g. {path / ggufs[0].name}.")
    raise UserError(f"{name} has no config.json and no .gguf file; pass a folder made by "
                    "save_pretrained or huggingface-cli download, or a .gguf file.")


def _check_config_json(path: Path) -> None:
    """One sentence for a config.json that is not a JSON object (transformers would fail on
    it with a traceback, or take a list for an unknown model)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path} cannot be read ({err}); copy or download it again.") from err
    except ValueError as err:
        raise UserError(f"{path} is not valid JSON ({err}); copy or download it again.") from err
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a JSON {type(data).__name__}, not the object (keys such "
                        "as model_type and hidden_size) a model config is; copy or download "
                        "it again.")


@functools.lru_cache(maxsize=8)
def _gguf_problem(path: str, size: int, mtime_ns: int) -> str | None:
    """Why gguf's reader cannot parse the file (header, metadata, tensor table, data cut
    short), or None; once per file version."""
    from gguf import GGUFReader

    try:
        GGUFReader(path)
    except Exception as err:  # noqa: BLE001 - any failure to parse is a damaged file
        return (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
    return None


def resolve_source(name: str, trust_remote_code: bool = False,
                   revision: str | None = None) -> tuple[str, dict]:
    """(what ``from_pretrained`` loads, its keyword arguments) for a hub id, folder or GGUF
    file. A hub id with the Hub out of reach loads from the local cache only."""
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if not looks_local(name):
        if revision is not None:
            kwargs["revision"] = revision
        if not hub_reachable():
            kwargs["local_files_only"] = True
        return name, kwargs
    if revision is not None:
        raise UserError(f"a revision names a branch, tag or commit of a hub repository, but "
                        f"{name} is a local path; pass the folder of that revision instead.")
    folder, gguf = _local(name)
    if gguf is not None:
        version = gguf_version()
        if version is None or version < GGUF_MIN_VERSION:
            have = "is not installed" if version is None else "is too old"
            raise UserError(f"{name} is a GGUF file and reading it needs the gguf package "
                            f"(>= 0.10), which {have}; run {GGUF_INSTALL}.")
        file = folder / gguf
        stat = file.stat()
        if problem := _gguf_problem(str(file), stat.st_size, stat.st_mtime_ns):
            raise UserError(f"the GGUF file {file} cannot be read ({problem}); it is probably "
                            "truncated or corrupt: copy or download it again.")
        return str(folder), {**kwargs, "gguf_file": gguf}
    if any(folder.glob("*.safetensors")):
        kwargs["use_safetensors"] = True
    return str(folder), kwargs


def weights_kwargs(kwargs: dict) -> dict:
    """``kwargs`` for loading the weights: a GGUF file is dequantized to dense weights of the
    requested dtype (transformers would keep some architectures' blocks packed, and W_U /
    W_E must be plain matrices here)."""
    if "gguf_file" not in kwargs:
        return kwargs
    from transformers import GgufConfig

    return {**kwargs, "quantization_config": GgufConfig(dequantize=True)}


def cannot_load(name: str, err: Exception, revision: str | None = None) -> UserError:
    """One sentence for 'the weights cannot be had' (no network, wrong id, revision or folder)."""
    reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    if looks_local(name):
        if Path(name).expanduser().is_file() or Path(name).suffix.lower() == ".gguf":
            return UserError(f"could not load the GGUF file {name} ({reason}); transformers "
                             "reads GGUF files of the architectures its GGUF loader lists "
                             "(llama, mistral, qwen2/3, phi3, gemma2/3, gpt2, falcon, bloom, "
                             "stablelm, starcoder2, ...).")
        return UserError(f"could not load the model folder {name} ({reason}); pass a folder "
                         "written by save_pretrained or huggingface-cli download, with its "
                         "config, tokenizer and weights.")
    at = "" if revision is None else f" at revision {revision!r}"
    get = f"huggingface-cli download {name}" + (f" --revision {revision}" if revision else "")
    return UserError(f"could not load {name!r}{at} ({reason}); check the id and revision, or "
                     f"without network download it elsewhere ({get} --local-dir DIR) and pass "
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


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt",
                   "tokenizer.model", "spiece.model", "merges.txt", "sentencepiece.bpe.model")


def _no_tokenizer(name: str) -> UserError:
    return UserError(f"{name} holds no tokenizer (none of {', '.join(TOKENIZER_FILES[:4])}, "
                     "...); pass one with --tokenizer ID_OR_FOLDER, or save the model's "
                     "tokenizer into the folder.")


def load_tokenizer(source, trust_remote_code: bool = False, revision: str | None = None):
    """A tokenizer from a hub id, folder or GGUF file; objects pass through unchanged. A
    folder without tokenizer files is refused (transformers would build an empty one)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if source is None or not isinstance(source, (str, os.PathLike)):
        return source
    name = str(source)
    where, kwargs = resolve_source(name, trust_remote_code, revision)
    kwargs.pop("use_safetensors", None)
    local = "gguf_file" not in kwargs and looks_local(name)
    if local and not any((Path(where) / f).is_file() for f in TOKENIZER_FILES):
        raise _no_tokenizer(name)
    cls = PreTrainedTokenizerFast if local and _generic_fast_tokenizer(where) else AutoTokenizer
    try:
        tok = cls.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as err:
        raise cannot_load(name, err, revision) from err
    if len(tok) == 0:
        raise _no_tokenizer(name)
    return tok


def unreadable_weights(name: str, err: Exception) -> UserError:
    """One sentence for a weights file that exists but cannot be read (truncated, corrupt)."""
    reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    return UserError(f"the weights of {name} cannot be read ({reason}); the file is probably "
                     "truncated or corrupt: copy or download it again.")


def load_config(name: str, trust_remote_code: bool = False, revision: str | None = None):
    """The model config of a hub id, folder or GGUF file (read before any weights)."""
    from transformers import AutoConfig

    where, kwargs = resolve_source(name, trust_remote_code, revision)
    kwargs.pop("use_safetensors", None)
    try:
        return AutoConfig.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as err:
        raise cannot_load(name, err, revision) from err


def _not_the_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def _no_load_report():
    """transformers' table of missing / mismatched keys off: ``check_loading`` says it in
    one sentence instead. (A filter, not a level: transformers checks tensor-parallel plans,
    and warns about them, when this logger's level is WARNING or above.)"""
    log = logging.getLogger("transformers.modeling_utils")
    log.addFilter(_not_the_load_report)
    try:
        yield
    finally:
        log.removeFilter(_not_the_load_report)


def from_pretrained(cls, where: str, name: str, config, strict: bool = True, **kwargs):
    """``cls.from_pretrained(where, config=config, **kwargs)`` with every "cannot get these
    weights" as one ``UserError`` (``cannot_load``, ``unreadable_weights``) and the loading
    report checked (``check_loading``; ``strict=False``: only the shapes, for a part of a
    model such as its embedding). A ``ValueError`` about the config class is re-raised
    for the caller to try another class."""
    from safetensors import SafetensorError

    revision = kwargs.get("revision")  # in ``kwargs`` for hub ids (``resolve_source``)
    try:
        with _no_load_report():
            hf, info = cls.from_pretrained(where, config=config, output_loading_info=True,
                                           ignore_mismatched_sizes=True, **kwargs)
    except (ValueError, OSError) as err:
        if isinstance(err, ValueError) and "Unrecognized configuration class" in str(err):
            raise
        raise cannot_load(name, err, revision) from err
    except SafetensorError as err:
        raise unreadable_weights(name, err) from err
    check_loading(name, config, info if strict else {"mismatched_keys":
                                                      info.get("mismatched_keys")})
    return hf


def _layer(key: str) -> int | None:
    found = re.search(r"\.(\d+)\.", key)
    return int(found.group(1)) if found else None


def check_loading(name: str, config, info: dict) -> None:
    """Refuse weights that do not fit the config: a tensor of another shape, a tensor the
    model needs that the weights lack (a config declaring more layers than the weights hold
    would otherwise load random layers), or layers beyond those the config declares."""
    where = f"the config of {name}"
    layers = getattr(config, "num_hidden_layers", None)
    if info.get("mismatched_keys"):
        key, theirs, ours = sorted(info["mismatched_keys"])[0]
        raise UserError(f"{where} does not match its weights: {key} is "
                        f"{tuple(theirs)} in the weights but {tuple(ours)} by the config "
                        f"({len(info['mismatched_keys'])} such tensors); fix config.json "
                        "(hidden size, vocabulary, heads) or use the weights it belongs to.")
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        hint = (f" (it declares {layers} layers)" if layers is not None
                and any(_layer(k) is not None for k in missing) else "")
        raise UserError(f"the weights of {name} lack {missing[0]} ({len(missing)} tensors "
                        f"missing), which {where} asks for{hint}; fix config.json or use the "
                        "complete weights, else those parts would be random.")
    extra = sorted(k for k in info.get("unexpected_keys") or ()
                   if layers is not None and (_layer(k) or -1) >= layers)
    if extra:
        raise UserError(f"the weights of {name} hold more layers than the {layers} its "
                        f"config declares ({extra[0]}, {len(extra)} tensors unused); fix "
                        "num_hidden_layers in config.json.")

"""Tiny random Hugging Face models of every supported architecture, for offline tests.

``tiny_lm(arch)`` builds a 2-layer, d_model 32 causal LM (or encoder for "bert" /
"roberta") in memory with a word-level tokenizer that keeps 0..max_number as single tokens
(or splits digits); ``tiny_model_dir(tmp_path, arch)`` saves both with ``save_pretrained``
so tests load them back through the real loading code.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T

from llm_fourier.tokenizers import word_level_tokenizer

CAUSAL_ARCHS = ("gpt2", "llama", "gpt_neox", "phi", "phi3", "qwen2", "mistral", "gptj")
ENCODER_ARCHS = ("bert", "roberta")
D_MODEL = 32
N_LAYERS = 2


def tiny_config(arch: str, vocab_size: int, pad: int = 0, bos: int = 3, eos: int = 1):
    """A 2-layer config of ``arch`` with d_model 32, 2 heads, 128 positions."""
    ids = {"vocab_size": vocab_size, "pad_token_id": pad, "bos_token_id": bos,
           "eos_token_id": eos}
    d, layers, heads, ff = D_MODEL, N_LAYERS, 2, 64
    decoder = dict(hidden_size=d, intermediate_size=ff, num_hidden_layers=layers,
                   num_attention_heads=heads, max_position_embeddings=128, **ids)
    if arch == "gpt2":
        return T.GPT2Config(n_embd=d, n_layer=layers, n_head=heads, n_positions=128, **ids)
    if arch == "gptj":
        return T.GPTJConfig(n_embd=d, n_layer=layers, n_head=heads, n_positions=128,
                            rotary_dim=8, **ids)
    if arch == "gpt_neo":
        return T.GPTNeoConfig(hidden_size=d, num_layers=layers, num_heads=heads,
                              attention_types=[[["global", "local"], 1]],
                              max_position_embeddings=128, **ids)
    if arch in ("llama", "mistral", "qwen2", "qwen3", "gemma", "olmo"):
        cls = {"llama": T.LlamaConfig, "mistral": T.MistralConfig, "qwen2": T.Qwen2Config,
               "qwen3": T.Qwen3Config, "gemma": T.GemmaConfig, "olmo": T.OlmoConfig}[arch]
        extra = {"head_dim": d // heads} if arch in ("qwen3", "gemma") else {}
        return cls(num_key_value_heads=1, **decoder, **extra)
    if arch == "gpt_neox":
        return T.GPTNeoXConfig(**decoder)
    if arch == "phi":
        return T.PhiConfig(**decoder)
    if arch == "phi3":
        return T.Phi3Config(**decoder)
    if arch == "bert":
        return T.BertConfig(**decoder)
    if arch == "roberta":
        return T.RobertaConfig(**{**decoder, "max_position_embeddings": 130})
    raise ValueError(f"no tiny config for {arch!r}")


def tiny_tokenizer(max_number: int = 200, split_digits: bool = False):
    return word_level_tokenizer(max_number, split_digits=split_digits)


def tiny_lm(arch: str = "gpt2", split_digits: bool = False, max_number: int = 200,
            seed: int = 0):
    """(model, tokenizer): a random tiny ``arch`` model in eval mode, float32, CPU."""
    tok = tiny_tokenizer(max_number, split_digits)
    config = tiny_config(arch, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    torch.manual_seed(seed)
    cls = T.AutoModel if arch in ENCODER_ARCHS else T.AutoModelForCausalLM
    model = cls.from_config(config)
    return model.eval(), tok


def save_tiny(model, tokenizer, folder: str | Path) -> Path:
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_model_dir(tmp_path: str | Path, arch: str = "gpt2", split_digits: bool = False,
                   max_number: int = 200, seed: int = 0) -> Path:
    """Save a tiny ``arch`` model and its tokenizer under ``tmp_path`` (reused if there)."""
    kind = "digits" if split_digits else "numbers"
    folder = Path(tmp_path) / f"{arch}-{kind}-{max_number}-{seed}"
    if not (folder / "config.json").is_file():
        save_tiny(*tiny_lm(arch, split_digits, max_number, seed), folder)
    return folder

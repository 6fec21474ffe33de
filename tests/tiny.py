"""Tiny random Hugging Face models of every supported architecture, for offline tests.

``tiny_lm(arch)`` builds a 2-layer, d_model 32 causal LM (or encoder for "bert" /
"roberta") in memory with a word-level tokenizer that keeps 0..max_number as single tokens
(or splits digits); ``tiny_model_dir(tmp_path, arch)`` saves both with ``save_pretrained``
so tests load them back through the real loading code. ``ARCHS`` lists every causal type
the roles table knows; ``perturb_norms`` moves norm weights away from their identity
initialisation so that a wrong role cannot pass by accident.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T

from llm_fourier.model.tokenizers import word_level_tokenizer

CAUSAL_ARCHS = ("gpt2", "llama", "gpt_neox", "phi", "phi3", "qwen2", "mistral", "gptj")
ARCHS = ("gpt2", "gptj", "gpt_neo", "gpt_neox", "gpt_bigcode", "phi", "phi3", "llama",
         "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text",
         "olmo", "olmo2", "olmo3", "granite", "cohere", "falcon", "stablelm", "starcoder2",
         "bloom", "opt", "smollm3")
ENCODER_ARCHS = ("bert", "roberta")
D_MODEL = 32
N_LAYERS = 2


def tiny_config(arch: str, vocab_size: int, pad: int = 0, bos: int = 3, eos: int = 1,
                **overrides):
    """A 2-layer config of ``arch`` with d_model 32, 2 heads, 128 positions; ``overrides``
    set config attributes (e.g. ``use_parallel_residual``)."""
    config = _config(arch, {"vocab_size": vocab_size, "pad_token_id": pad, "bos_token_id": bos,
                            "eos_token_id": eos})
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _config(arch: str, ids: dict):
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
    plain = {"llama": T.LlamaConfig, "mistral": T.MistralConfig, "qwen2": T.Qwen2Config,
             "qwen3": T.Qwen3Config, "gemma": T.GemmaConfig, "olmo": T.OlmoConfig,
             "gemma2": T.Gemma2Config, "gemma3_text": T.Gemma3TextConfig, "olmo2": T.Olmo2Config,
             "olmo3": T.Olmo3Config, "cohere": T.CohereConfig, "stablelm": T.StableLmConfig,
             "starcoder2": T.Starcoder2Config, "smollm3": T.SmolLM3Config,
             "mixtral": T.MixtralConfig, "qwen3_moe": T.Qwen3MoeConfig,
             "granite": T.GraniteConfig}
    if arch in plain:
        extra = {"head_dim": d // heads} if arch in ("qwen3", "gemma", "gemma2", "gemma3_text",
                                                     "qwen3_moe") else {}
        if arch == "mixtral":
            extra |= {"num_local_experts": 4, "num_experts_per_tok": 2}
        if arch == "qwen3_moe":
            extra |= {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}
        if arch == "granite":  # multipliers away from 1, as Granite's own (0.22, 12)
            extra |= {"residual_multiplier": 0.3, "embedding_multiplier": 3.0,
                      "logits_scaling": 2.0}
        return plain[arch](num_key_value_heads=1, **decoder, **extra)
    if arch == "gpt_bigcode":
        return T.GPTBigCodeConfig(n_embd=d, n_layer=layers, n_head=heads, n_positions=128,
                                  **ids)
    if arch == "falcon":
        return T.FalconConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                              max_position_embeddings=128, **ids)
    if arch == "bloom":
        return T.BloomConfig(hidden_size=d, n_layer=layers, n_head=heads, **ids)
    if arch == "opt":
        return T.OPTConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                           ffn_dim=ff, word_embed_proj_dim=d, max_position_embeddings=128,
                           **ids)
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


def perturb_norms(model, seed: int = 1):
    """Set every norm's weight (and bias) to random values far from the identity: Gemma's
    norms start at zero offset (weight 1 + 0), others at weight 1, which would let a role
    read before instead of after a norm pass unnoticed. Returns ``model``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if "norm" not in type(module).__name__.lower():
                continue
            for param in module.parameters(recurse=False):
                param.copy_(0.5 + torch.rand(param.shape, generator=gen) * 1.5)
    return model


def tiny_tokenizer(max_number: int = 200, split_digits: bool = False):
    return word_level_tokenizer(max_number, split_digits=split_digits)


def tiny_lm(arch: str = "gpt2", split_digits: bool = False, max_number: int = 200,
            seed: int = 0, **overrides):
    """(model, tokenizer): a random tiny ``arch`` model in eval mode, float32, CPU."""
    tok = tiny_tokenizer(max_number, split_digits)
    config = tiny_config(arch, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id,
                         **overrides)
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

"""Tiny models of the three ways tokenizers write numbers, for the multi-token tests.

``family_tokenizer(family)``: word-level tokenizers (``llm_fourier.model.tokenizers``) that keep
0..200 as single tokens (GPT-2 style), split digits (Llama-2 style) or split numbers into
left-to-right 3-digit chunks (Llama-3 style). ``family_lm(family)``: a tiny random causal
LM over it whose unembedding rows of number tokens are scaled up, so greedy decoding writes
numbers of several tokens and ends them at different lengths.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from llm_fourier.model.loading import load_model
from llm_fourier.model.number_format import is_digits, split_marker
from llm_fourier.model.tokenizers import word_level_tokenizer
from probes import FourierFilter
from tests.tiny import tiny_config

FAMILIES = ("single", "digits", "chunks")
# number-logit scale per family: numbers of several tokens, ended at different lengths
BOOST = {"single": 1.0, "digits": 1.6, "chunks": 0.7}


@cache
def family_tokenizer(family: str):
    if family == "single":
        return word_level_tokenizer(200)
    if family == "digits":
        return word_level_tokenizer(9, split_digits=True)
    if family == "chunks":
        return word_level_tokenizer(0, chunk_digits=3)
    raise ValueError(family)


@cache
def family_lm(family: str, arch: str = "llama", seed: int = 0, boost: float | None = None):
    """A LoadedModel (2 layers, d_model 32) whose number-token logits are scaled by
    ``boost`` (default ``BOOST[family]``; untied unembedding), built once per session."""
    import transformers as T

    tok = family_tokenizer(family)
    config = tiny_config(arch, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    config.tie_word_embeddings = False
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    numbers = [i for t, i in tok.get_vocab().items() if is_digits(split_marker(t)[0])]
    with torch.no_grad():
        model.get_output_embeddings().weight[numbers] *= BOOST[family] if boost is None \
            else boost
    return load_model(model, tok)


def random_filter(lm, rank: int = 4, seed: int = 0) -> FourierFilter:
    """A filter removing a random rank-``rank`` subspace: an edit with no Fourier meaning."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((lm.d_model, rank)))
    return FourierFilter(q, (), "random")


def generate_answer(lm, fmt, example, max_new: int) -> int:
    """One prompt alone (no padding) through ``model.generate``: the reference greedy answer."""
    ids = lm.tokenizer(example.prompt, return_tensors="pt")["input_ids"]
    out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                            max_new_tokens=max_new, do_sample=False,
                            pad_token_id=lm.tokenizer.pad_token_id)
    return fmt.parse(out[0, ids.shape[1]:].tolist())

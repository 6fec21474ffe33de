"""From-scratch adders with the GPT-2 architecture (Zhou et al., section 4).

The model is a plain Hugging Face ``GPT2LMHeadModel`` built from a ``GPT2Config`` of chosen
depth and width with tied input/output embeddings, so every tool of the LLM side
(``load_model``, ``probe``, ``ablate``, ``finetune``) works on it unchanged. Its tokenizer is
``llm_fourier.model.tokenizers.word_level_tokenizer``: every number of the task (operands and
answers) is one token, as in GPT-2's tokenizer for 0..520.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from llm_fourier.errors import UserError
from llm_fourier.model.tokenizers import word_level_tokenizer


@dataclass
class AdderConfig:
    """Size of a from-scratch adder; ``max_number`` is the largest answer (a token each)."""

    max_number: int = 120
    n_layer: int = 2
    d_model: int = 128
    n_head: int = 4
    n_positions: int = 64
    dropout: float = 0.0
    init_range: float = 0.02

    def validate(self) -> None:
        if self.d_model % self.n_head:
            raise UserError(f"d-model ({self.d_model}) must be a multiple of the number of "
                            f"heads ({self.n_head}).")
        if min(self.n_layer, self.d_model, self.n_head, self.max_number) < 1:
            raise UserError("layers, width, heads and the number range must be positive.")

    def as_dict(self) -> dict:
        return asdict(self)


# GPT-2 small, as in the paper's from-scratch runs (answers 0..520)
GPT2_SMALL = AdderConfig(max_number=520, n_layer=12, d_model=768, n_head=12, n_positions=1024,
                         dropout=0.1)


def max_answer(op: str, max_operand: int) -> int:
    """Largest answer of ``op`` over operands 0..max_operand."""
    if op == "+":
        return 2 * max_operand
    if op == "*":
        return max_operand * max_operand
    raise UserError(f"op must be '+' or '*', got {op!r}.")


def adder_tokenizer(max_number: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer keeping 0..max_number as single tokens."""
    return word_level_tokenizer(max_number)


def build_adder(config: AdderConfig, seed: int = 0,
                tokenizer: PreTrainedTokenizerFast | None = None):
    """A freshly initialised GPT-2-architecture model and its tokenizer (seeded)."""
    config.validate()
    tokenizer = tokenizer or adder_tokenizer(config.max_number)
    gpt2 = GPT2Config(
        vocab_size=len(tokenizer), n_positions=config.n_positions, n_embd=config.d_model,
        n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=config.dropout,
        embd_pdrop=config.dropout, attn_pdrop=config.dropout,
        initializer_range=config.init_range, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(gpt2)
    model.tie_weights()
    return model, tokenizer

"""Small word-level Hugging Face tokenizers for tests and from-scratch models.

``word_level_tokenizer`` builds a real ``PreTrainedTokenizerFast`` (``tokenizers`` WordLevel
model) that writes numbers in one of the three ways of real tokenizers: every integer
0..max_number as one token (GPT-2 style), one token per digit (Llama-2, Mistral, Qwen,
Gemma), or left-to-right chunks of up to ``chunk_digits`` digits (Llama-3: "12345" ->
"123" "45", every 1..3-digit string a token). It knows the words and punctuation of the
task templates and survives ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` like any
hub tokenizer.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK, BOS = "<pad>", "<eos>", "<unk>", "<bos>"
SPECIAL_TOKENS = (PAD, EOS, UNK, BOS)
PUNCTUATION = tuple(".,:;?!+-*/=()'\"")
_TEMPLATE_TEXT = (
    "Total of and. Add together. Calculate. What is the sum of? Put together. Answer: "
    "Multiply by. What is the product of? Find the product of. Compute times. Question: "
    "plus minus equals"
)
TEMPLATE_WORDS: tuple[str, ...] = tuple(dict.fromkeys(re.findall(r"[A-Za-z]+", _TEMPLATE_TEXT)))


def _number_tokens(max_number: int, split_digits: bool, chunk_digits: int) -> list[str]:
    if split_digits:
        return [str(d) for d in range(10)]
    if chunk_digits:  # every digit string of length 1..chunk_digits ("7", "07", "007", ...)
        return ["".join(t) for width in range(1, chunk_digits + 1)
                for t in itertools.product("0123456789", repeat=width)]
    return [str(n) for n in range(max_number + 1)]


def word_level_tokenizer(
    max_number: int,
    words: Iterable[str] = TEMPLATE_WORDS,
    split_digits: bool = False,
    chunk_digits: int = 0,
) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer for arithmetic prompts.

    Vocabulary: ``<pad> <eos> <unk> <bos>`` (ids 0..3), then the number tokens: the integers
    0..max_number, or the digits 0..9 when ``split_digits``, or every digit string of
    1..``chunk_digits`` digits when ``chunk_digits`` > 0 (``max_number`` is then unused);
    then punctuation, then ``words``. Text is split on whitespace, punctuation and digit runs
    (single digits when ``split_digits``, chunks of ``chunk_digits`` from the left when set),
    so "Put together 15 and 93. Answer: " is ``Put together 15 and 93 . Answer :``.
    """
    if max_number < 0:
        raise ValueError(f"max_number must be >= 0, got {max_number}")
    if chunk_digits < 0 or (chunk_digits and split_digits):
        raise ValueError("chunk_digits must be >= 0 and cannot be combined with split_digits")
    vocab: dict[str, int] = {}
    numbers = _number_tokens(max_number, split_digits, chunk_digits)
    for token in (*SPECIAL_TOKENS, *numbers, *PUNCTUATION, *words):
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    digits = (pre_tokenizers.Split(Regex(rf"\d{{1,{chunk_digits}}}"), behavior="isolated")
              if chunk_digits else pre_tokenizers.Digits(individual_digits=split_digits))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Punctuation("isolated"),
        digits,
    ])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins with spaces, tidies
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, bos_token=BOS,
        model_max_length=1024,
    )

"""Small word-level Hugging Face tokenizers for tests and from-scratch models.

``word_level_tokenizer`` builds a real ``PreTrainedTokenizerFast`` (``tokenizers`` WordLevel
model) that keeps every integer 0..max_number as one token, or splits numbers into single
digits, and knows the words and punctuation of the task templates. It survives
``save_pretrained`` / ``AutoTokenizer.from_pretrained`` like any hub tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
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


def word_level_tokenizer(
    max_number: int,
    words: Iterable[str] = TEMPLATE_WORDS,
    split_digits: bool = False,
) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer for arithmetic prompts.

    Vocabulary: ``<pad> <eos> <unk> <bos>`` (ids 0..3), then the integers 0..max_number
    (or the digits 0..9 when ``split_digits``), then punctuation, then ``words``. Text is
    split on whitespace, punctuation and digit runs (single digits when ``split_digits``),
    so "Put together 15 and 93. Answer: " is ``Put together 15 and 93 . Answer :``.
    """
    if max_number < 0:
        raise ValueError(f"max_number must be >= 0, got {max_number}")
    numbers = [str(n) for n in range(10 if split_digits else max_number + 1)]
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *numbers, *PUNCTUATION, *words):
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Punctuation("isolated"),
        pre_tokenizers.Digits(individual_digits=split_digits),
    ])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins with spaces, tidies
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, bos_token=BOS,
        model_max_length=1024,
    )

"""Fixtures over tests/tiny.py: tiny saved models and tokenizers, built once per session."""

from __future__ import annotations

import pytest

from tests.tiny import perturb_norms, tiny_lm, tiny_model_dir, tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_dir(tiny_root):
    """``tiny_dir(arch="gpt2", split_digits=False, max_number=200, seed=0) -> Path``;
    each folder is saved once per session."""
    def make(arch: str = "gpt2", split_digits: bool = False, max_number: int = 200,
             seed: int = 0):
        return tiny_model_dir(tiny_root, arch, split_digits, max_number, seed)
    return make


@pytest.fixture(scope="session")
def number_tokenizer():
    return tiny_tokenizer(200)


@pytest.fixture(scope="session")
def digit_tokenizer():
    return tiny_tokenizer(200, split_digits=True)


@pytest.fixture
def gpt2_pair():
    """A fresh in-memory tiny GPT-2 (model, tokenizer)."""
    return tiny_lm("gpt2")


@pytest.fixture(scope="session")
def family_dir(tiny_root):
    """``family_dir(family) -> Path``: the tiny model of ``tests.llm.families.family_lm``
    ("single", "digits", "chunks") saved once per session, for the commands."""
    from tests.llm.families import family_lm

    def make(family: str):
        folder = tiny_root / f"family-{family}"
        if not (folder / "config.json").is_file():
            lm = family_lm(family)
            lm.model.save_pretrained(folder)
            lm.tokenizer.save_pretrained(folder)
        return folder
    return make


@pytest.fixture(scope="session")
def tiny_models():
    """``get(arch, **overrides) -> (model, tokenizer)``, each built once per session."""
    built: dict = {}

    def get(arch: str, **overrides):
        key = (arch, tuple(sorted(overrides.items())))
        if key not in built:
            model, tok = tiny_lm(arch, **overrides)
            built[key] = (perturb_norms(model), tok)
        return built[key]

    return get

"""Hub revisions (branches such as Pythia's ``step1000``) load from a local hub cache."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from llm_fourier.errors import UserError
from llm_fourier.model.loading import load_model
from tests.tiny import save_tiny, tiny_lm

REPO = "tiny-org/tiny-gpt2"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A Hugging Face hub cache holding ``main`` and ``step1000`` of one repo, laid out as
    huggingface_hub writes it: refs/<branch> holds a commit hash, snapshots/<hash>/ the
    files. The two revisions are the same architecture with different random weights."""
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / f"models--{REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    saved = {}
    for seed, (branch, commit) in enumerate([("main", "a" * 40), ("step1000", "b" * 40)]):
        folder = save_tiny(*tiny_lm("gpt2", seed=seed), repo / "snapshots" / commit)
        (repo / "refs" / branch).write_text(commit)
        saved[branch] = load_file(folder / "model.safetensors")
    return cache, saved


def test_each_revision_loads_its_own_weights_offline(hub_cache, monkeypatch):
    from huggingface_hub import constants

    cache, saved = hub_cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    key = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(saved["main"][key], saved["step1000"][key])
    for revision, branch in [(None, "main"), ("main", "main"), ("step1000", "step1000")]:
        lm = load_model(REPO, revision=revision)
        weights = lm.model.state_dict()
        for name, tensor in saved[branch].items():
            assert torch.equal(weights[name], tensor), (revision, name)
        assert lm.tokenizer.tokenize("15") == ["15"]
    with pytest.raises(UserError, match="step9999"):
        load_model(REPO, revision="step9999")


def test_revision_of_a_local_folder_is_refused(tiny_dir):
    with pytest.raises(UserError, match="local path"):
        load_model(tiny_dir("gpt2"), revision="step1000")

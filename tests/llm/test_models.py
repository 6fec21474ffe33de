"""Loading every architecture through load_model, roles, accessors and loading errors."""

from __future__ import annotations

import json

import pytest
import torch

from llm_fourier.analyses.embeddings import load_embedding_matrix
from llm_fourier.errors import UserError
from llm_fourier.model.loading import (
    ROLES,
    Roles,
    discover_roles,
    load_model,
    parse_max_memory,
    roles_for,
)
from tests.tiny import CAUSAL_ARCHS, D_MODEL, N_LAYERS, tiny_lm


def _outputs(lm, layer, batch):
    """Forward once with plain hooks on the three roles; element 0 of tuples."""
    got = {}
    handles = [
        lm.module(layer, role).register_forward_hook(
            lambda m, i, o, role=role: got.__setitem__(role, o[0] if isinstance(o, tuple) else o))
        for role in ("attn", "mlp", "block")
    ]
    try:
        logits = lm.model(**batch).logits
    finally:
        for h in handles:
            h.remove()
    return got, logits


@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_every_architecture_loads_from_a_folder(tiny_dir, arch):
    folder = tiny_dir(arch)
    lm = load_model(folder)
    assert lm.model.config.model_type == arch
    assert lm.roles == ROLES[arch]
    assert (lm.n_layers, lm.d_model) == (N_LAYERS, D_MODEL)
    # the tokenizer comes back as saved: numbers are single tokens
    ids = lm.tokenizer("Put together 15 and 93. Answer: ", return_tensors="pt")
    assert lm.tokenizer.convert_ids_to_tokens(ids["input_ids"][0].tolist())[2:5] == [
        "15", "and", "93"]
    got, logits = _outputs(lm, N_LAYERS - 1, ids)
    T = ids["input_ids"].shape[1]
    for role in ("attn", "mlp", "block"):
        assert got[role].shape == (1, T, D_MODEL), role
    # the last block's output through the final norm and W_U gives the logits
    W_U = lm.unembedding()
    assert W_U.shape == (len(lm.tokenizer), D_MODEL)
    assert lm.embedding().shape == W_U.shape
    recomputed = lm.final_norm(got["block"]) @ W_U.T
    if getattr(lm.model, "lm_head", None) is not None and lm.model.lm_head.bias is not None:
        recomputed = recomputed + lm.model.lm_head.bias
    torch.testing.assert_close(recomputed, logits, atol=1e-5, rtol=1e-4)
    assert lm.input_device == torch.device("cpu")


# the modules each architecture's decoder layer adds to the residual stream, spelled out as
# attribute accesses on the model (independent of the table's path strings)
EXTRA = {
    "gpt_neo": lambda m, i: (m.transformer.h[i].attn, m.transformer.h[i].mlp),
    "qwen3": lambda m, i: (m.model.layers[i].self_attn, m.model.layers[i].mlp),
    "gemma": lambda m, i: (m.model.layers[i].self_attn, m.model.layers[i].mlp),
    "olmo": lambda m, i: (m.model.layers[i].self_attn, m.model.layers[i].mlp),
}


@pytest.mark.parametrize("arch", sorted(EXTRA))
def test_extra_table_entries_resolve(arch):
    model, tok = tiny_lm(arch)
    lm = load_model(model, tok)
    assert lm.roles == ROLES[arch]
    for layer in range(N_LAYERS):
        attn, mlp = EXTRA[arch](model, layer)
        assert lm.module(layer, "attn") is attn and lm.module(layer, "mlp") is mlp
        assert lm.module(layer, "block") is lm.blocks[layer]
    assert lm.module(0, "attn") is not lm.module(1, "attn")


def test_in_memory_model_and_module_errors(gpt2_pair):
    model, tok = gpt2_pair
    lm = load_model(model, tok)
    assert lm.model is model and lm.block(-1) is model.transformer.h[-1]
    assert lm.module(0, "attn") is model.transformer.h[0].attn
    assert lm.final_norm is model.transformer.ln_f
    with pytest.raises(UserError, match="layers 0..1"):
        lm.module(5, "mlp")
    with pytest.raises(UserError, match="unknown role"):
        lm.module(0, "resid")


def test_discovery_fallback_reports_its_choice(gpt2_pair, capsys, monkeypatch):
    model, _ = gpt2_pair
    table = ROLES["gpt2"]
    monkeypatch.delitem(ROLES, "gpt2")
    roles = roles_for(model)
    assert roles == table == Roles("transformer.h", "attn", "mlp", "transformer.ln_f",
                                   "lm_head", "transformer.wte", positions="transformer.wpe",
                                   attn_proj="attn.c_proj", mlp_proj="mlp.c_proj")
    assert "discovered" in capsys.readouterr().err


def test_discovery_on_a_custom_model_type(tiny_dir, tmp_path, capsys):
    folder = tiny_dir("llama")
    cfg = json.loads((folder / "config.json").read_text())
    lm = load_model(folder)
    lm.model.config.model_type = "my_llama_variant"  # a type missing from the table
    roles = roles_for(lm.model)
    assert roles == ROLES["llama"] and cfg["model_type"] == "llama"
    assert "my_llama_variant" in capsys.readouterr().err


def test_discovery_fails_with_a_clear_message(gpt2_pair):
    with pytest.raises(UserError, match="ROLES"):
        discover_roles(torch.nn.Linear(3, 3))
    base = gpt2_pair[0].transformer  # a GPT2Model: "gpt2" type, but no LM head
    with pytest.raises(UserError, match="unembed"):
        roles_for(base)


def test_dtype_is_honoured_without_upcasting(tiny_dir):
    lm = load_model(tiny_dir("llama"), dtype="bfloat16")
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    with pytest.raises(UserError, match="unknown dtype"):
        load_model(tiny_dir("llama"), dtype="float8")


def test_missing_folder_and_offline_hub_id_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist") as err:
        load_model(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)
    with pytest.raises(UserError, match="local folder") as err:
        load_model("no-such-org/no-such-model")  # offline in tests: OSError inside
    assert "no-such-org/no-such-model" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        load_model(tmp_path / "empty")


def test_folder_without_weights_is_a_user_error(tiny_dir, tmp_path):
    import shutil

    src, dst = tiny_dir("gpt2"), tmp_path / "no-weights"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(UserError, match="save_pretrained") as err:
        load_model(dst)
    assert str(dst) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="save_pretrained"):
        load_embedding_matrix(dst)


def test_encoder_is_refused_by_load_model_but_embeds(tiny_dir):
    with pytest.raises(UserError, match="is an encoder"):
        load_model(tiny_dir("bert"))
    W, tok = load_embedding_matrix(tiny_dir("bert"))
    assert W.shape == (len(tok), D_MODEL)
    # the masked-LM decoder is tied to the input embedding
    W_U, _ = load_embedding_matrix(tiny_dir("bert"), unembed=True)
    torch.testing.assert_close(W_U, W)


def test_embedding_matrix_matches_the_saved_weights(tiny_dir):
    from safetensors.torch import load_file

    folder = tiny_dir("gpt_neox")
    saved = load_file(folder / "model.safetensors")
    W_E, _ = load_embedding_matrix(folder)
    W_U, _ = load_embedding_matrix(folder, unembed=True)  # renamed key: full load
    torch.testing.assert_close(W_E, saved["gpt_neox.embed_in.weight"])
    torch.testing.assert_close(W_U, saved["embed_out.weight"])  # the LM head's saved name


@pytest.mark.parametrize("arch, unembed", [("gpt2", True), ("llama", True), ("llama", False),
                                           ("roberta", False), ("roberta", True)])
def test_embedding_read_from_safetensors_equals_full_load(tiny_dir, monkeypatch, arch,
                                                           unembed):
    import transformers

    from llm_fourier.analyses import embeddings

    folder = tiny_dir(arch)
    fast, _ = load_embedding_matrix(folder, unembed=unembed)
    monkeypatch.setattr(embeddings, "_fast_path", lambda *a: None)
    full, _ = load_embedding_matrix(folder, unembed=unembed)
    torch.testing.assert_close(fast, full, rtol=0, atol=0)
    monkeypatch.undo()
    # the fast path never builds the real model: loading would fail here
    for cls in (transformers.AutoModel, transformers.AutoModelForCausalLM,
                transformers.AutoModelForMaskedLM):
        monkeypatch.setattr(cls, "from_pretrained", None)
    again, _ = load_embedding_matrix(folder, unembed=unembed, dtype="bfloat16")
    assert again.dtype == torch.bfloat16 and torch.equal(again, full.to(torch.bfloat16))


def test_parse_max_memory():
    assert parse_max_memory("0=20GiB, cpu=60GiB") == {0: "20GiB", "cpu": "60GiB"}
    assert parse_max_memory(None) is None
    with pytest.raises(UserError, match="max_memory"):
        parse_max_memory("20GiB")


def test_loading_options_reach_from_pretrained_once(tiny_dir, monkeypatch):
    import transformers

    real = transformers.AutoModelForCausalLM.from_pretrained.__func__
    calls = []

    def recording(cls, name, **kwargs):
        calls.append(kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("device_map", "max_memory")}
        return real(cls, name, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        classmethod(recording))
    folder = tiny_dir("llama")
    load_model(folder)
    assert len(calls) == 1 and "device_map" not in calls[0]  # CPU: no device map
    assert calls[0]["trust_remote_code"] is False and calls[0]["use_safetensors"] is True
    assert calls[0]["dtype"] == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    load_model(folder, max_memory="0=1GiB,cpu=2GiB", dtype="bf16")
    assert calls[1]["device_map"] == "auto"  # GPU: accelerate places the layers
    assert calls[1]["max_memory"] == {0: "1GiB", "cpu": "2GiB"}
    assert calls[1]["dtype"] is torch.bfloat16


def test_device_map_auto_on_cpu_keeps_logits(tiny_dir):
    folder = tiny_dir("gpt2")
    plain, mapped = load_model(folder), load_model(folder, device_map="auto")
    batch = plain.tokenizer(["Calculate 3 + 4. Answer: "], return_tensors="pt")
    assert mapped.input_device == torch.device("cpu")
    torch.testing.assert_close(mapped.model(**batch).logits, plain.model(**batch).logits)


def test_tokenizer_sources(tiny_dir, gpt2_pair):
    folder = tiny_dir("gpt2")
    digits = tiny_dir("gpt2", split_digits=True)
    lm = load_model(folder, tokenizer=digits)  # tokenizer from another folder
    assert lm.tokenizer.tokenize("15") == ["1", "5"]
    again = load_model(lm.model)  # in memory: tokenizer from the model's name_or_path
    assert again.tokenizer.tokenize("15") == ["15"]
    model, _ = gpt2_pair
    with pytest.raises(UserError, match="pass its tokenizer"):
        load_model(model)


def test_hub_out_of_reach_means_cache_only(monkeypatch):
    import socket

    from huggingface_hub import constants

    from llm_fourier.model.loading import hub_reachable, resolve_source

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [("resolved",)])
    assert hub_reachable()
    assert "local_files_only" not in resolve_source("gpt2", False)[1]

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    assert not hub_reachable()
    assert resolve_source("gpt2", False)[1]["local_files_only"] is True
    # an id that is in no cache then fails at once with the one sentence, not after retries
    with pytest.raises(UserError, match="pass the local folder instead"):
        load_model("no-such-org/no-such-model")

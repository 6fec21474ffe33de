"""GGUF files through load_model / load_embedding_matrix / the CLI, written here by gguf-py.

The file holds a tiny random llama (F32 tensors, the MLP weights Q8_0-quantized) and a
byte-level BPE tokenizer in its metadata, laid out as llama.cpp's converter writes them
(tensor names from gguf's own name map, q/k rows permuted for its rotary layout).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import transformers as T

from llm_fourier.analyses.embeddings import load_embedding_matrix
from llm_fourier.cli import main
from llm_fourier.errors import UserError
from llm_fourier.model import sources
from llm_fourier.model.loading import load_model
from tests.tiny import tiny_config

gguf = pytest.importorskip("gguf")

MERGES = ["Ġ 1", "Ġ1 5", "Ġ 9", "Ġ9 3", "1 5", "9 3"]
EXTRA = ["Ġ1", "Ġ15", "Ġ9", "Ġ93", "15", "93", "<s>", "</s>"]
QUANTIZED = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (transformers undoes it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape)


def write_tiny_gguf(path, seed: int = 0):
    """Write a tiny llama + tokenizer as GGUF; returns (the source model, its tokens list)
    with the source's MLP weights replaced by their Q8_0 round trip (what the file holds)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = list(bytes_to_unicode().values()) + EXTRA
    bos, eos = len(tokens) - 2, len(tokens) - 1
    cfg = tiny_config("llama", len(tokens), pad=eos, bos=bos, eos=eos)
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(MERGES)
    w.add_token_types([1] * (len(tokens) - 2) + [3, 3])  # 3: control tokens
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    q8 = gguf.GGMLQuantizationType.Q8_0
    with torch.no_grad():
        for name, param in model.state_dict().items():
            base, suffix = name.rsplit(".", 1)
            arr = param.numpy().astype(np.float32)
            if base.endswith("q_proj"):
                arr = _permute(arr, cfg.num_attention_heads)
            elif base.endswith("k_proj"):
                arr = _permute(arr, cfg.num_key_value_heads)
            target = f"{names.get_name(base)}.{suffix}"
            if base.endswith(QUANTIZED):
                packed = gguf.quantize(arr, q8)
                w.add_tensor(target, packed, raw_dtype=q8)
                param.copy_(torch.from_numpy(gguf.dequantize(packed, q8).reshape(arr.shape)))
            else:
                w.add_tensor(target, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model, tokens


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    model, tokens = write_tiny_gguf(folder / "tiny-llama.gguf")
    return folder / "tiny-llama.gguf", model, tokens


def test_gguf_file_loads_with_its_tokenizer_and_the_source_logits(tiny_gguf):
    path, source, tokens = tiny_gguf
    lm = load_model(path, dtype="float32")  # the self-check runs on it too
    assert lm.model.config.model_type == "llama" and lm.n_layers == 2
    assert {p.dtype for p in lm.model.parameters()} == {torch.float32}
    # dequantized to plain dense weights: every tensor equals the source's (Q8_0 round trip)
    theirs = lm.model.state_dict()
    for name, param in source.state_dict().items():
        assert torch.equal(theirs[name], param), name
    ids = torch.tensor([[len(tokens) - 2, 5, 40, 100, 256, 259, 261]])
    with torch.inference_mode():
        torch.testing.assert_close(lm.model(ids).logits, source(ids).logits, rtol=0, atol=0)
    # the tokenizer is the one in the file: its merges make " 15" and " 93" single tokens
    assert lm.tokenizer.tokenize(" 15 and 93") == ["Ġ15", "Ġ", "a", "n", "d", "Ġ93"]
    assert lm.tokenizer.convert_tokens_to_ids(["Ġ15", "Ġ93"]) == [
        tokens.index("Ġ15"), tokens.index("Ġ93")]
    assert (lm.tokenizer.bos_token, lm.tokenizer.eos_token) == ("<s>", "</s>")


def test_gguf_dtype_folder_and_embedding(tiny_gguf, tmp_path):
    path, source, _ = tiny_gguf
    lm = load_model(path, dtype="bfloat16")
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    assert torch.equal(lm.unembedding(), source.lm_head.weight.to(torch.bfloat16))
    folder = tmp_path / "only-gguf"
    folder.mkdir()
    shutil.copy(path, folder / "model.gguf")
    again = load_model(folder, dtype="float32")  # a folder holding exactly one .gguf
    assert torch.equal(again.embedding(), source.model.embed_tokens.weight)
    W, tok = load_embedding_matrix(folder)
    assert torch.equal(W, source.model.embed_tokens.weight) and tok.tokenize(" 93") == ["Ġ93"]


def test_gguf_through_the_cli(tiny_gguf, tmp_path):
    path, _, _ = tiny_gguf
    assert main(["embed", "--model", str(path), "--tau", "2",
                 "--out", str(tmp_path / "embed")]) == 0
    assert (tmp_path / "embed" / "results.json").is_file()


def test_paths_that_are_not_models_get_one_sentence(tiny_gguf, tmp_path, monkeypatch, capsys):
    path, _, _ = tiny_gguf
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(path, two / name)
    with pytest.raises(UserError, match="holds 2 GGUF files and no config.json"):
        load_model(two)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\x00" * 16)
    with pytest.raises(UserError, match="is a weights file .* not a model folder or a GGUF"):
        load_model(weights)
    fake = tmp_path / "fake.gguf"
    fake.write_text("not gguf")
    with pytest.raises(UserError, match="named .gguf but not a GGUF file"):
        load_model(fake)
    note = tmp_path / "notes.txt"
    note.write_text("hello")
    assert main(["embed", "--model", str(note), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "is a txt file, not a model folder or a GGUF file" in err and err.count("\n") == 1
    monkeypatch.setattr(sources, "gguf_version", lambda: None)
    with pytest.raises(UserError, match=r"pip install 'llm-fourier\[gguf\]'") as info:
        load_model(path)
    assert "not installed" in str(info.value) and "\n" not in str(info.value)
    monkeypatch.setattr(sources, "gguf_version", lambda: (0, 9, 1))
    with pytest.raises(UserError, match="too old"):
        load_embedding_matrix(path)

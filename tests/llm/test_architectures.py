"""Every architecture of the roles table, on tiny random models: verified exact or refused.

Models are built once per session in memory (2 layers, d_model 32) with their norm weights
moved away from the identity (``perturb_norms``), so a role read before instead of after a
norm cannot pass by accident. "Verified" means: the self-check at load passes with zero
error in float32, and, independently of any hook, the hidden states the model returns
(``output_hidden_states``) equal the embedding plus the captured contributions.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from llm_fourier.analyses.embeddings import load_embedding_matrix
from llm_fourier.cli import main
from llm_fourier.errors import UserError
from llm_fourier.model import architectures
from llm_fourier.model.architectures import ROLES, Contribution
from llm_fourier.model.hooks import capture, edit
from llm_fourier.model.loading import load_model
from llm_fourier.model.roles_check import measure_roles
from tests.tiny import ARCHS, N_LAYERS, save_tiny

# every type the issue names, and what happens to it; the README's list must say the same
VERDICTS = {arch: "verified" for arch in ARCHS}
# configurations of those types whose residual stream is not a sum of contributions
REFUSED = {
    "opt-post-ln": ("opt", {"do_layer_norm_before": False}, "do_layer_norm_before=False"),
    "bloom-post-ln": ("bloom", {"apply_residual_connection_post_layernorm": True},
                      "apply_residual_connection_post_layernorm=True"),
    "bloom-sliced": ("bloom", {"pretraining_tp": 2, "slow_but_exact": True},
                     "slow_but_exact=True"),
}
# other layouts of table types that must verify too (parallel vs sequential blocks etc.)
VARIANTS = {
    "falcon-40b-style": ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}),
    "falcon-sequential": ("falcon", {"parallel_attn": False}),
    "gpt_neox-sequential": ("gpt_neox", {"use_parallel_residual": False}),
    "stablelm-parallel": ("stablelm", {"use_parallel_residual": True}),
}
IDS = torch.tensor([[3, 17, 5, 60, 93, 12, 150, 7, 41]])
README = Path(__file__).resolve().parents[2] / "README.md"


def _positions(model, arch: str, t: int) -> torch.Tensor:
    """Learned position embeddings of positions 0..t-1, by hand from the weights."""
    if arch in ("gpt2", "gpt_neo", "gpt_bigcode"):
        return model.transformer.wpe.weight[:t]
    if arch == "opt":  # OPTLearnedPositionalEmbedding: offset 2
        return model.model.decoder.embed_positions.weight[2:t + 2]
    return torch.zeros(())


@pytest.mark.parametrize("name", list(VERDICTS) + list(VARIANTS))
def test_verified_exact_against_the_models_own_hidden_states(tiny_models, name):
    arch, overrides = VARIANTS.get(name, (name, {}))
    model, tok = tiny_models(arch, **overrides)
    lm = load_model(model, tok)  # raises when anything does not add up
    assert lm.roles == ROLES[arch]
    report = measure_roles(lm)
    assert report.ok and [e for _, e in report.errors] == [0.0] * (N_LAYERS + 2)
    with torch.inference_mode():
        hs = model(IDS, output_hidden_states=True).hidden_states
        with capture(lm, positions="all") as cap:
            model(IDS)
    # block 0's input is the scaled token embedding plus position embeddings
    torch.testing.assert_close(hs[0][0], lm.embed_tokens(IDS)[0] + _positions(model, arch, 9),
                               rtol=0, atol=0)
    # the stream after layer l is the embedding plus every contribution of layers <= l
    stream = hs[0].double()
    for layer in range(N_LAYERS):
        stream = stream + cap.get("attn", layer) + cap.get("mlp", layer)
        # hidden_states[l + 1] is block l's output (the last one has the final norm applied)
        after = hs[layer + 1] if layer < N_LAYERS - 1 else cap.get("block", layer)
        torch.testing.assert_close(stream, after.double(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_layouts_say_so_in_one_sentence(tiny_models, name):
    arch, overrides, reason = REFUSED[name]
    model, tok = tiny_models(arch, **overrides)
    with pytest.raises(UserError) as err:
        load_model(model, tok)
    text = str(err.value)
    assert f"this {arch} model" in text and reason in text and "--skip-roles-check" in text
    assert "\n" not in text
    assert load_model(model, tok, verify=False).n_layers == N_LAYERS  # the expert opt-out


WRONG = [  # (type, a deliberately wrong role, where the check must stop)
    ("gemma2", {"attn": "self_attn"}, "layer 0"),  # the pre-norm attention output
    ("gemma3_text", {"mlp": "mlp"}, "layer 0"),
    ("olmo2", {"attn": "self_attn"}, "layer 0"),
    ("olmo3", {"mlp": "mlp"}, "layer 0"),
    ("granite", {"attn": Contribution("self_attn")}, "layer 0"),  # without the multiplier
    ("granite", {"embed_scale": None}, "the embedding"),
    ("bloom", {"attn": "self_attention"}, "layer 0"),  # adds the residual itself
    ("bloom", {"embed_post": None}, "the embedding"),
    ("gpt2", {"positions": None}, "the embedding"),
    ("opt", {"mlp": Contribution("fc2")}, "flat"),  # (N*T) x D rows read as N x T x D
    ("llama", {"final_norm": "model.layers.1.post_attention_layernorm"}, "the final norm"),
    ("phi", {"attn": "resid_dropout"}, "ran 2 times"),
]


@pytest.mark.parametrize("arch, change, where", WRONG)
def test_a_wrong_role_is_refused(tiny_models, monkeypatch, arch, change, where):
    model, tok = tiny_models(arch)
    monkeypatch.setitem(ROLES, arch, dataclasses.replace(ROLES[arch], **change))
    with pytest.raises(UserError) as err:
        load_model(model, tok)
    text = str(err.value)
    assert f"this {arch} model" in text and where in text and "\n" not in text
    assert "llm_fourier.model.architectures.ROLES" in text and "--skip-roles-check" in text


DISCOVERED_REFUSED = {"bloom", "opt"}  # discovery misses Bloom's embedding norm, OPT's fc2


@pytest.mark.parametrize("arch", ARCHS)
def test_discovered_roles_are_checked_too(tiny_models, monkeypatch, capsys, arch):
    model, tok = tiny_models(arch)
    table = ROLES[arch]
    monkeypatch.delitem(ROLES, arch)
    if arch in DISCOVERED_REFUSED:
        with pytest.raises(UserError, match=f"{arch}|ROLES"):
            load_model(model, tok)
        return
    lm = load_model(model, tok)
    assert lm.roles == table and "discovered" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text", "olmo2", "olmo3"])
def test_post_norm_filter_changes_the_stream_by_exactly_the_filtered_component(
        tiny_models, arch):
    model, tok = tiny_models(arch)
    lm = load_model(model, tok)
    q, _ = torch.linalg.qr(torch.randn(32, 2, generator=torch.Generator().manual_seed(0)))

    def fn(x):  # remove a 2-dimensional subspace: the kind of filter ablate applies
        return x - (x @ q) @ q.T

    layer = model.model.layers[0]
    post_attn = layer.post_attention_layernorm
    # what follows the attention in the block: Gemma's pre-FFN norm, OLMo-2's MLP itself
    after_attn = getattr(layer, "pre_feedforward_layernorm", layer.mlp)
    seen: dict = {}

    def record(name):
        return lambda m, args: seen.__setitem__(name, args[0].detach().clone())

    handles = [after_attn.register_forward_pre_hook(record("mlp_in")),
               model.model.layers[1].register_forward_pre_hook(record("block1_in")),
               post_attn.register_forward_hook(lambda m, a, o: seen.__setitem__("post", o)),
               layer.self_attn.register_forward_hook(lambda m, a, o: seen.__setitem__(
                   "attn_module", o[0]))]
    try:
        with torch.inference_mode():
            with capture(lm, ("attn", "mlp"), layers=[0], positions="all") as cap:
                model(IDS)
            plain = dict(seen)
            with edit(lm, {("attn", 0): fn}, positions="all"):
                model(IDS)
            attn_edited = dict(seen)
            with edit(lm, {("mlp", 0): fn}, positions="all"):
                model(IDS)
            mlp_edited = dict(seen)
    finally:
        for h in handles:
            h.remove()
    attn, mlp = cap.get("attn", 0), cap.get("mlp", 0)
    # the lens reads the post-norm output (what is added), not the attention module's
    assert torch.equal(attn, plain["post"].float())
    assert not torch.allclose(attn, plain["attn_module"].float(), atol=1e-2)
    removed_attn = (attn @ q) @ q.T  # by hand: what the filter takes out
    torch.testing.assert_close(attn_edited["mlp_in"] - plain["mlp_in"], -removed_attn,
                               rtol=1e-5, atol=1e-5)
    removed_mlp = (mlp @ q) @ q.T
    torch.testing.assert_close(mlp_edited["block1_in"] - plain["block1_in"], -removed_mlp,
                               rtol=1e-5, atol=1e-5)
    assert min(removed_attn.abs().max(), removed_mlp.abs().max()) > 100 * 1e-5  # not trivial


def test_granite_capture_and_edit_act_on_what_is_added(tiny_models):
    model, tok = tiny_models("granite")
    lm = load_model(model, tok)
    m = model.config.residual_multiplier
    layer = model.model.layers[0]
    seen: dict = {}
    handles = [layer.self_attn.register_forward_hook(lambda mod, a, o: seen.__setitem__(
                   "raw", o[0].detach().clone())),
               layer.post_attention_layernorm.register_forward_pre_hook(  # the MLP's input
                   lambda mod, args: seen.__setitem__("mlp_in", args[0].detach().clone())),
               layer.register_forward_pre_hook(lambda mod, args: seen.__setitem__(
                   "h", args[0].detach().clone()))]
    try:
        with torch.inference_mode():
            with capture(lm, ("attn",), layers=[0], positions="all") as cap:
                model(IDS)
            raw = seen["raw"]
            with edit(lm, {("attn", 0): lambda x: 2 * x}, positions="all"):
                model(IDS)
    finally:
        for h in handles:
            h.remove()
    added = cap.get("attn", 0)
    torch.testing.assert_close(added, (raw * m).float(), rtol=0, atol=0)  # what is added
    # the edit doubled exactly what the block adds: h + 2 * (m * out)
    torch.testing.assert_close(seen["mlp_in"], seen["h"] + 2 * added, rtol=1e-6, atol=1e-6)


def test_bloom_contribution_is_the_module_output_minus_its_residual(tiny_models):
    model, tok = tiny_models("bloom")
    lm = load_model(model, tok)
    seen: dict = {}
    attn = model.transformer.h[1].self_attention
    handle = attn.register_forward_hook(  # BloomAttention(hidden, residual, ...) adds residual
        lambda mod, args, kwargs, out: seen.update(out=out[0], residual=args[1]),
        with_kwargs=True)
    try:
        with torch.inference_mode(), capture(lm, ("attn",), layers=[1], positions="all") as cap:
            model(IDS)
    finally:
        handle.remove()
    torch.testing.assert_close(cap.get("attn", 1), seen["out"] - seen["residual"],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_zeroing_the_last_mlp_removes_exactly_its_contribution(tiny_models, arch):
    model, tok = tiny_models(arch)
    lm = load_model(model, tok)
    last = N_LAYERS - 1
    seen: list = []
    handle = lm.final_norm.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        with torch.inference_mode():
            with capture(lm, ("mlp", "block"), layers=[last], positions="all") as cap:
                model(IDS)
            with edit(lm, {("mlp", last): torch.zeros_like}):  # the last position only
                model(IDS)
    finally:
        handle.remove()
    want = cap.get("block", last) - cap.get("mlp", last)
    torch.testing.assert_close(seen[1][:, -1].float(), want[:, -1], rtol=1e-5, atol=1e-5)
    assert torch.equal(seen[1][:, :-1], seen[0][:, :-1])  # other positions untouched


def test_embedding_as_the_model_scales_it(tiny_models, tmp_path):
    for arch in ("gemma", "gemma2", "gemma3_text"):  # the module scales by sqrt(d) itself
        model, tok = tiny_models(arch)
        W = model.model.embed_tokens.weight
        scale = torch.tensor(32 ** 0.5).to(W.dtype)
        assert torch.equal(load_model(model, tok).embedding(), W * scale)
    model, tok = tiny_models("granite")
    W = model.model.embed_tokens.weight
    assert torch.equal(load_model(model, tok).embedding(), W * 3.0)  # embedding_multiplier
    granite_dir = save_tiny(model, tok, tmp_path / "granite")
    model, tok = tiny_models("bloom")
    ln = model.transformer.word_embeddings_layernorm
    assert torch.equal(load_model(model, tok).embedding(), ln(model.transformer.word_embeddings
                                                             .weight).detach())
    bloom_dir = save_tiny(model, tok, tmp_path / "bloom")
    model, tok = tiny_models("gpt2")
    assert load_model(model, tok).embedding().data_ptr() == model.transformer.wte.weight.data_ptr()
    gemma_dir = save_tiny(*tiny_models("gemma2"), tmp_path / "gemma2")
    # `embed` reads the same matrix: from safetensors alone (Gemma, Granite) or a full load
    for folder in (gemma_dir, granite_dir, bloom_dir):
        lm = load_model(folder)
        W_E, _ = load_embedding_matrix(folder)
        assert torch.equal(W_E, lm.embedding()), folder.name
        raw, _ = load_embedding_matrix(folder, scaled=False)
        assert torch.equal(raw, lm.model.get_input_embeddings().weight)
        assert not torch.equal(raw, W_E)


def test_cli_exit_2_with_the_sentence_and_the_opt_out(tiny_models, tmp_path, capsys):
    model, tok = tiny_models("opt", do_layer_norm_before=False)
    folder = save_tiny(model, tok, tmp_path / "opt-post-ln")
    args = ["probe", "--model", str(folder), "--max-operand", "6", "--limit", "2",
            "--tau", "3", "--out", str(tmp_path / "probe")]
    capsys.readouterr()
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "do_layer_norm_before=False" in err[0]
    assert main(args + ["--skip-roles-check"]) == 0


def test_readme_lists_the_verified_and_refused_types():
    text = README.read_text()
    section = text[text.index("## Supported architectures"):]
    section = section[:section.index("\n## ", 3)]
    listed: dict[str, set] = {}
    for item in section.split("\n- "):  # bullet items, continuation lines included
        match = re.match(r"\*\*(verified|refused)\*\*", item)
        if match:  # backticked model types (config keys such as `pretraining_tp` aside)
            names = set(re.findall(r"`([a-z0-9_]+)`", item)) & set(ROLES)
            listed.setdefault(match.group(1), set()).update(names)
    assert {arch: "verified" for arch in listed["verified"]} == VERDICTS
    assert listed["refused"] == {arch for arch, _, _ in REFUSED.values()}
    for _, _, reason in REFUSED.values():
        assert reason in section
    assert architectures.ROLES.keys() >= VERDICTS.keys()

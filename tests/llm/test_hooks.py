"""Capture and edit hooks: positions under padding, bit-identical logits, values, memory."""

from __future__ import annotations

import pytest
import torch

from llm_fourier.errors import UserError
from llm_fourier.model.hooks import capture, edit, last_token_positions
from llm_fourier.model.loading import load_model
from llm_fourier.model.tasks import tokenize_prompts
from tests.tiny import CAUSAL_ARCHS, tiny_lm, tiny_model_dir

PROMPTS = ["Put together 15 and 93 . Answer :", "Total of 3 and 4 . Answer :",
           "Calculate 100 + 7 . Answer :"]


def _lm(arch: str):
    return load_model(*tiny_lm(arch))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return load_model(tiny_model_dir(tmp_path_factory.mktemp("hooks"), "gpt2"))


def test_last_token_positions_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_positions(right).tolist() == [2, 4, 0]
    assert last_token_positions(left).tolist() == [4, 4, 4]
    assert last_token_positions(right.bool()).dtype == torch.long


@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_capture_is_bit_identical_and_sums_to_the_residual(arch):
    lm = _lm(arch)
    enc = tokenize_prompts(lm.tokenizer, PROMPTS)
    with torch.inference_mode():
        plain = lm.model(**enc, output_hidden_states=True)
        with capture(lm) as cap:
            hooked = lm.model(**enc)
    assert torch.equal(plain.logits, hooked.logits)
    pos = last_token_positions(enc["attention_mask"])
    rows = torch.arange(len(PROMPTS))
    attn, mlp, block = cap.stack("attn"), cap.stack("mlp"), cap.stack("block")
    assert block.shape == (3, lm.n_layers, lm.d_model) and block.dtype == torch.float32
    # the block output is hidden state i + 1 (the last one has the final norm in HF)
    torch.testing.assert_close(block[:, 0], plain.hidden_states[1][rows, pos])
    # attention and MLP outputs are exactly what each block adds to the residual stream
    resid_in = torch.cat([plain.hidden_states[0][rows, pos][:, None], block[:, :-1]], dim=1)
    torch.testing.assert_close(resid_in + attn + mlp, block, atol=1e-5, rtol=1e-4)


def test_right_padding_and_mask_sources(gpt2):
    enc = tokenize_prompts(gpt2.tokenizer, PROMPTS, padding_side="right")
    pos = last_token_positions(enc["attention_mask"])
    assert len(set(pos.tolist())) > 1  # the prompts have different lengths
    with torch.inference_mode():
        hs = gpt2.model(**enc, output_hidden_states=True).hidden_states
        with capture(gpt2, roles=["block"], layers=[0]) as by_kwarg:
            gpt2.model(**enc)
        with capture(gpt2, roles=["block"], layers=[0]) as by_set:
            by_set.set_mask(enc["attention_mask"])
            gpt2.model(enc["input_ids"])  # no attention_mask keyword: set_mask is used
        with capture(gpt2, roles=["block"], layers=[0]) as no_mask:
            gpt2.model(enc["input_ids"])
    want = hs[1][torch.arange(3), pos]
    assert torch.equal(by_kwarg.stack("block")[:, 0], want)
    torch.testing.assert_close(by_set.stack("block")[:, 0], want)
    # without any mask every token counts as real: the last column
    torch.testing.assert_close(no_mask.stack("block")[:, 0],
                               gpt2.model(enc["input_ids"], output_hidden_states=True)
                               .hidden_states[1][:, -1].detach())


def test_capture_accumulates_batches_and_keeps_only_last_rows(gpt2):
    # right padding: a causal model's real tokens do not depend on the padding after them
    batch = lambda prompts: tokenize_prompts(gpt2.tokenizer, prompts, padding_side="right")  # noqa: E731
    with torch.inference_mode():
        with capture(gpt2, roles=["attn", "mlp"]) as whole:
            gpt2.model(**batch(PROMPTS))
        with capture(gpt2, roles=["attn", "mlp"]) as parts:
            gpt2.model(**batch(PROMPTS[:2]))
            gpt2.model(**batch(PROMPTS[2:]))
    assert parts.n == 3
    torch.testing.assert_close(parts.stack("mlp"), whole.stack("mlp"), atol=1e-5, rtol=1e-4)
    # each kept chunk owns only its N x D rows (no view into an N x T x D output)
    for chunks in parts._done.values():
        for c in chunks:
            assert c.dim() == 2 and c.untyped_storage().nbytes() == c.numel() * 4


def test_positions_all_and_hooks_removed_on_error(gpt2):
    enc = tokenize_prompts(gpt2.tokenizer, PROMPTS)
    with torch.inference_mode():
        hs = gpt2.model(**enc, output_hidden_states=True).hidden_states
        with capture(gpt2, roles=["block"], positions="all") as cap:
            gpt2.model(**enc)
    t = enc["input_ids"].shape[1]
    assert cap.stack("block").shape == (3, t, gpt2.n_layers, gpt2.d_model)
    assert torch.equal(cap.stack("block")[:, :, 0], hs[1])
    modules = [gpt2.model] + [gpt2.module(i, r) for i in range(2) for r in ("attn", "mlp", "block")]
    before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in modules]
    with pytest.raises(RuntimeError), capture(gpt2) as cap:
        assert len(gpt2.model._forward_hooks) == before[0][0] + 1
        raise RuntimeError("boom")
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in modules] == before


def test_edit_identity_is_bit_identical_and_zeroing_mlp_matches_manual(gpt2):
    enc = tokenize_prompts(gpt2.tokenizer, PROMPTS, padding_side="right")
    pos = last_token_positions(enc["attention_mask"])
    rows = torch.arange(3)
    last = gpt2.n_layers - 1
    with torch.inference_mode():
        with capture(gpt2, roles=["mlp", "block"], layers=[last]) as cap:
            plain = gpt2.model(**enc).logits
        with edit(gpt2, {("attn", 0): lambda x: x, ("mlp", 1): lambda x: x}):
            same = gpt2.model(**enc).logits
        with edit(gpt2, {("mlp", last): torch.zeros_like}):
            zeroed = gpt2.model(**enc).logits
        # by hand: the residual without the last MLP, through the final norm and W_U
        resid = cap.stack("block")[:, 0] - cap.stack("mlp")[:, 0]
        manual = gpt2.final_norm(resid) @ gpt2.unembedding().T
    assert torch.equal(plain, same)
    torch.testing.assert_close(zeroed[rows, pos], manual, atol=1e-4, rtol=1e-4)
    other = torch.ones_like(enc["attention_mask"], dtype=torch.bool)
    other[rows, pos] = False  # every other position is untouched
    assert torch.equal(zeroed[other], plain[other])


def test_edit_all_positions_and_tuple_outputs(gpt2):
    enc = tokenize_prompts(gpt2.tokenizer, PROMPTS)
    with torch.inference_mode():
        with edit(gpt2, {("attn", 0): lambda x: 0 * x}, positions="all"), \
                capture(gpt2, roles=["attn"], layers=[0], positions="all") as cap:
            gpt2.model(**enc)
    # GPT-2 attention returns (output, weights): element 0 was replaced everywhere
    assert cap.stack("attn").abs().max() == 0


def test_user_errors(gpt2):
    with pytest.raises(UserError, match="role"), capture(gpt2, roles=["mlpp"]):
        pass
    with pytest.raises(UserError, match="layer"), capture(gpt2, layers=[5]):
        pass
    with pytest.raises(UserError, match="positions"), edit(gpt2, {}, positions="first"):
        pass
    enc = tokenize_prompts(gpt2.tokenizer, PROMPTS)
    with pytest.raises(UserError, match="attention mask"), capture(gpt2) as cap:
        cap.set_mask(torch.ones(2, 3))
        gpt2.model(enc["input_ids"])


def test_low_precision_model_captures_float32_and_edits_keep_its_dtype():
    model, tok = tiny_lm("llama")
    lm = load_model(model.to(torch.bfloat16), tok)
    enc = tokenize_prompts(lm.tokenizer, PROMPTS)
    seen = []

    def halve(x):
        seen.append(x.dtype)
        return x / 2

    with torch.inference_mode():
        hs = lm.model(**enc, output_hidden_states=True).hidden_states
        with capture(lm, roles=["block"], layers=[0]) as cap:
            plain = lm.model(**enc).logits
        with edit(lm, {("mlp", 1): halve}):
            edited = lm.model(**enc).logits
    assert cap.stack("block").dtype == torch.float32
    assert torch.equal(cap.stack("block")[:, 0], hs[1][:, -1].float())  # left padding
    assert seen == [torch.bfloat16] and edited.dtype == plain.dtype == torch.bfloat16
    assert not torch.equal(edited[:, -1], plain[:, -1])
    assert torch.equal(edited[:, :-1], plain[:, :-1])

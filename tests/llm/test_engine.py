"""The forward engine against independent computations: each prompt alone in one full
forward without a cache (no padding), and ``model.generate`` for greedy answers, on the
single-token, digit and chunk tokenizers; edits at the answer positions or everywhere,
early stop after a layer, resume from stored units."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llm_fourier.errors import UserError
from llm_fourier.model.engine import Condition, Engine, Greedy, PromptSet
from llm_fourier.model.loading import load_model
from llm_fourier.model.number_format import number_format
from llm_fourier.model.stacking import QUERY_STACKING, takes_block_mask
from llm_fourier.model.tasks import make_task
from tests.llm.families import family_lm, generate_answer, random_filter
from tests.tiny import ARCHS, tiny_config

OPERANDS = {"digits": 60, "chunks": 700, "single": 90}


@pytest.fixture(scope="module", params=["single", "digits", "chunks"])
def setup(request):
    lm = family_lm(request.param)
    task = make_task("+", OPERANDS[request.param], seed=0, shots=1)
    examples = task.test[:9]
    fmt = number_format(lm.tokenizer, task.max_answer)
    return lm, examples, fmt


def _alone(lm, fmt, example, filt=None, positions="last", layer=1):
    """Logits (m x V) at the answer positions and the MLP rows of ``layer`` there, from
    one full forward of prompt + answer (no cache, no padding); ``filt`` edits that MLP
    at the answer positions ("last") or everywhere ("all")."""
    ids = lm.tokenizer(example.prompt)["input_ids"]
    answer = list(fmt.encode(example.answer))
    P, m = len(ids), len(answer)
    seen = []

    def hook(module, args, out):
        x = (out[0] if isinstance(out, tuple) else out).clone()
        if filt is not None:
            where = slice(None) if positions == "all" else slice(P - 1, P - 1 + m)
            x[:, where] = filt(x[:, where])
        seen.append(x[0, P - 1:P - 1 + m] * site.scale)  # what the block adds
        return (x, *out[1:]) if isinstance(out, tuple) else x

    site = lm.site(layer, "mlp")
    handle = site.module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([ids + answer])).logits[0]
    finally:
        handle.remove()
    return logits[P - 1:P - 1 + m].float(), seen[0].float()


def _check_against_full_forwards(lm, examples, fmt, positions="last", **engine) -> list:
    """Run "none" and two edits through the engine and compare each prompt's logits and
    MLP rows at the answer positions with ``_alone``; the sizes of the groups that ran side
    by side."""
    filt = random_filter(lm)
    prompts = PromptSet.build(lm, examples, 4, fmt)  # left padded, batched by length
    assert [len(b.rows) for b in prompts.batches] == [4, 4, 1]
    assert any((b.enc["attention_mask"] == 0).any() for b in prompts.batches)
    conditions = [Condition("none"), Condition("edit", {("mlp", 1): filt}, positions),
                  Condition("attn", {("attn", 0): random_filter(lm, seed=1)}, positions)]
    side_by_side, real = [], Engine._queries

    def spy(self, conds, *args):
        used = real(self, conds, *args)
        side_by_side.extend([len(conds)] if used else [])
        return used

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Engine, "_queries", spy)
        units = Engine(lm, prompts, **engine).run(
            conditions, lambda b, c, out: (b.rows, out.logits, out.rows["mlp"]),
            roles=["mlp"], answers=True, progress=False)
    for name, filt_or_none in (("none", None), ("edit", filt)):
        for rows, logits, mlp in units[name]:
            for j, i in enumerate(rows):
                want, want_rows = _alone(lm, fmt, examples[i], filt_or_none, positions)
                m = want.shape[0]
                torch.testing.assert_close(logits[j, :m], want, atol=2e-4, rtol=1e-4)
                torch.testing.assert_close(mlp[j, :m, 1], want_rows, atol=2e-4, rtol=1e-4)
    return side_by_side


# one condition at a time; stacked along the batch; side by side along the sequence
STACKING = {"alone": dict(stack_rows=0), "rows": dict(stack_queries=False),
            "side by side": dict(stack_queries=True)}


@pytest.mark.parametrize("stacking", list(STACKING))
@pytest.mark.parametrize("positions", ["last", "all"])
def test_teacher_forced_logits_and_rows_equal_full_forwards(setup, positions, stacking):
    lm, examples, fmt = setup
    side_by_side = _check_against_full_forwards(lm, examples, fmt, positions,
                                                **STACKING[stacking])
    # edits at every position run alone; at the answer positions side by side if asked
    assert side_by_side == ([3, 3, 3] if stacking == "side by side" and positions == "last"
                            else [])


def _digit_lm(arch: str, **config):
    """A tiny digit-splitting ``arch`` model with ``config`` set."""
    import transformers as T

    tok = family_lm("digits", "llama").tokenizer
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(tiny_config(
        arch, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, **config)).eval()
    return load_model(model, tok)


@pytest.mark.parametrize("arch", ARCHS)
def test_side_by_side_conditions_are_exact_on_every_listed_type(arch):
    """Conditions side by side along the sequence (one 4D block mask on the prefix's cache)
    give each prompt's full-forward logits and rows on every type in ``QUERY_STACKING``,
    and run by default there (sliding-window cache layers included); the types left out
    derive positions from the 2D mask, and side by side they fail or differ."""
    lm = family_lm("digits", arch)
    task = make_task("+", OPERANDS["digits"], seed=0, shots=1)
    examples, fmt = task.test[:9], number_format(lm.tokenizer, task.max_answer)
    if arch not in QUERY_STACKING:
        assert not takes_block_mask(lm.model)
        with pytest.raises((AssertionError, RuntimeError, ValueError)):
            _check_against_full_forwards(lm, examples, fmt, stack_queries=True)
        return
    assert takes_block_mask(lm.model)
    assert _check_against_full_forwards(lm, examples, fmt) == [3, 3, 3]
    # a head edit (the heads role edits the output projection's input) is the same side by
    # side as stacked along the batch, here with runs of one token (no answers fed)
    prompts = PromptSet.build(lm, examples, 4)

    def zero_head(z):
        z = z.clone()
        z[..., 0, :] = 0
        return z

    conds = [Condition("none"), Condition("head", {("heads", 0): zero_head})]
    got = {q: Engine(lm, prompts, stack_queries=q).run(
        conds, lambda b, c, out: out.logits, progress=False) for q in (1, 0)}
    for a, b in zip(got[1]["head"], got[0]["head"]):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(got[1]["head"][0], got[1]["none"][0])


@pytest.mark.parametrize("arch, window", [("gpt_neo", "window_size"),
                                          ("mistral", "sliding_window"),
                                          ("gemma3_text", "sliding_window")])
def test_a_local_attention_window_shorter_than_the_prompts_is_kept(arch, window):
    """Local layers see the last few tokens (GPT-Neo's mask; Mistral's and Gemma 3's
    sliding-window caches too): with prompts longer than the window the engine stacks
    along the batch, where the model builds its own masks, and stays exact."""
    lm = _digit_lm(arch, **{window: 4})
    task = make_task("+", OPERANDS["digits"], seed=0, shots=1)
    fmt = number_format(lm.tokenizer, task.max_answer)
    assert takes_block_mask(lm.model) and Engine(lm, PromptSet.build(lm, task.test[:9], 4)
                                                  ).window == 4
    assert _check_against_full_forwards(lm, task.test[:9], fmt) == []


def _greedy(lm, fmt, examples, cap, monkeypatch) -> tuple[list[int], list[int]]:
    """(engine's greedy answers, rows it decoded step by step)."""
    prompts = PromptSet.build(lm, examples, 4, fmt)
    decoded: list[int] = []
    real = Engine._decode

    def counting(self, batch, conds, rows, prefix, start, g):
        decoded.extend(batch.rows[j] for r in rows for j in r)
        return real(self, batch, conds, rows, prefix, start, g)

    monkeypatch.setattr(Engine, "_decode", counting)
    units = Engine(lm, prompts).run([Condition()], lambda b, c, out: out.predictions,
                                    greedy=Greedy(fmt, cap), progress=False)["none"]
    return prompts.scatter(units).tolist(), decoded


def test_greedy_answers_equal_generate_with_and_without_decoding(setup, monkeypatch):
    lm, examples, fmt = setup
    cap = max(len(fmt.encode(e.answer)) for e in examples) + 1
    want = [generate_answer(lm, fmt, e, cap) for e in examples]
    got, decoded = _greedy(lm, fmt, examples, cap, monkeypatch)
    assert got == want
    # the model's own answers as the "answers": teacher forcing reproduces them, so the
    # rows that end their number within the cap need no step-by-step decoding
    own = [dataclasses.replace(e, answer=p) for e, p in zip(examples, want)
           if 0 <= p <= fmt.max_number]
    cap = max(cap, max(len(fmt.encode(e.answer)) for e in own) + 1)
    got, decoded = _greedy(lm, fmt, own, cap, monkeypatch)
    assert got == [generate_answer(lm, fmt, e, cap) for e in own]
    assert len(decoded) < len(own)


def test_early_stop_runs_no_deeper_layer(setup):
    lm, examples, fmt = setup
    prompts = PromptSet.build(lm, examples, 4)
    ran = []
    handle = lm.blocks[1].register_forward_pre_hook(lambda *_: ran.append(1))
    try:
        stopped = Engine(lm, prompts).run([Condition()], lambda b, c, out: (out.logits,
                                                                            out.rows["block"]),
                                          roles=["block"], layers=[0], stop_after=0,
                                          progress=False)["none"]
    finally:
        handle.remove()
    assert ran == []  # neither the prefix forward nor the conditions reach layer 1
    full = Engine(lm, prompts).run([Condition()], lambda b, c, out: out.rows["block"],
                                   roles=["block"], layers=[0], progress=False)["none"]
    for (logits, rows), want in zip(stopped, full):
        assert logits is None
        torch.testing.assert_close(rows, want)


def test_resume_reads_stored_units_and_computes_only_the_rest(setup):
    lm, examples, _ = setup
    prompts = PromptSet.build(lm, examples, 4)
    engine = Engine(lm, prompts)
    conds = [Condition("a"), Condition("b", {("attn", 0): random_filter(lm)})]
    store: dict = {}
    first = engine.run(conds, lambda b, c, out: out.logits[:, 0].argmax(-1), store=store,
                       progress=False)
    assert sorted(store) == sorted([f"{c}/{b}" for c in "ab" for b in range(3)] + ["layout/a"])
    with pytest.raises(UserError, match="batches of 4 prompts"):  # another batching
        Engine(lm, PromptSet.build(lm, examples, 3)).run(conds, lambda b, c, out: 0,
                                                          store=store, progress=False)
    del store["b/1"]
    ran = []
    again = engine.run(conds, lambda b, c, out: ran.append((b.number, c.name)) or
                       out.logits[:, 0].argmax(-1), store=store, progress=False)
    assert ran == [(1, "b")]
    for c in "ab":
        assert all(torch.equal(x, y) for x, y in zip(first[c], again[c]))
    with pytest.raises(UserError, match="names must differ"):
        engine.run([Condition("a"), Condition("a")], lambda b, c, out: 0, progress=False)
    with pytest.raises(UserError, match="positions"):
        Condition("x", positions="middle")


def test_per_batch_units_keep_every_condition_of_a_batch_in_one(setup):
    """Many small conditions (one per head) keep one unit per batch, not one per
    (batch, condition); a resumed run computes only the batches without one."""
    lm, examples, _ = setup
    prompts = PromptSet.build(lm, examples, 4)
    engine = Engine(lm, prompts)
    conds = [Condition(f"c{i}", {("attn", 0): random_filter(lm, seed=i)}) for i in range(5)]
    store: dict = {}
    first = engine.run(conds, lambda b, c, out: out.logits[:, 0].argmax(-1), store=store,
                       per_batch=True, progress=False)
    assert sorted(store) == ["c0+/0", "c0+/1", "c0+/2", "layout/c0"]
    del store["c0+/2"]
    ran = []
    again = engine.run(conds, lambda b, c, out: ran.append((b.number, c.name)) or
                       out.logits[:, 0].argmax(-1), store=store, per_batch=True,
                       progress=False)
    assert ran == [(2, c.name) for c in conds]
    for c in conds:
        assert all(torch.equal(x, y) for x, y in zip(first[c.name], again[c.name]))


def test_a_hook_context_condition_acts_from_its_first_position(setup):
    """A knockout installed as a hook context acts on every forward of its condition: from
    the last prompt token on the shared prefix ("last"), from position 0 ("all"), as the
    same edit at those positions does."""
    lm, examples, fmt = setup
    module = lm.site(0, "mlp").module

    def knockout():
        def hook(mod, args, out):
            return (out[0] * 0, *out[1:]) if isinstance(out, tuple) else out * 0

        handle = module.register_forward_hook(hook)

        class Context:
            def __enter__(self):
                return handle

            def __exit__(self, *exc):
                handle.remove()

        return Context()

    prompts = PromptSet.build(lm, examples, 4, fmt)
    zero = {("mlp", 0): lambda x: x * 0}
    conds = [Condition(f"hooks {p}", hooks=knockout, positions=p) for p in ("last", "all")]
    conds += [Condition(f"edit {p}", zero, p) for p in ("last", "all")]
    units = Engine(lm, prompts).run(conds, lambda b, c, out: out.logits, answers=True,
                                    progress=False)
    for p in ("last", "all"):
        for a, b in zip(units[f"hooks {p}"], units[f"edit {p}"]):
            torch.testing.assert_close(a, b)
    assert not torch.allclose(units["edit last"][0], units["edit all"][0])

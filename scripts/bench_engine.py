"""Time of each command's forward work over one plain forward of the same prompts.

Two random-weight models on the CPU: a GPT-2-shaped single-token model (d 768, GPT-2's
vocabulary size 50257, a word-level tokenizer keeping 0..520 as single tokens) and a
Llama-shaped digit-splitting model of Qwen2.5-0.5B's width (d 896, 14 heads, 2 KV heads,
MLP 4864, vocabulary 32000, one token per digit). Prompts are 2-shot additions. The
reference is one plain forward of every prompt (``logits_to_keep=1``, batched as the
command batches them). Each round times, in turn, the reference, every benchmark of
``BENCHES`` and the naive loops the engine replaced (every Table 1 row a full forward of
every prompt; for whole answers greedy steps and then teacher-forced steps, each starting
with a full prompt forward); rounds are interleaved so that load on a shared machine hits
all alike, and the median ratio over rounds is printed, then one JSON line.

``hidden`` (every role at operand a's token; all layers, and layers 0-1 with the early
stop), ``neurons`` (``KNOCKOUT_ROWS`` knockouts; target 1 + 0.2 per row) and ``patch`` (one
layer, the helix: five conditions, each a whole-prompt forward) are timed the same way;
``--benches`` picks some.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_fourier.analyses.ablation import (  # noqa: E402
    MODULES,
    ablation_table,
    filter_edits,
    table_rows,
)
from llm_fourier.analyses.answers import max_answer_tokens  # noqa: E402
from llm_fourier.analyses.digits import run_digit_lens  # noqa: E402
from llm_fourier.analyses.fourier_neurons import knockout_table, neuron_spectra  # noqa: E402
from llm_fourier.analyses.hidden_states import collect  # noqa: E402
from llm_fourier.analyses.lens import run_lens  # noqa: E402
from llm_fourier.analyses.patching import helix_patching  # noqa: E402
from llm_fourier.model.answer_space import AnswerSpace  # noqa: E402
from llm_fourier.model.hooks import edit  # noqa: E402
from llm_fourier.model.loading import load_model  # noqa: E402
from llm_fourier.model.number_format import NumberParser, number_format  # noqa: E402
from llm_fourier.model.tasks import make_task, tokenize_prompts  # noqa: E402
from llm_fourier.model.tokenizers import word_level_tokenizer  # noqa: E402


def build(kind: str, layers: int):
    """(lm, examples, space) of the single-token GPT-2 or the digit Llama."""
    import transformers as T

    if kind == "single":
        tok = word_level_tokenizer(520)
        config = T.GPT2Config(n_layer=layers, n_embd=768, n_head=12, vocab_size=50257,
                              pad_token_id=0, bos_token_id=3, eos_token_id=1)
        max_operand = 260
    else:
        tok = word_level_tokenizer(9, split_digits=True)
        config = T.LlamaConfig(hidden_size=896, intermediate_size=4864, num_hidden_layers=layers,
                               num_attention_heads=14, num_key_value_heads=2, vocab_size=32000,
                               pad_token_id=0, bos_token_id=3, eos_token_id=1,
                               tie_word_embeddings=True)
        max_operand = 499
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    lm = load_model(model, tok)
    task = make_task("+", max_operand, seed=0, shots=2)
    space = AnswerSpace.build(number_format(tok, task.max_answer), task.max_answer)
    return lm, task.test, space


def plain(lm, examples, batch: int) -> None:
    """The reference: one forward of every prompt, logits at the last position only."""
    with torch.inference_mode():
        for i in range(0, len(examples), batch):
            enc = tokenize_prompts(lm.tokenizer, [e.prompt for e in examples[i:i + batch]])
            lm.model(**enc, logits_to_keep=1)


def naive_ablate(lm, examples, space: AnswerSpace, batch: int) -> None:
    """The loops the engine replaced: every row a full forward of every prompt (whole
    answers: greedy steps, then teacher-forced steps, each from a full prompt forward)."""
    filters = space.filters(lm)
    fmt = space.fmt
    cap = max_answer_tokens(fmt, examples)
    with torch.inference_mode():
        for fname, modules in table_rows(filters):
            edits = {} if fname == "none" else filter_edits(filters[fname], MODULES[modules],
                                                            range(lm.n_layers))
            for i in range(0, len(examples), batch):
                part = examples[i:i + batch]
                enc = tokenize_prompts(lm.tokenizer, [e.prompt for e in part])
                with edit(lm, edits, "last"):
                    if space.single:
                        lm.model(**enc)  # logits at every position, as evaluate read them
                        continue
                    answers = fmt.encode_many(e.answer for e in part)
                    parsers = [NumberParser(fmt) for _ in part]
                    _steps(lm, enc, cap, lambda s, lg, ps=parsers: None
                           if all(p.done for p in ps) else _feed(ps, lg.argmax(-1)))
                    m = max(len(a) for a in answers)
                    table = torch.tensor([list(a) + [0] * (m - len(a)) for a in answers])
                    _steps(lm, tokenize_prompts(lm.tokenizer, [e.prompt for e in part]), m,
                           lambda s, lg, t=table: (torch.log_softmax(lg.float(), -1), t[:, s])[1])


def _feed(parsers, toks):
    for p, t in zip(parsers, toks.tolist()):
        p.feed(t)
    return toks


def _steps(lm, enc, n: int, visit) -> None:
    mask, pos = enc["attention_mask"], enc["position_ids"][:, -1:]
    out = lm.model(**enc, use_cache=True, logits_to_keep=1)
    for s in range(n):
        nxt = visit(s, out.logits[:, -1])
        if nxt is None or s == n - 1:
            return
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        pos = pos + 1
        out = lm.model(input_ids=nxt.view(-1, 1), attention_mask=mask, position_ids=pos,
                       use_cache=True, cache=out.cache)


def probe(lm, examples, space: AnswerSpace, batch: int) -> None:
    if space.single:
        run_lens(lm, examples, space, batch_size=batch, progress=False, predictions=[])
    else:
        run_digit_lens(lm, examples, space, batch_size=batch, progress=False, predictions=[])


def ablate(lm, examples, space: AnswerSpace, batch: int) -> None:
    ablation_table(lm, examples, space, batch_size=batch, progress=False)


def hidden(lm, examples, space: AnswerSpace, batch: int) -> None:
    """``hidden``'s collection: every role and layer at operand a's last token."""
    collect(lm, examples, "a", batch_size=batch, progress=False)


def hidden_early(lm, examples, space: AnswerSpace, batch: int) -> None:
    """``hidden --layers 0 1``: the forwards stop after layer 1."""
    collect(lm, examples, "a", layers=[0, 1], batch_size=batch, progress=False)


KNOCKOUT_PERIODS, N_RANDOM = (10, 5), 2
KNOCKOUT_ROWS = 1 + len(KNOCKOUT_PERIODS) * (1 + N_RANDOM)  # baseline, top and draws
_kept: dict = {}  # spectra and training states, computed once per model outside the timing


def neurons(lm, examples, space: AnswerSpace, batch: int) -> None:
    """``neurons``' knockouts: the baseline, per period its top 20 neurons and 2 draws."""
    if ("spectra", id(lm)) not in _kept:
        _kept["spectra", id(lm)] = neuron_spectra(lm, space, basis_kind="dft",
                                                  periods=KNOCKOUT_PERIODS)
    knockout_table(lm, examples, space, KNOCKOUT_PERIODS, 20, n_random=N_RANDOM,
                   spectra=_kept["spectra", id(lm)], batch_size=batch, progress=False)


def patch(lm, examples, space: AnswerSpace, batch: int) -> None:
    """``patch`` at one (block, layer 1) with the helix: the clean run, mean, actual, same
    and swap patches (the training states fitted on are collected once, untimed)."""
    if ("train", id(lm)) not in _kept:
        train = make_task("+", 99, seed=1).train[:300]
        _kept["train", id(lm)] = collect(lm, train, "a", roles=("block",), layers=[1],
                                         batch_size=batch, progress=False)
    states = _kept["train", id(lm)]
    helix_patching(lm, states.examples, examples, space, layers=[1], methods=("helix",),
                   pca_dim=20, correct_only=False, train_states=states, batch_size=batch,
                   progress=False)


BENCHES = {"probe": probe, "ablate": ablate, "ablate (naive loops)": naive_ablate,
           "hidden": hidden, "hidden --layers 0 1": hidden_early, "neurons": neurons,
           "patch": patch}
TARGETS = {("single", "ablate"): 1.5, ("digits", "ablate"): 3.0, ("single", "probe"): 1.3,
           ("digits", "probe"): 1.3, ("single", "hidden"): 1.0, ("digits", "hidden"): 1.0,
           ("single", "neurons"): 1 + 0.2 * KNOCKOUT_ROWS,
           ("digits", "neurons"): 1 + 0.2 * KNOCKOUT_ROWS}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=["single", "digits"])
    ap.add_argument("--benches", nargs="+", default=list(BENCHES), choices=list(BENCHES))
    args = ap.parse_args(argv)
    benches = {name: BENCHES[name] for name in args.benches}
    torch.set_num_threads(args.threads)
    out = {}
    for kind in args.models:
        lm, examples, space = build(kind, args.layers)
        examples = examples[:args.prompts]
        start = time.perf_counter()
        space.filters(lm)  # built once per run (AnswerSpace keeps them), timed apart
        print(f"{kind}: filters built in {time.perf_counter() - start:.2f} s (once per run)")
        tokens = [len(lm.tokenizer(e.prompt)["input_ids"]) for e in examples]
        print(f"{kind}: {lm.n_layers} layers, d {lm.d_model}, vocab "
              f"{lm.model.config.vocab_size}, {len(examples)} prompts of "
              f"{min(tokens)}-{max(tokens)} tokens (mean {statistics.mean(tokens):.1f}), "
              f"batch {args.batch_size}, {args.threads} threads", flush=True)
        runs = {"plain forward": plain, **benches}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for fn in runs.values():  # warm-up
            fn(lm, examples[:args.batch_size], space, args.batch_size) if fn is not plain \
                else fn(lm, examples[:args.batch_size], args.batch_size)
        for _ in range(args.rounds):
            for name, fn in runs.items():
                start = time.perf_counter()
                if fn is plain:
                    fn(lm, examples, args.batch_size)
                else:
                    fn(lm, examples, space, args.batch_size)
                times[name].append(time.perf_counter() - start)
        ratios = {}
        for name in benches:
            per_round = [t / p for t, p in zip(times[name], times["plain forward"])]
            ratios[name] = statistics.median(per_round)
            target = TARGETS.get((kind, name))
            print(f"  {name:<22} {ratios[name]:6.2f} x plain forward (rounds: "
                  f"{', '.join(f'{r:.2f}' for r in per_round)})"
                  f"{f'  target <= {target:g}' if target else ''}", flush=True)
        print(f"  plain forward: {statistics.median(times['plain forward']):.2f} s", flush=True)
        out[kind] = ratios
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()

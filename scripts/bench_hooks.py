"""Overhead of llm_fourier.hooks against a plain forward on a GPT-2-small-shaped model.

Random GPT-2 (12 layers, d 768, vocab 50257 by default), batch 64 x 12 tokens, CPU,
``torch.inference_mode``. After a warm-up, plain, capture and ablation forwards are timed
in interleaved rounds; ratios to the plain forward (of the medians and of the minima, by
wall clock and by this process's CPU time, which resists other load) are printed for
(a) capturing every layer's attention and MLP outputs at the last position (target <= 1.02)
(b) a low-pass filter (built once from W_U[numbers 0..520]) on every attention and MLP
    output at the last position (target <= 1.10).
nnsight (same model, same work) and TransformerLens (its own HookedTransformer of the
same shape, against its own forward) are timed when importable (not dependencies).
Also prints the memory a probe keeps (N x L x D floats) against N x T x L x D.

    python scripts/bench_hooks.py [--vocab 50257] [--rounds 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from llm_fourier.ablate import filter_edits
from llm_fourier.hooks import capture, edit
from llm_fourier.models import LoadedModel, roles_for
from probes import FourierBasis, low_pass


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def optional_ratios(model, inputs, vocab: int, plain: float, rounds: int) -> None:
    """Ratios of nnsight (same model, same work) and TransformerLens (its own GPT-2-small
    shaped HookedTransformer against its own plain forward), when they are importable."""
    median = lambda fn: statistics.median(timed(fn)[0] for _ in range(rounds))  # noqa: E731
    layers = len(model.transformer.h)
    try:
        from nnsight import NNsight
    except ImportError:
        print("nnsight: not installed, skipped")
    else:
        nn_model = NNsight(model)

        def run_nnsight():
            with nn_model.trace(**inputs):
                for i in range(layers):
                    nn_model.transformer.h[i].attn.output[0][:, -1].save()
                    nn_model.transformer.h[i].mlp.output[:, -1].save()

        try:
            run_nnsight()
            print(f"nnsight capture ratio (wall, median): {median(run_nnsight) / plain:.3f}")
        except Exception as err:  # a third-party API we do not pin
            print(f"nnsight: failed ({type(err).__name__}: {err}), skipped")
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        print("TransformerLens: not installed, skipped")
        return
    try:
        cfg = HookedTransformerConfig(n_layers=layers, d_model=768, d_head=64, n_heads=12,
                                      d_mlp=3072, d_vocab=vocab, n_ctx=1024,
                                      act_fn="gelu_new", normalization_type="LN")
        tl = HookedTransformer(cfg).eval()
        ids = inputs["input_ids"]
        wanted = lambda name: name.endswith(("hook_attn_out", "hook_mlp_out"))  # noqa: E731
        tl(ids)
        tl.run_with_cache(ids, names_filter=wanted)
        ratio = median(lambda: tl.run_with_cache(ids, names_filter=wanted)) / median(
            lambda: tl(ids))
        print(f"TransformerLens run_with_cache ratio to its own forward (wall, median): "
              f"{ratio:.3f} (it keeps all positions)")
    except Exception as err:  # a third-party API we do not pin
        print(f"TransformerLens: failed ({type(err).__name__}: {err}), skipped")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1: steady timings on a shared machine; "
                         "0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=args.vocab)
    model = GPT2LMHeadModel(cfg).eval()
    lm = LoadedModel(model, None, roles_for(model), "gpt2-small-random")
    ids = torch.randint(0, args.vocab, (args.batch, args.tokens))
    mask = torch.ones_like(ids)
    mask[: args.batch // 2, : args.tokens // 3] = 0  # left padding on half of the rows
    inputs = {"input_ids": ids, "attention_mask": mask}

    numbers = np.arange(521)  # stand-in number tokens 0..520 (the paper's p)
    W = lm.unembedding()[torch.as_tensor(numbers)].double().numpy()
    t0 = time.perf_counter()
    filt = low_pass(W, FourierBasis(521), tau=50)
    print(f"low-pass filter built once in {time.perf_counter() - t0:.2f}s (rank {filt.rank})")
    edits = filter_edits(filt, ("attn", "mlp"), range(lm.n_layers))

    def plain():
        model(**inputs)

    def with_capture():
        with capture(lm, roles=("attn", "mlp")) as cap:
            model(**inputs)
        return cap

    def with_filter():
        with edit(lm, edits):
            model(**inputs)

    with torch.inference_mode():
        for fn in (plain, with_capture, with_filter, plain):  # warm-up
            fn()
        times = {"plain": [], "capture": [], "filter": []}
        for _ in range(args.rounds):  # interleaved, so drifts in machine load hit all alike
            for name, fn in (("plain", plain), ("capture", with_capture),
                             ("filter", with_filter)):
                times[name].append(timed(fn))
        cap = with_capture()
        plain_t = statistics.median(t[0] for t in times["plain"])
        print(f"model: GPT-2-small shape, 12 layers, d 768, vocab {args.vocab}; batch "
              f"{args.batch} x {args.tokens} tokens; {torch.get_num_threads()} CPU threads")
        print(f"plain forward: median {plain_t * 1e3:.1f} ms wall over {args.rounds} rounds")

        def ratios(name: str) -> str:
            out = []
            for clock, i in (("wall", 0), ("cpu", 1)):
                mine, base = [t[i] for t in times[name]], [t[i] for t in times["plain"]]
                med = statistics.median(mine) / statistics.median(base)
                out.append(f"{clock}: median {med:.3f}, min {min(mine) / min(base):.3f}")
            return "; ".join(out)

        print(f"(a) capture attn+MLP, all layers, last position (target <= 1.02): "
              f"{ratios('capture')}")
        print(f"(b) low-pass filter on attn+MLP, all layers (target <= 1.10): "
              f"{ratios('filter')}")
        optional_ratios(model, inputs, args.vocab, plain_t, min(args.rounds, 5))

    kept = sum(cap.stack(r).nbytes for r in cap.roles)
    full = kept * args.tokens
    n_paper = 3420  # the paper's test split
    per_prompt = 2 * lm.n_layers * lm.d_model * 4
    print(f"memory kept by the capture: {kept / 2**20:.2f} MiB for {args.batch} prompts "
          f"(N x L x D x 2 roles, float32); all positions would be {full / 2**20:.1f} MiB")
    print(f"a probe over the paper's {n_paper} test prompts keeps "
          f"{n_paper * per_prompt / 2**20:.0f} MiB (attn+MLP), never N x T x L x D")


if __name__ == "__main__":
    main()

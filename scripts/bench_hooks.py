"""Overhead of llm_fourier.model.hooks against a plain forward on a GPT-2-small-shaped model.

Random GPT-2 (12 layers, d 768, vocab 50257 by default), batch 64 x 12 tokens (half the
rows left-padded, positions counted over real tokens as ``tokenize_prompts`` gives them),
CPU, ``torch.inference_mode``. After a warm-up, plain, capture and ablation forwards are
timed in interleaved rounds; ratios to the plain forward (of the medians and of the
minima, by wall clock and by this process's CPU time, which resists other load) are
printed for
(a) capturing every layer's attention and MLP outputs at the last position (target <= 1.02)
(b) a low-pass filter (built once from W_U[numbers 0..520]) on every attention and MLP
    output at the last position (target <= 1.10).
Peers doing the same capture on the same HF model, when installed (not dependencies;
otherwise one line says why each is missing): nnsight (``NNsight(model).trace`` with
``.output[...].save()``) and TransformerLens 4.x (``TransformerBridge.boot_transformers``
with ``hf_model=``, ``run_with_cache(names_filter=..., pos_slice=-1)``; the bridge forces
eager attention, so its ratios to its own forward and to an eager HF forward are printed
too), timed in interleaved rounds with our plain forward. Each peer's rows are checked
against ours. Also prints the memory a probe keeps (N x L x D floats) against
N x T x L x D.

    python scripts/bench_hooks.py [--layers 12] [--d-model 768] [--vocab 50257] [--rounds 15]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_fourier.analyses.ablation import filter_edits  # noqa: E402
from llm_fourier.model.hooks import capture, edit  # noqa: E402
from llm_fourier.model.loading import LoadedModel, roles_for  # noqa: E402
from probes import FourierBasis, low_pass  # noqa: E402


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def peer_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160] if text else ''}"


def nnsight_runs(model, inputs, layers: int) -> dict:
    """nnsight (>= 0.4 API): trace the same HF model and save every layer's attention and
    MLP output at the last position."""
    from nnsight import NNsight

    traced = NNsight(model)

    def run():
        saved = []
        with traced.trace(**inputs):
            for i in range(layers):
                saved.append(traced.transformer.h[i].attn.output[0][:, -1].save())
                traced.transformer.h[i].mlp.output[:, -1].save()
        return torch.stack([torch.as_tensor(r) for r in saved], dim=1)

    return {"capture": run}


def bridge_runs(model, inputs, layers: int) -> dict:
    """TransformerLens 4.x: ``TransformerBridge.boot_transformers`` around a copy of the same
    HF model (the bridge switches it to eager attention), ``run_with_cache`` of every
    layer's attention and MLP outputs at the last position (``pos_slice=-1``); also its own
    forward and an eager-attention HF forward, to separate hooks from attention kernels."""
    from transformers import PreTrainedTokenizerFast

    from llm_fourier.model.tokenizers import word_level_tokenizer

    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as err:
        raise RuntimeError("this version has no TransformerBridge (it came with 3.0)") from err
    with tempfile.TemporaryDirectory() as folder:  # it reloads the tokenizer by its path
        word_level_tokenizer(10).save_pretrained(folder)
        tok = PreTrainedTokenizerFast.from_pretrained(folder)
        bridge = TransformerBridge.boot_transformers(
            "gpt2", hf_model=copy.deepcopy(model), tokenizer=tok, device="cpu")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    wanted = lambda name: name.endswith(("attn.hook_out", "mlp.hook_out"))  # noqa: E731
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")

    def run():
        cache = bridge.run_with_cache(ids, attention_mask=mask, names_filter=wanted,
                                      pos_slice=-1)[1]
        return torch.stack([cache[f"blocks.{i}.attn.hook_out"][:, -1] for i in range(layers)],
                           dim=1)

    return {"capture": run, "own_forward": lambda: bridge(ids, attention_mask=mask),
            "hf_eager_forward": lambda: eager(**inputs)}


PEERS = (("nnsight", "nnsight", nnsight_runs),
         ("TransformerLens", "transformer-lens", bridge_runs))


def peer_ratios(model, inputs, plain, ours: Tensor, rounds: int) -> dict:
    """Capture time of each peer against our plain forward (same HF model, same work:
    attention and MLP outputs of every layer at the last position), timed in interleaved
    rounds with it, or why the peer is missing."""
    layers = len(model.transformer.h)
    out, runs = {}, {}
    for peer, dist, make in PEERS:
        version = peer_version(dist)
        if version is None:
            out[peer] = f"not installed (pip install {dist}), skipped"
            continue
        try:
            fns = make(model, inputs, layers)
            rows = fns["capture"]()  # also a warm-up
            out[peer] = {"version": version,
                         "max_abs_diff": float((rows - ours).abs().max())}
            runs[peer] = fns
        except Exception as err:  # a third-party API we do not pin
            out[peer] = f"{version} installed but failed ({reason(err)}), skipped"
    times = {"plain": []} | {(p, k): [] for p, fns in runs.items() for k in fns}
    for _ in range(rounds if runs else 0):
        times["plain"].append(timed(plain))
        for (peer, kind), store in list(times.items())[1:]:
            store.append(timed(runs[peer][kind]))
    median = lambda key, i: statistics.median(t[i] for t in times[key])  # noqa: E731
    for peer, _, _ in PEERS:
        r = out[peer]
        if isinstance(r, str):
            print(f"{peer}: {r}")
            continue
        for clock, i in (("wall", 0), ("cpu", 1)):
            r[clock] = {"capture_ratio": median((peer, "capture"), i) / median("plain", i)}
            for kind in ("own_forward", "hf_eager_forward"):
                if (peer, kind) in times:
                    r[clock][f"ratio_to_{kind}"] = (median((peer, "capture"), i)
                                                     / median((peer, kind), i))
        extra = "".join(f", to {k[9:].replace('_', ' ')} {v:.3f}" for k, v in r["cpu"].items()
                        if k != "capture_ratio")
        print(f"{peer} {r['version']}: capture ratio to our plain forward (median, wall "
              f"{r['wall']['capture_ratio']:.3f}, cpu {r['cpu']['capture_ratio']:.3f}{extra}); "
              f"rows differ from ours by at most {r['max_abs_diff']:.1e}")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768, help="width (heads of 64)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1: steady timings on a shared machine; "
                         "0 = torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=args.layers, n_embd=args.d_model, n_head=max(args.d_model // 64, 1),
                     vocab_size=args.vocab)
    model = GPT2LMHeadModel(cfg).eval()
    lm = LoadedModel(model, None, roles_for(model), "gpt2-random")
    ids = torch.randint(0, args.vocab, (args.batch, args.tokens))
    mask = torch.ones_like(ids)
    mask[: args.batch // 2, : args.tokens // 3] = 0  # left padding on half of the rows
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as tokenize_prompts gives them
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}

    numbers = np.arange(min(521, args.vocab))  # stand-in number tokens 0..520 (the paper's p)
    W = lm.unembedding()[torch.as_tensor(numbers)].double().numpy()
    t0 = time.perf_counter()
    filt = low_pass(W, FourierBasis(len(numbers)), tau=min(50, (len(numbers) - 1) // 2))
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
        print(f"model: GPT-2 shape, {args.layers} layers, d {args.d_model}, vocab {args.vocab}; "
              f"batch {args.batch} x {args.tokens} tokens; {torch.get_num_threads()} CPU threads")
        print(f"plain forward: median {plain_t * 1e3:.1f} ms wall over {args.rounds} rounds")

        def ratios(name: str) -> dict:
            out = {}
            for clock, i in (("wall", 0), ("cpu", 1)):
                mine, base = [t[i] for t in times[name]], [t[i] for t in times["plain"]]
                out[clock] = {"median": statistics.median(mine) / statistics.median(base),
                              "min": min(mine) / min(base)}
            return out

        def show(r: dict) -> str:
            return "; ".join(f"{c}: median {v['median']:.3f}, min {v['min']:.3f}"
                             for c, v in r.items())

        result = {"plain_ms": plain_t * 1e3, "capture": ratios("capture"),
                  "filter": ratios("filter")}
        print(f"(a) capture attn+MLP, all layers, last position (target <= 1.02): "
              f"{show(result['capture'])}")
        print(f"(b) low-pass filter on attn+MLP, all layers (target <= 1.10): "
              f"{show(result['filter'])}")
        result["peers"] = peer_ratios(model, inputs, plain, cap.stack("attn"),
                                      min(args.rounds, 5))

    kept = sum(cap.stack(r).nbytes for r in cap.roles)
    full = kept * args.tokens
    n_paper = 3420  # the paper's test split
    per_prompt = 2 * lm.n_layers * lm.d_model * 4
    print(f"memory kept by the capture: {kept / 2**20:.2f} MiB for {args.batch} prompts "
          f"(N x L x D x 2 roles, float32); all positions would be {full / 2**20:.1f} MiB")
    print(f"a probe over the paper's {n_paper} test prompts keeps "
          f"{n_paper * per_prompt / 2**20:.0f} MiB (attn+MLP), never N x T x L x D")
    return result


if __name__ == "__main__":
    main()

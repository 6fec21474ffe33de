"""Zhou et al.'s pipeline at paper scale: lens with spectra and the seven rows of Table 1.

    python scripts/bench_paper.py --device cuda --dtype bf16       # GPT-2-XL shape, 3,420 prompts
    python scripts/bench_paper.py --small                          # CPU, seconds

Builds a GPT-2-XL-shaped model with random weights (48 layers, d 1600, 25 heads, vocab
50257: 1.56e9 parameters) and the paper's task (a + b, 0 <= a, b <= 260, the 3,420-prompt
test split), then times each stage through the library: build, number tokens and task,
the lens over attention/MLP/block outputs with per-layer spectra and outliers
(``lens.run_lens`` + ``layer_summary``), and Table 1 as the ``ablate`` command runs it
(``ablation.ablation_table``: the filters, then the seven rows as conditions of one engine
pass, the prompt prefix once per batch), after a one-batch warm-up that counts as loading.
It prints prompt readings per second (lens + 7 rows per prompt), peak memory (process RSS;
``torch.cuda.max_memory_allocated`` on a GPU), the achieved FLOP/s counted as 2 x
parameters x tokens run (the lens's full pass, the table's prefix pass and its 7 rows of
one token per prompt), and its fraction of ``--peak-flops`` (989e12: dense bf16 of an
H100/H200), then one JSON line.

The GPT-2 BPE tokenizer cannot be downloaded here: a word-level tokenizer that keeps
0..520 as single tokens stands in (``tokenizers.word_level_tokenizer``); its prompts are
about 8-11 tokens where GPT-2's are about 12-15. Accuracies of random weights mean nothing;
the timings and the work done are the paper's.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_fourier.analyses.ablation import ablation_table  # noqa: E402
from llm_fourier.analyses.lens import layer_summary, run_lens  # noqa: E402
from llm_fourier.model.loading import load_model, resolve_dtype  # noqa: E402
from llm_fourier.model.numbers import find_number_tokens  # noqa: E402
from llm_fourier.model.prompt_set import PromptSet  # noqa: E402
from llm_fourier.model.tasks import make_task, tokenize_prompts  # noqa: E402
from llm_fourier.model.tokenizers import word_level_tokenizer  # noqa: E402

XL = {"n_layer": 48, "n_embd": 1600, "n_head": 25, "vocab_size": 50257}
SMALL = {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": None}  # None: the tokenizer's
SMALL_LIMIT = 96
PEAK_BF16 = 989e12  # dense bf16 FLOP/s of one H100 SXM / H200
TABLE_ROWS = 7
TARGET_S = 1.0  # issue 19: lens + 7 rows after load on one H100/H200
LOAD_STAGES = ("build model", "task and number tokens", "warm-up (1 batch)")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall seconds per named stage (CUDA work is awaited before each reading)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.stages = device, {}

    def __call__(self, name: str, fn):
        sync(self.device)
        start = time.perf_counter()
        out = fn()
        sync(self.device)
        self.stages[name] = time.perf_counter() - start
        print(f"{name:<28} {self.stages[name]:8.2f} s", flush=True)
        return out


def build(shape: dict, tokenizer, device: torch.device, dtype: torch.dtype):
    """A random GPT-2 of ``shape`` built directly on ``device`` in ``dtype``."""
    from transformers import AutoModelForCausalLM, GPT2Config

    vocab = shape["vocab_size"] or len(tokenizer)
    config = GPT2Config(n_layer=shape["n_layer"], n_embd=shape["n_embd"],
                        n_head=shape["n_head"], vocab_size=vocab, n_positions=1024,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return load_model(model.eval(), tokenizer)


def auto_batch_size(device: torch.device, n_prompts: int, vocab: int, d_model: int,
                    max_tokens: int, dtype: torch.dtype) -> int:
    """On a GPU: as many prompts as fit in 60% of the free memory, counting per prompt
    ~24 d-wide activations per token (the prompt and the 7 rows' tokens) and the
    full-vocabulary logits where they are read (model dtype + a float32 copy, at the 7
    rows' positions and the lens's); on the CPU: 32 (larger batches do not run faster)."""
    if device.type != "cuda":
        return min(32, n_prompts)
    free, _ = torch.cuda.mem_get_info(device)
    size = torch.finfo(dtype).bits // 8
    per_prompt = ((max_tokens + TABLE_ROWS) * 24 * d_model * size
                  + (TABLE_ROWS + 1) * vocab * (size + 4))
    return max(1, min(n_prompts, int(0.6 * free / per_prompt)))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true",
                    help=f"a 2-layer d-64 model and {SMALL_LIMIT} prompts (CPU, seconds)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None,
                    help="model dtype (default: bf16 on a GPU, float32 on the CPU)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="prompts per forward (default: what fits, see auto_batch_size)")
    ap.add_argument("--limit", type=int, default=None,
                    help=f"use the first N test prompts (default: all 3,420; "
                         f"{SMALL_LIMIT} with --small)")
    ap.add_argument("--peak-flops", type=float, default=None,
                    help=f"the device's peak FLOP/s (default on a GPU: {PEAK_BF16:.3g}, "
                         "dense bf16 of an H100/H200)")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads of torch and of numpy's BLAS (0: their defaults)")
    args = ap.parse_args(argv)
    if args.threads:  # numpy's BLAS too: the filters' SVDs spin many threads on a busy CPU
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype or ("bf16" if device.type == "cuda" else "float32"))
    peak = args.peak_flops or (PEAK_BF16 if device.type == "cuda" else None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    shape = SMALL if args.small else XL
    limit = args.limit or (SMALL_LIMIT if args.small else None)
    clock = Stopwatch(device)
    print("tokenizer: word-level, 0..520 as single tokens (GPT-2's BPE cannot be downloaded "
          "here; prompts are shorter than with it)")

    tokenizer = word_level_tokenizer(520)
    lm = clock("build model", lambda: build(shape, tokenizer, device, dtype))
    n_params = sum(p.numel() for p in lm.model.parameters())
    examples, numbers = clock("task and number tokens", lambda: (
        make_task("+", 260).test[:limit], find_number_tokens(tokenizer, 520)))
    n = len(examples)
    max_tokens = tokenize_prompts(tokenizer, [e.prompt for e in examples])["input_ids"].shape[1]
    batch = args.batch_size or auto_batch_size(device, n, lm.model.config.vocab_size,
                                               lm.d_model, max_tokens, dtype)
    # padded as the engine batches them (by length); the table's prefix pass leaves out
    # each prompt's last token, which each of its 7 rows then runs
    tokens = sum(len(b.rows) * b.length for b in PromptSet.build(lm, examples, batch).batches)
    tokens_run = tokens + (tokens - n) + TABLE_ROWS * n
    print(f"model: {lm.n_layers} layers, d {lm.d_model}, vocab {lm.model.config.vocab_size}, "
          f"{n_params:,} parameters, {dtype}, {device}; {n} prompts, batch {batch}, "
          f"{tokens} tokens per full pass (padded), {tokens_run} run in all, p = {numbers.p}")
    clock("warm-up (1 batch)", lambda: (  # both code paths once
        run_lens(lm, examples[:batch], numbers, batch_size=batch, progress=False),
        ablation_table(lm, examples[:batch], numbers, batch_size=batch, progress=False)))

    def lens():
        accs = run_lens(lm, examples, numbers, batch_size=batch, progress=False)
        return {role: layer_summary(acc.spectra()) for role, acc in accs.items()}

    spectra = clock("lens + spectra", lens)
    table = clock(f"Table 1 ({TABLE_ROWS} rows)", lambda: ablation_table(
        lm, examples, numbers, batch_size=batch, progress=False))

    stages = clock.stages
    pipeline = sum(t for name, t in stages.items() if name not in LOAD_STAGES)
    readings = 1 + TABLE_ROWS  # the lens and each row read every prompt once
    flops = 2 * n_params * tokens_run
    summary = {
        "shape": "small" if args.small else "gpt2-xl", "device": str(device), "dtype": str(dtype),
        "parameters": n_params, "prompts": n, "batch_size": batch, "tokens_per_pass": tokens,
        "tokens_run": tokens_run, "readings": readings,
        "stages_s": {k: round(v, 4) for k, v in stages.items()},
        "pipeline_after_load_s": round(pipeline, 4),
        "prompts_per_s": round(n * readings / pipeline, 1),
        "flops": flops, "achieved_flops_per_s": flops / pipeline,
        "peak_flops_per_s": peak,
        "fraction_of_peak": flops / pipeline / peak if peak else None,
        "flop_limit_s": flops / peak if peak else None,
        "peak_rss_gib": round(peak_rss_gib(), 3),
        "peak_cuda_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                          if device.type == "cuda" else None),
        "accuracy": {r["row"]: r["accuracy"] for r in table},
        "lens_layers": {role: len(s) for role, s in spectra.items()},
    }
    print(f"pipeline after load: {pipeline:.2f} s (target on one H100/H200: {TARGET_S:g} s); "
          f"{summary['prompts_per_s']:.3g} prompt readings/s (lens + {TABLE_ROWS} rows)")
    print(f"FLOPs: {flops:.3g} (2 x parameters x tokens run); achieved "
          f"{summary['achieved_flops_per_s']:.3g} FLOP/s" + (
              f" = {summary['fraction_of_peak']:.1%} of {peak:.3g}; the FLOP limit is "
              f"{summary['flop_limit_s']:.2f} s" if peak else ""))
    print(f"peak memory: {summary['peak_rss_gib']:.2f} GiB RSS" + (
        f", {summary['peak_cuda_gib']:.2f} GiB CUDA" if device.type == "cuda" else ""))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

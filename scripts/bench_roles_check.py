"""Cost of the roles self-check at load against the load itself.

Saves a random model of a real model's shape (default: GPT-2 small, 124M parameters; or
``--arch llama`` at the width of Llama-3.2-1B with ``--layers`` layers) with
``save_pretrained`` into a temporary folder, then times (medians of interleaved rounds):
``load_model(folder)`` in a fresh process (imports included: what a command pays before
its work), ``load_model`` in a warm process with and without ``verify``, the check alone
(``verify_roles``: one 8-token forward, the first pass over the weights, which safetensors
maps lazily), and for scale one forward of a probe batch (16 prompts x 12 tokens), which a
probe runs hundreds of times. CPU, ``--threads`` threads.

    python scripts/bench_roles_check.py [--arch gpt2|llama] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import transformers as T

from llm_fourier.model.loading import load_model
from llm_fourier.model.roles_check import verify_roles
from llm_fourier.model.tokenizers import word_level_tokenizer


def build(arch: str, layers: int | None):
    if arch == "gpt2":
        config = T.GPT2Config(n_layer=layers or 12)
    else:  # Llama-3.2-1B's width, vocabulary and head layout
        config = T.LlamaConfig(hidden_size=2048, intermediate_size=8192,
                               num_hidden_layers=layers or 16, num_attention_heads=32,
                               num_key_value_heads=8, vocab_size=128256)
    return T.AutoModelForCausalLM.from_config(config)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="gpt2", choices=("gpt2", "llama"))
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(args.arch, args.layers)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        word_level_tokenizer(200).save_pretrained(folder)
        del model
        load_model(folder)  # warm-up: imports, file cache
        times: dict[str, list[float]] = {"load, fresh process": [], "load, verify=False": [],
                                         "load, verify=True": [], "check alone": [],
                                         "one probe batch": []}
        fresh = (f"import time, torch; torch.set_num_threads({args.threads}); "
                 "t = time.perf_counter(); from llm_fourier.model.loading import load_model; "
                 f"load_model({folder!r}, verify=False); print(time.perf_counter() - t)")
        batch = torch.randint(0, 200, (16, 12))
        for _ in range(args.rounds):
            out = subprocess.run([sys.executable, "-c", fresh], capture_output=True, text=True,
                                 check=True).stdout
            times["load, fresh process"].append(float(out.strip().splitlines()[-1]))
            for verify in (False, True):
                t0 = time.perf_counter()
                lm = load_model(folder, verify=verify)
                times[f"load, verify={verify}"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            verify_roles(lm)
            times["check alone"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with torch.inference_mode():
                lm.model(input_ids=batch, logits_to_keep=1)
            times["one probe batch"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.arch}: {params:.0f}M parameters, float32, CPU, {args.threads} thread(s), "
          f"{args.rounds} rounds (medians)")
    for name, value in med.items():
        print(f"  {name:20s} {value * 1e3:8.1f} ms")
    print(f"  check / fresh-process load: "
          f"{med['check alone'] / med['load, fresh process']:.3f}; check / warm load: "
          f"{med['check alone'] / med['load, verify=False']:.2f}")


if __name__ == "__main__":
    main()

"""Benchmark prompt sharding: one process vs K processes on the same evaluation and lens.

    python scripts/bench_shard.py --procs 2 --prompts 256
    python scripts/bench_shard.py --model /data/gpt2-xl --procs 4      # a real model

Builds a random GPT-2 (or loads ``--model``), runs ``ablation.evaluate`` and ``lens.run_lens``
(the loops of ``llm-fourier ablate`` / ``probe``, which shard themselves under a process
group) over addition prompts in one process, then in K processes (gloo on CPU, NCCL when
there are K GPUs), and prints the wall times, the speed-up ratios (against one process using
every core, and against one process with the threads each sharded process gets) and whether
the gathered results equal the single-process ones. A warm-up batch runs before each timing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_model(folder: Path, layers: int, d_model: int) -> str:
    from transformers import GPT2Config, GPT2LMHeadModel

    from llm_fourier.model.tokenizers import word_level_tokenizer

    tok = word_level_tokenizer(520)
    config = GPT2Config(vocab_size=len(tok), n_embd=d_model, n_layer=layers, n_head=4,
                        n_positions=128, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def evaluate(model: str, n: int, batch: int, threads: int) -> tuple[dict, float]:
    """(evaluate summary + lens accuracy/spectra, seconds) for this process (or rank)."""
    from llm_fourier.analyses.ablation import evaluate as run_evaluate
    from llm_fourier.analyses.lens import run_lens
    from llm_fourier.model import distributed
    from llm_fourier.model.loading import load_model
    from llm_fourier.model.numbers import find_number_tokens
    from llm_fourier.model.tasks import make_task

    torch.set_num_threads(threads)
    lm = load_model(model, **distributed.device_map_kwargs())
    examples = make_task("+", 260, seed=0).test[:n]
    numbers = find_number_tokens(lm.tokenizer, max_number=520)
    with distributed.solo():  # warm-up, this rank alone
        run_evaluate(lm, examples[:batch], numbers, batch_size=batch, progress=False)
    distributed.barrier()
    start = time.perf_counter()
    result = run_evaluate(lm, examples, numbers, batch_size=batch, progress=False)
    accs = run_lens(lm, examples, numbers, batch_size=batch, progress=False)
    result["lens"] = {r: {"accuracy": a.accuracy(),
                          "spectra": [s.magnitude.tolist() for s in a.spectra()]}
                      for r, a in accs.items()}
    distributed.barrier()
    return result, time.perf_counter() - start


def _worker(rank: int, k: int, port: int, args: argparse.Namespace, out: str) -> None:
    from llm_fourier.model import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(k), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(k))
    distributed.process_info()  # joins the process group (accelerate's PartialState)
    result, seconds = evaluate(args.model, args.prompts, args.batch, args.threads_each)
    if rank == 0:
        Path(out).write_text(json.dumps({"result": result, "seconds": seconds}))
    torch.distributed.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder or id (default: random)")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    args.threads_each = max(1, cores // args.procs)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            args.model = build_model(Path(tmp) / "model", args.layers, args.d_model)
        single, t1 = evaluate(args.model, args.prompts, args.batch, cores)
        single_few, t1_few = evaluate(args.model, args.prompts, args.batch, args.threads_each)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = Path(tmp) / "sharded.json"
        mp.spawn(_worker, args=(args.procs, port, args, str(out)), nprocs=args.procs)
        sharded = json.loads(out.read_text())
    def same(a, b) -> bool:
        return json.dumps(a, sort_keys=True) == json.dumps(json.loads(json.dumps(b)),
                                                          sort_keys=True)

    equal = same(sharded["result"], single_few)  # the same kernels: bit for bit
    tk = sharded["seconds"]
    print(f"{args.prompts} prompts, batch {args.batch}, {cores} CPU cores, "
          f"{torch.cuda.device_count()} GPUs")
    print(f"1 process ({cores} threads): {t1:.2f} s; 1 process ({args.threads_each} "
          f"threads): {t1_few:.2f} s")
    print(f"{args.procs} processes ({args.threads_each} threads each): {tk:.2f} s")
    print(f"speed-up ratio vs 1 process with all cores: {t1 / tk:.2f}x; with the same threads "
          f"per process: {t1_few / tk:.2f}x; gathered result equals a single process with the "
          f"same threads: {equal}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())

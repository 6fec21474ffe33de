"""Sharding prompts across two CPU processes (gloo) gathers exactly the single-process run."""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llm_fourier.report import shard

N_PROMPTS, BATCH = 11, 3  # 4 batches: ranks get batches {0, 1} and {2, 3}


@pytest.mark.parametrize("n, batch, world", [(11, 3, 2), (10, 5, 2), (7, 2, 3), (1, 4, 2),
                                             (0, 4, 2), (9, 1, 4)])
def test_shards_cover_the_single_process_batches_in_order(n, batch, world):
    shards = [shard.shard_batches(n, batch, r, world) for r in range(world)]
    assert [b for s in shards for b in s] == shard.batch_ranges(n, batch)
    assert [i for s, e in shard.batch_ranges(n, batch) for i in range(s, e)] == list(range(n))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_max_memory_gives_each_process_its_own_gpu_group():
    gpus = [80, 80, 80, 80, 80, 80, 80, 40]
    assert shard.max_memory_for_rank(0, 2, gpus) == {0: 80, 1: 80, 2: 80, 3: 80}
    assert shard.max_memory_for_rank(1, 2, gpus, cpu_memory=10) == \
        {4: 80, 5: 80, 6: 80, 7: 40, "cpu": 10}
    assert shard.max_memory_for_rank(3, 8, gpus) == {3: 80}
    with pytest.raises(ValueError, match="cannot be split"):
        shard.max_memory_for_rank(0, 3, gpus)


def test_gpu_groups_split_a_node_between_its_processes():
    assert shard.gpu_group(1, 4, ["0", "1", "2", "3", "4", "5", "6", "7"]) == ["2", "3"]
    assert shard.gpu_group(0, 1, [3, 5]) == [3, 5]
    with pytest.raises(ValueError, match="cannot be split"):
        shard.gpu_group(0, 2, [0])


def test_not_distributed_is_a_plain_loop():
    assert not shard.active() and shard.dist_info().world_size == 1
    parts = shard.map_batches(lambda s, e: torch.arange(s, e), 7, 3, progress=False)
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6]]
    assert shard.concat(parts).tolist() == list(range(7))
    assert shard.broadcast_object({"a": 1}) == {"a": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prompts() -> list:
    from llm_fourier.tasks import make_task

    return make_task("+", 20, seed=1).test[:N_PROMPTS]


def _sharded_run(model_dir: str):
    """The sharded computations; in a worker this runs on one rank, in the test on one process."""
    from llm_fourier.ablate import number_filters
    from llm_fourier.models import load_model
    from llm_fourier.numbers import find_number_tokens

    torch.set_num_threads(1)
    lm = load_model(model_dir, device_map=None, dtype="float32")
    examples = _prompts()
    numbers = find_number_tokens(lm.tokenizer, max_number=40)
    prompts = [e.prompt for e in examples]
    edits = {("mlp", 0): number_filters(lm, numbers, tau=5)["low removed"]}
    seen = shard.map_batches(lambda s, e: list(range(s, e)), len(prompts), BATCH,
                             progress=False)
    return {"capture": shard.sharded_capture(lm, prompts, batch_size=BATCH),
            "logits": shard.sharded_last_logits(lm, prompts, batch_size=BATCH),
            "evaluate": shard.sharded_evaluate(lm, examples, numbers, edits, batch_size=BATCH),
            "local_batches": len(shard.shard_batches(len(prompts), BATCH, shard.dist_info().rank,
                                                     shard.dist_info().world_size)),
            "seen": shard.concat(seen)}


def _worker(rank: int, world: int, port: int, model_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    info = shard.init_distributed()
    assert shard.active() and info.rank == rank
    result = _sharded_run(model_dir)
    result["sizes"] = shard.all_gather_objects(result["local_batches"])
    torch.save(result, Path(out) / f"rank{rank}.pt")
    from llm_fourier.report.config import parse_config
    from llm_fourier.report.runner import run_report

    install_fake()  # and a report of four fake jobs in two waves, dealt out to the ranks
    run_report(parse_config(REPORT), Path(out) / "report", progress=False)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tiny_dir, tmp_path_factory):
    """Two gloo processes: the sharded model run, then a report; their outputs' folder."""
    out = tmp_path_factory.mktemp("two-ranks")
    model_dir = str(tiny_dir("gpt2", max_number=60))
    mp.spawn(_worker, args=(2, _free_port(), model_dir, str(out)), nprocs=2, join=True)
    return out, model_dir


def _same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN == NaN


def test_two_gloo_processes_gather_the_single_process_result(two_ranks):
    tmp_path, model_dir = two_ranks
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single = _sharded_run(model_dir)  # no process group: one process runs every batch
    assert ranks[0]["sizes"] == [2, 2] and single["local_batches"] == 4
    for got in ranks:
        assert got["seen"] == list(range(N_PROMPTS))  # same prompts, same order
        for role in ("attn", "mlp", "block"):
            assert got["capture"][role].shape == single["capture"][role].shape == (N_PROMPTS,
                                                                                    2, 32)
            assert torch.equal(got["capture"][role], single["capture"][role])
        assert torch.equal(got["logits"], single["logits"])
        assert _same(got["evaluate"], single["evaluate"])


def test_single_process_shard_helpers_match_independent_code(tiny_dir):
    """The helpers equal L2's ``evaluate`` and a plain forward, batch by batch."""
    from llm_fourier.ablate import evaluate, number_filters
    from llm_fourier.hooks import last_token_positions
    from llm_fourier.models import load_model
    from llm_fourier.numbers import find_number_tokens
    from llm_fourier.tasks import tokenize_prompts

    lm = load_model(str(tiny_dir("gpt2", max_number=60)), device_map=None, dtype="float32")
    examples = _prompts()
    numbers = find_number_tokens(lm.tokenizer, max_number=40)
    edits = {("attn", 1): number_filters(lm, numbers, tau=5)["high removed"]}
    ours = shard.sharded_evaluate(lm, examples, numbers, edits, batch_size=BATCH)
    theirs = evaluate(lm, examples, numbers, edits, batch_size=BATCH, progress=False)
    assert _same(ours, theirs)
    enc = tokenize_prompts(lm.tokenizer, [e.prompt for e in examples[:BATCH]])
    with torch.no_grad():
        out = lm.model(**enc, output_hidden_states=True)
    last = last_token_positions(enc["attention_mask"])
    rows = torch.arange(BATCH)
    logits = shard.sharded_last_logits(lm, [e.prompt for e in examples], batch_size=BATCH)
    assert torch.equal(logits[:BATCH], out.logits[rows, last])
    block = shard.sharded_capture(lm, [e.prompt for e in examples], roles=("block",),
                                  batch_size=BATCH)["block"]
    # GPT-2's last hidden state is after the final norm; layer 0's block output is not
    assert torch.equal(block[:BATCH, 0], out.hidden_states[1][rows, last])


def _fake_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--value", type=int, default=0)
    p.add_argument("--input", default="")


def _fake_run(a: argparse.Namespace) -> dict:
    from llm_fourier.report.files import read_json, write_json

    upstream = read_json(Path(a.input) / "results.json")["value"] if a.input else 0
    results = {"value": a.value + upstream, "rank": shard.dist_info().rank}
    write_json(Path(a.out) / "results.json", results)
    return results


def _sharded_fake_run(a: argparse.Namespace) -> dict:
    """A shard-aware job: every rank runs it, each on its own batches of 10 items."""
    from llm_fourier.report.files import write_json

    parts = shard.map_batches(lambda s, e: list(range(s, e)), 10, 3, progress=False)
    mine = len(shard.shard_batches(10, 3, shard.dist_info().rank, shard.dist_info().world_size))
    results = {"gathered": shard.concat(parts), "batches_per_rank": shard.all_gather_objects(mine),
               "writer": shard.dist_info().rank}
    write_json(Path(a.out) / "results.json", results)
    return results


def install_fake() -> None:
    import llm_fourier.commands as registry
    from llm_fourier.commands import Command

    fake = Command("fake dist", "fake", _fake_args, _fake_run)
    sharded = Command("fake shard", "fake", lambda p: None, _sharded_fake_run)
    shard.SHARD_AWARE.add(sharded.name)
    # only these: no heavy imports in the workers
    registry.all_commands = lambda: {fake.name: fake, sharded.name: sharded}


REPORT = {"jobs": [
    {"command": "fake dist", "name": "a", "settings": {"value": 1}},
    {"command": "fake dist", "name": "b", "settings": {"value": 2}},
    {"command": "fake dist", "name": "c", "settings": {"value": 3, "input": "{jobs.a}"}},
    {"command": "fake dist", "name": "d", "settings": {"value": 4, "input": "{jobs.b}"}},
    {"command": "fake shard", "name": "e", "needs": ["a"]},
]}


def test_report_under_two_processes_deals_out_jobs(two_ranks):
    from llm_fourier.report.files import read_json

    tmp_path = two_ranks[0] / "report"
    manifest = read_json(tmp_path / "manifest.json")
    assert {j: e["status"] for j, e in manifest["jobs"].items()} == dict.fromkeys("abcde",
                                                                                  "done")
    results = {j: read_json(tmp_path / "jobs" / j / "results.json") for j in "abcde"}
    # wave 1 = a, b (one per rank), wave 2 = c, d reading them
    assert [results[j]["rank"] for j in "abcd"] == [0, 1, 0, 1]
    assert [results[j]["value"] for j in "abcd"] == [1, 2, 4, 6]
    # the shard-aware job ran on both ranks (2 + 2 batches), gathered in order, rank 0 wrote
    assert results["e"] == {"gathered": list(range(10)), "batches_per_rank": [2, 2],
                            "writer": 0}
    assert not (tmp_path / ".scratch").exists()  # rank 1's scratch output removed

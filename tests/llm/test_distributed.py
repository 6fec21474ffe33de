"""`probe`, `ablate` and a report under two CPU processes (gloo) equal the single-process run.

Module fixture: the commands run once in this process (the reference) and once in two
spawned ranks that share the prompts; rank 1 gets its own ``--out`` so the test sees that
only rank 0 writes. Both ranks also resume runs started by one process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llm_fourier import distributed
from llm_fourier.output.files import read_json, write_json

N, BATCH = 11, 3  # 4 batches of the train split: 2 rounds of one batch per rank
TASK = ["--max-operand", "12", "--split", "train", "--limit", str(N), "--batch-size",
        str(BATCH), "--tau", "4"]
PROBE_FILES = ("accuracy.csv", "spectra.csv")
ABLATE_FILES = ("table.csv", "predictions.csv")


@pytest.mark.parametrize("n, batch, world", [(11, 3, 2), (10, 5, 2), (7, 2, 3), (1, 4, 2),
                                             (0, 4, 2), (9, 1, 4)])
def test_shards_cover_the_single_process_batches_in_order(n, batch, world):
    shards = [distributed.shard_batches(n, batch, r, world) for r in range(world)]
    assert [b for s in shards for b in s] == distributed.batch_ranges(n, batch)
    ranges = distributed.batch_ranges(n, batch)
    assert [i for s, e in ranges for i in range(s, e)] == list(range(n))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_max_memory_gives_each_process_its_own_gpu_group():
    gpus = [80, 80, 80, 80, 80, 80, 80, 40]
    assert distributed.max_memory_for_rank(0, 2, gpus) == {0: 80, 1: 80, 2: 80, 3: 80}
    assert distributed.max_memory_for_rank(1, 2, gpus, cpu_memory=10) == \
        {4: 80, 5: 80, 6: 80, 7: 40, "cpu": 10}
    assert distributed.max_memory_for_rank(3, 8, gpus) == {3: 80}
    with pytest.raises(ValueError, match="cannot be split"):
        distributed.max_memory_for_rank(0, 3, gpus)


def test_gpu_groups_split_a_node_between_its_processes():
    assert distributed.gpu_group(1, 4, ["0", "1", "2", "3", "4", "5", "6", "7"]) == ["2", "3"]
    assert distributed.gpu_group(0, 1, [3, 5]) == [3, 5]
    with pytest.raises(ValueError, match="cannot be split"):
        distributed.gpu_group(0, 2, [0])


def test_not_distributed_is_a_plain_loop():
    assert not distributed.active() and distributed.dist_info().world_size == 1
    parts = distributed.map_batches(lambda s, e: torch.arange(s, e), 7, 3, progress=False)
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6]]
    assert distributed.concat(parts).tolist() == list(range(7))
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.rounds([(0, 3), (3, 6), (6, 7)]) == [[(0, 3)], [(3, 6)], [(6, 7)]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _count_prompts(log: list) -> None:
    """Record how many prompts this process tokenizes in the lens and evaluate loops."""
    import llm_fourier.ablate as ablate
    import llm_fourier.lens as lens

    for module, name in ((lens, "lens"), (ablate, "evaluate")):
        real = module.tokenize_prompts

        def counted(tokenizer, prompts, *a, _real=real, _name=name, **kw):
            log.append((_name, len(prompts)))
            return _real(tokenizer, prompts, *a, **kw)

        module.tokenize_prompts = counted


def _worker(rank: int, world: int, port: int, model_dir: str, root: str) -> None:
    from llm_fourier.cli import main

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    root = Path(root)
    out = root / ("two" if rank == 0 else "rank1")  # rank 1 must leave its folder unwritten
    log: list = []
    _count_prompts(log)
    counts = {}
    for name, command, folder in (("probe", "probe", out / "probe"),
                                  ("probe_resume", "probe", root / "probe_resume"
                                   if rank == 0 else out / "probe_resume"),
                                  ("ablate", "ablate", out / "ablate"),
                                  ("ablate_resume", "ablate", root / "ablate_resume"
                                   if rank == 0 else out / "ablate_resume")):
        log.clear()
        assert main([command, "--model", model_dir, "--out", str(folder), *TASK]) == 0
        counts[name] = sum(n for _, n in log)  # prompts this rank ran
    assert distributed.active() and distributed.dist_info().rank == rank
    states, counts["collect"] = _collect(model_dir)
    np.savez(root / f"collect{rank}.npz", **states)
    from llm_fourier.batch.config import parse_config
    from llm_fourier.batch.runner import run_report

    install_fake()  # and a report of four fake jobs in two waves, dealt out to the ranks
    run_report(parse_config(REPORT), root / "report", progress=False)
    write_json(root / f"counts{rank}.json", counts)
    dist.destroy_process_group()


def _collect(model_dir: str) -> tuple[dict, int]:
    """hidden.collect's states at operand a (batches grouped by length), and the forwards run."""
    from llm_fourier.hidden import collect
    from llm_fourier.models import load_model
    from llm_fourier.tasks import make_task

    lm = load_model(model_dir, device_map=None, dtype="float32")
    forwards = []
    lm.model.register_forward_pre_hook(lambda *_: forwards.append(1))
    hs = collect(lm, make_task("+", 12, seed=0).train[:N], token="a", batch_size=2,
                 progress=False)
    return hs.states, len(forwards)


@pytest.fixture(scope="module")
def runs(tiny_dir, tmp_path_factory):
    """The reference runs (one process), two interrupted runs, then the two-rank runs."""
    import llm_fourier.commands.probe as probe_cmd
    from llm_fourier.cli import main

    root = tmp_path_factory.mktemp("dist")
    model_dir = str(tiny_dir("gpt2"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: same kernels, same bits
    try:
        for command in ("probe", "ablate"):
            assert main([command, "--model", model_dir, "--out", str(root / "single" / command),
                         *TASK]) == 0
        real = probe_cmd.run_lens

        def interrupted(*args, on_batch, **kwargs):
            def stop(done, state):
                on_batch(done, state)
                raise KeyboardInterrupt  # after the first batch

            return real(*args, on_batch=stop, **kwargs)

        states, forwards = _collect(model_dir)
        np.savez(root / "collect_single.npz", forwards=forwards, **states)
        with pytest.MonkeyPatch.context() as mpatch:
            mpatch.setattr(probe_cmd, "run_lens", interrupted)
            assert main(["probe", "--model", model_dir, "--out", str(root / "probe_resume"),
                         *TASK]) == 130
    finally:
        torch.set_num_threads(threads)
    assert (root / "probe_resume" / "probe_state.pt").exists()
    rows = root / "ablate_resume" / "rows"
    rows.mkdir(parents=True)
    for path in sorted((root / "single" / "ablate" / "rows").glob("*.json"))[:3]:
        shutil.copy(path, rows)  # 3 of the 7 Table 1 rows already finished
    mp.spawn(_worker, args=(2, _free_port(), model_dir, str(root)), nprocs=2, join=True)
    return root


def _same_outputs(a: Path, b: Path, files: tuple) -> None:
    assert read_json(a / "results.json") == read_json(b / "results.json")
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_probe_under_two_processes_writes_the_single_process_results(runs):
    _same_outputs(runs / "two" / "probe", runs / "single" / "probe", PROBE_FILES)
    res = read_json(runs / "two" / "probe" / "results.json")
    assert res["n_examples"] == N and len(res["accuracy"]["block"]) == 2
    assert res["layers"]["mlp"][0]["tau"] == 4
    for name in res["files"]:  # every plot as well
        assert (runs / "two" / "probe" / name).stat().st_size > 0
    assert not (runs / "two" / "probe" / "probe_state.pt").exists()
    # the ranks split the prompts: batches 0, 2 (3 + 3) and 1, 3 (3 + 2)
    counts = [read_json(runs / f"counts{r}.json") for r in range(2)]
    assert [c["probe"] for c in counts] == [6, 5]


def test_probe_resumes_a_one_process_checkpoint_under_two_processes(runs):
    _same_outputs(runs / "probe_resume", runs / "single" / "probe", PROBE_FILES)
    assert not (runs / "probe_resume" / "probe_state.pt").exists()
    # batch 0 was done: rank 0 ran batches 1, 3 and rank 1 batch 2 (state from rank 0)
    counts = [read_json(runs / f"counts{r}.json") for r in range(2)]
    assert [c["probe_resume"] for c in counts] == [5, 3]


def test_ablate_under_two_processes_writes_the_single_process_table(runs):
    _same_outputs(runs / "two" / "ablate", runs / "single" / "ablate", ABLATE_FILES)
    table = read_json(runs / "two" / "ablate" / "results.json")["table"]
    assert len(table) == 7 and table[0]["row"] == "none" and table[0]["n"] == N
    counts = [read_json(runs / f"counts{r}.json") for r in range(2)]
    # 7 rows x 4 batches, dealt as contiguous blocks: batches 0, 1 and 2, 3 of each row
    assert [c["ablate"] for c in counts] == [7 * 6, 7 * 5]
    # resumed: 3 rows were on disk (read by rank 0 only), 4 rows ran sharded
    _same_outputs(runs / "ablate_resume", runs / "single" / "ablate", ABLATE_FILES)
    assert [c["ablate_resume"] for c in counts] == [4 * 6, 4 * 5]


def test_hidden_states_collected_by_two_processes_equal_one_process(runs):
    single = np.load(runs / "collect_single.npz")
    ranks = [np.load(runs / f"collect{r}.npz") for r in range(2)]
    for role in ("block", "attn", "mlp"):
        assert single[role].shape == (N, 2, 32)
        for got in ranks:  # every rank holds every example's states, in example order
            np.testing.assert_array_equal(got[role], single[role])
    forwards = [read_json(runs / f"counts{r}.json")["collect"] for r in range(2)]
    assert sum(forwards) == int(single["forwards"]) and min(forwards) >= 1


def test_only_rank_zero_writes(runs):
    assert not (runs / "rank1").exists()


def _fake_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--value", type=int, default=0)
    p.add_argument("--input", default="")


def _fake_run(a: argparse.Namespace) -> dict:
    """A job dealt to one rank: inside solo() its batch loops run alone, it writes."""
    upstream = read_json(Path(a.input) / "results.json")["value"] if a.input else 0
    local = distributed.map_batches(lambda s, e: list(range(s, e)), 10, 3, progress=False)
    results = {"value": a.value + upstream, "rank": dist.get_rank(),
               "seen_world": distributed.dist_info().world_size,
               "local": distributed.concat(local)}
    write_json(Path(a.out) / "results.json", results)
    return results


def _sharded_fake_run(a: argparse.Namespace) -> dict:
    """A shard-aware job: every rank runs it, each on its own batches of 10 items."""
    parts = distributed.map_batches(lambda s, e: list(range(s, e)), 10, 3, progress=False)
    info = distributed.dist_info()
    mine = len(distributed.shard_batches(10, 3, info.rank, info.world_size))
    results = {"gathered": distributed.concat(parts),
               "batches_per_rank": distributed.all_gather_objects(mine), "writer": info.rank}
    write_json(Path(a.out) / "results.json", results)
    return results


def install_fake() -> None:
    import llm_fourier.commands as registry
    from llm_fourier.commands import Command

    fake = Command("fake dist", "fake", _fake_args, _fake_run)
    sharded = Command("fake shard", "fake", lambda p: None, _sharded_fake_run)
    distributed.SHARD_AWARE.add(sharded.name)
    registry.all_commands = lambda: {fake.name: fake, sharded.name: sharded}


REPORT = {"jobs": [
    {"command": "fake dist", "name": "a", "settings": {"value": 1}},
    {"command": "fake dist", "name": "b", "settings": {"value": 2}},
    {"command": "fake dist", "name": "c", "settings": {"value": 3, "input": "{jobs.a}"}},
    {"command": "fake dist", "name": "d", "settings": {"value": 4, "input": "{jobs.b}"}},
    {"command": "fake shard", "name": "e", "needs": ["a"]},
]}


def test_report_under_two_processes_deals_out_jobs(runs):
    out = runs / "report"
    manifest = read_json(out / "manifest.json")
    assert {j: e["status"] for j, e in manifest["jobs"].items()} == dict.fromkeys("abcde",
                                                                                  "done")
    results = {j: read_json(out / "jobs" / j / "results.json") for j in "abcde"}
    # wave 1 = a, b (one per rank), wave 2 = c, d reading them
    assert [results[j]["rank"] for j in "abcd"] == [0, 1, 0, 1]
    assert [results[j]["value"] for j in "abcd"] == [1, 2, 4, 6]
    # a one-rank job sees a world of one and runs all its batches itself (no collectives)
    assert all(results[j]["seen_world"] == 1 and results[j]["local"] == list(range(10))
               for j in "abcd")
    # the shard-aware job ran on both ranks (2 + 2 batches), gathered in order, rank 0 wrote
    assert results["e"] == {"gathered": list(range(10)), "batches_per_rank": [2, 2],
                            "writer": 0}
    assert not (out / ".scratch").exists()  # rank 1's scratch output removed


def test_probe_and_ablate_are_run_by_every_rank_in_a_report():
    assert {"probe", "ablate"} <= distributed.SHARD_AWARE

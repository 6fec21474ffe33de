"""`probe`, `ablate` and a report under two CPU processes (gloo) equal the single-process run.

Module fixture: the commands run once in this process (the reference) and once in two
spawned ranks that share the prompts; rank 1 gets its own ``--out`` so the test sees that
only rank 0 writes. Both ranks also resume runs started by one process.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llm_fourier.commands.base import Command
from llm_fourier.commands.options import OutputOptions
from llm_fourier.commands.settings import option
from llm_fourier.model import distributed
from llm_fourier.output.files import read_json, write_json
from tests.llm.stores import interrupted

N, BATCH = 11, 3  # 4 batches of the train split: 2 rounds of one batch per rank
TASK = ["--max-operand", "12", "--split", "train", "--limit", str(N), "--batch-size",
        str(BATCH), "--tau", "4"]
PROBE_FILES = ("accuracy.csv", "spectra.csv")
ABLATE_FILES = ("table.csv", "predictions.csv")


@pytest.mark.parametrize("n, batch", [(11, 3), (10, 5), (7, 2), (1, 4), (0, 4), (9, 1)])
def test_batches_cover_the_items_in_order(n, batch):
    ranges = distributed.batch_ranges(n, batch)
    assert [i for s, e in ranges for i in range(s, e)] == list(range(n))
    assert all(e - s == batch for s, e in ranges[:-1])


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
    assert not distributed.active() and distributed.process_info().world_size == 1
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
    """Record how many prompts this process runs through the engine, per condition."""
    from llm_fourier.model.engine import Engine

    real = Engine._batch

    def counted(self, batch, conditions, *a, **kw):
        log.append(("engine", len(batch.rows) * len(conditions)))
        return real(self, batch, conditions, *a, **kw)

    Engine._batch = counted


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
    assert distributed.active() and distributed.process_info().rank == rank
    states, counts["collect"] = _collect(model_dir)
    np.savez(root / f"collect{rank}.npz", **states)
    from llm_fourier.batch.config import parse_config
    from llm_fourier.batch.runner import run_report

    install_fake()  # and a report of four fake jobs in two waves, dealt out to the ranks
    run_report(parse_config(REPORT), root / "report", progress=False)
    write_json(root / f"counts{rank}.json", counts)
    dist.destroy_process_group()


def _collect(model_dir: str) -> tuple[dict, int]:
    """hidden_states.collect at operand a (batches grouped by length), and the forwards run."""
    from llm_fourier.analyses.hidden_states import collect
    from llm_fourier.model.loading import load_model
    from llm_fourier.model.tasks import make_task

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
        states, forwards = _collect(model_dir)
        np.savez(root / "collect_single.npz", forwards=forwards, **states)
        with pytest.MonkeyPatch.context() as mpatch:
            mpatch.setattr(probe_cmd, "run_lens", interrupted(real))  # after batch 0
            assert main(["probe", "--model", model_dir, "--out", str(root / "probe_resume"),
                         *TASK]) == 130
    finally:
        torch.set_num_threads(threads)
        import llm_fourier.commands.ablate as ablate_cmd

        one_batch = interrupted(ablate_cmd.ablation_table, after=7)  # the 7 rows of batch 0
        with pytest.MonkeyPatch.context() as mpatch:
            mpatch.setattr(ablate_cmd, "ablation_table", one_batch)
            assert main(["ablate", "--model", model_dir, "--out", str(root / "ablate_resume"),
                         *TASK]) == 130
    assert (root / "probe_resume" / ".partial" / "lens-lens_0.safetensors").exists()
    assert len(list((root / "ablate_resume" / ".partial").glob("ablate-*.json"))) == 7
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
    assert not (runs / "two" / "probe" / ".partial").exists()
    # the ranks split the prompts: batches 0, 2 (3 + 3) and 1, 3 (3 + 2)
    counts = [read_json(runs / f"counts{r}.json") for r in range(2)]
    assert [c["probe"] for c in counts] == [6, 5]


def test_probe_resumes_a_one_process_checkpoint_under_two_processes(runs):
    _same_outputs(runs / "probe_resume", runs / "single" / "probe", PROBE_FILES)
    assert not (runs / "probe_resume" / ".partial").exists()
    # batch 0 was done: rank 0 ran batches 1, 3 and rank 1 batch 2 (state from rank 0)
    counts = [read_json(runs / f"counts{r}.json") for r in range(2)]
    assert [c["probe_resume"] for c in counts] == [5, 3]


def test_ablate_under_two_processes_writes_the_single_process_table(runs):
    _same_outputs(runs / "two" / "ablate", runs / "single" / "ablate", ABLATE_FILES)
    table = read_json(runs / "two" / "ablate" / "results.json")["table"]
    assert len(table) == 7 and table[0]["row"] == "none" and table[0]["n"] == N
    counts = [read_json(runs / f"counts{r}.json") for r in range(2)]
    # 4 batches of 7 rows each, one batch per rank and round: batches 0, 2 and 1, 3
    assert [c["ablate"] for c in counts] == [7 * 6, 7 * 5]
    # resumed: batch 0's 7 rows were on disk (read by rank 0 only): rank 0 ran batches 1, 3
    # and rank 1 batch 2, every row
    _same_outputs(runs / "ablate_resume", runs / "single" / "ablate", ABLATE_FILES)
    assert [c["ablate_resume"] for c in counts] == [7 * 5, 7 * 3]


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


@dataclass(kw_only=True)
class FakeSettings(OutputOptions):
    command = "fake dist"
    value: int = option(0, help="value")
    input: str = option("", help="input folder")


class FakeDist(Command):
    name, help, Settings = "fake dist", "fake", FakeSettings

    def run(self, s: FakeSettings, run) -> dict:
        """A job dealt to one rank: inside solo() its batch loops run alone, it writes."""
        upstream = read_json(Path(s.input) / "results.json")["value"] if s.input else 0
        local = distributed.map_batches(lambda a, b: list(range(a, b)), 10, 3, progress=False)
        return run.finish({"value": s.value + upstream, "rank": dist.get_rank(),
                           "seen_world": distributed.process_info().world_size,
                           "local": distributed.concat(local)})


class FakeShard(Command):
    """A shard-aware job: every rank runs it, each on its own batches of 10 items."""

    name, help, Settings, shards = "fake shard", "fake", FakeSettings, True

    def run(self, s: FakeSettings, run) -> dict:
        mine = []
        parts = distributed.map_batches(lambda a, b: mine.append(1) or list(range(a, b)), 10,
                                        3, progress=False)
        info = distributed.process_info()
        return run.finish({"gathered": distributed.concat(parts),
                           "batches_per_rank": distributed.all_gather_objects(len(mine)),
                           "writer": info.rank if run.writes else None})


def install_fake() -> None:
    import llm_fourier.commands as registry

    fakes = [FakeDist(), FakeShard()]
    registry.all_commands = lambda: {c.name: c for c in fakes}


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


def test_probe_and_ablate_are_run_by_every_rank_in_a_report():
    from llm_fourier.commands import all_commands

    assert {n for n, c in all_commands().items() if c.shards} == {"probe", "ablate"}

"""Malformed inputs are one sentence, before the heavy work: damaged GGUF files, config.json
files that do not fit their weights, non-finite weights where a command reads them, seeds
out of range, tasks too large for memory, a full disk, Ctrl-C at any moment, and a run
resumed under another --batch-size."""

from __future__ import annotations

import errno
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llm_fourier.cli import main
from llm_fourier.errors import UserError
from llm_fourier.model import tasks
from llm_fourier.output import files, rundir
from llm_fourier.output.files import read_json
from tests.test_golden import differences
from tests.test_user_errors import one_sentence
from tests.tiny import save_tiny, tiny_lm, tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]
TASK = ["--max-operand", "20", "--tau", "4"]


def sentences(err: str) -> list[str]:
    """The lines of stderr other than the progress bar's updates (they end in \\r)."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith("lens")]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("models"), "gpt2")


# ------------------------------------------------------------------ damaged model files
@pytest.mark.parametrize("keep", [10, 200, 0.5, 0.999])
def test_a_cut_gguf_file_is_named_in_one_sentence(keep, tmp_path, capsys):
    pytest.importorskip("gguf")
    from tests.llm.test_gguf import write_tiny_gguf

    whole = tmp_path / "whole.gguf"
    write_tiny_gguf(whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:keep if isinstance(keep, int) else int(len(data) * keep)])
    for argv in (["embed", "--tau", "2"], ["probe", *TASK]):
        err = one_sentence([*argv, "--model", str(cut)], tmp_path / "out", capsys)
        assert f"the GGUF file {cut} cannot be read" in err and "truncated or corrupt" in err


CONFIGS = {  # change to config.json -> words of the sentence
    "list": (lambda c: [1, 2], "holds a JSON list, not the object"),
    "not json": (None, "is not valid JSON"),
    "hidden size": (lambda c: {**c, "n_embd": 48}, "does not match its weights: "
                    "transformer.h.0.attn.c_attn.bias is (96,) in the weights but (144,)"),
    "vocabulary": (lambda c: {**c, "vocab_size": 5000}, "transformer.wte.weight is (242, 32) "
                   "in the weights but (5000, 32)"),
    "more layers": (lambda c: {**c, "n_layer": 4}, "lack transformer.h.2.attn.c_attn.bias (24 "
                    "tensors missing), which the config of"),
    "fewer layers": (lambda c: {**c, "n_layer": 1}, "hold more layers than the 1 its config "
                     "declares (transformer.h.1."),
}


@pytest.mark.parametrize("case", CONFIGS)
def test_a_config_that_does_not_fit_its_weights_is_one_sentence(case, good, tmp_path, capsys):
    change, words = CONFIGS[case]
    folder = shutil.copytree(good, tmp_path / "model")
    config = folder / "config.json"
    config.write_text("{not json" if change is None else
                      json.dumps(change(json.loads(config.read_text()))))
    for argv in (["probe", *TASK], ["ablate", *TASK], ["hidden", "--max-operand", "20"]):
        err = one_sentence([*argv, "--model", str(folder)], tmp_path / "out", capsys)
        assert words in err, err
        assert str(folder) in err


# ------------------------------------------------------------------ non-finite weights
@pytest.fixture(scope="module")
def damaged_weights(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nonfinite")
    out = {}
    for where in ("W_U rows", "a layer"):
        model, tok = tiny_lm("llama")
        seven = tok(" 7", add_special_tokens=False)["input_ids"][-1]
        with torch.no_grad():
            if where == "W_U rows":
                model.lm_head.weight[seven, 3] = float("nan")
                model.model.embed_tokens.weight[seven, 3] = float("nan")  # tied or not
            else:
                model.model.layers[1].mlp.down_proj.weight[0, 0] = float("inf")
        out[where] = save_tiny(model, tok, root / where.replace(" ", "-"))
    return out


@pytest.mark.parametrize("argv, where, words", [
    (["probe", *TASK], "W_U rows", "W_U holds NaN or inf in the rows of the numbers 7"),
    (["ablate", *TASK], "W_U rows", "W_U holds NaN or inf in the rows of the numbers 7"),
    (["embed", "--tau", "4"], "W_U rows", "W_E of {model} holds NaN or inf in the rows of "
                                          "the numbers 7"),
    (["embed", "--tau", "4", "--unembed"], "W_U rows", "W_U of {model} holds NaN or inf"),
    (["probe", *TASK], "a layer", "hold NaN or inf in layer 1 (model.layers.1.mlp.down_proj"
                                  ".weight)"),
    (["ablate", *TASK], "a layer", "hold NaN or inf in layer 1 (model.layers.1.mlp.down_proj"
                                   ".weight)"),
])
def test_non_finite_weights_are_refused_naming_the_tensor(argv, where, words, damaged_weights,
                                                          tmp_path, capsys):
    model = damaged_weights[where]
    err = one_sentence([*argv, "--model", str(model)], tmp_path / "out", capsys)
    assert words.format(model=model) in err and "roles" not in err


# ------------------------------------------------------------------ sizes
@pytest.mark.parametrize("argv", [["probe", "--model", "m", "--max-operand", "100000"],
                                  ["hidden", "--model", "m", "--max-operand", "100000"],
                                  ["finetune", "--model", "m", "--max-operand", "1000000"]])
def test_a_task_too_large_for_memory_is_refused_at_once(argv, tmp_path, capsys):
    start = time.perf_counter()
    err = one_sentence(argv, tmp_path / "out", capsys)
    assert time.perf_counter() - start < 2
    assert "--max-operand" in err and "GiB of memory available; use --max-operand" in err


def test_the_size_check_follows_the_memory_there_is(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(tasks, "available_memory", lambda: 2**30)  # 1 GiB: 10,000 is too many
    err = one_sentence(["probe", "--model", "m", "--max-operand", "10000"], tmp_path / "o",
                       capsys)
    fits = int(err.rsplit("use --max-operand ", 1)[1].split()[0])
    assert 100 < fits < 10000 and tasks.task_bytes(fits) <= 2**29 < tasks.task_bytes(fits + 1)
    start = time.perf_counter()
    with pytest.raises(UserError, match="max_operand 100000 makes 5,000,150,001 pairs"):
        tasks.make_task("+", 100000)  # the Python API too, before building anything
    assert time.perf_counter() - start < 2


# ------------------------------------------------------------------ a full disk
def test_a_full_disk_is_one_sentence_and_keeps_the_finished_part(good, tmp_path, monkeypatch,
                                                                 capsys):
    out = tmp_path / "out"
    argv = ["probe", "--model", str(good), *TASK, "--limit", "24", "--batch-size", "8",
            "--out", str(out)]
    real = files.atomic_write_bytes
    units = []

    def full_after_two_units(path, data):
        if Path(path).parent.name == ".partial" and Path(path).suffix == ".safetensors":
            units.append(path)
        if len(units) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(files, "atomic_write_bytes", full_after_two_units)
    monkeypatch.setattr(rundir, "atomic_write_bytes", full_after_two_units)
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = sentences(captured.err)
    assert "Traceback" not in captured.err and len(err) == 1, err
    assert "no space left on the disk writing" in err[0] and "the same command to resume" in err[0]
    # the two batches finished before the disk filled are kept as units
    assert len(list((out / ".partial").glob("lens-lens_*.json"))) == 2
    assert not (out / "results.json").exists()
    monkeypatch.undo()
    assert main(argv) == 0
    assert "resuming: 2 of 3" in capsys.readouterr().out
    assert (out / "results.json").is_file()


# ------------------------------------------------------------------ Ctrl-C
def _interrupted(argv: list[str], when) -> subprocess.CompletedProcess:
    # as from a terminal: SIGINT not ignored (pytest-xdist's workers ignore it, and an
    # ignored signal stays ignored in a child)
    proc = subprocess.Popen([sys.executable, "-m", "llm_fourier", *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    when(proc.pid)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _importing_torch(pid: int, then: float = 0.0) -> None:
    """Wait until the process maps libtorch (it is inside ``import torch``, past Python's
    own start-up, which no code of ours can guard), then ``then`` seconds more."""
    deadline = time.time() + 60
    while "libtorch" not in Path(f"/proc/{pid}/maps").read_text():
        assert time.time() < deadline, "the process never imported torch"
        time.sleep(0.005)
    time.sleep(then)


@pytest.mark.parametrize("then", [0.0, 0.3, 1.5])
def test_ctrl_c_during_start_up_is_one_line_exit_130(then, good, tmp_path):
    done = _interrupted(["probe", "--model", str(good), *TASK, "--out", str(tmp_path / "o")],
                        lambda pid: _importing_torch(pid, then))
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines() == [
        "llm-fourier: interrupted; finished outputs are kept and the same command resumes."]


def test_ctrl_c_during_a_run_is_one_line_exit_130_and_resumes(good, tmp_path):
    out = tmp_path / "o"
    argv = ["probe", "--model", str(good), "--max-operand", "60", "--tau", "4",
            "--batch-size", "1", "--out", str(out)]

    def first_unit(pid: int) -> None:
        deadline = time.time() + 90
        while not list((out / ".partial").glob("lens-lens_*.json")):
            assert time.time() < deadline, "the run never saved a unit"
            time.sleep(0.05)

    done = _interrupted(argv, first_unit)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and sentences(done.stderr) == [
        "llm-fourier: interrupted; finished outputs are kept and the same command resumes."]
    assert list((out / ".partial").glob("lens-lens_*.json"))


# ------------------------------------------------------------------ resume, other batch size
class _Stop(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("name, argv", [
    ("probe", ["probe", *TASK, "--limit", "24"]),
    ("ablate", ["ablate", *TASK, "--limit", "24", "--keep", "3"]),
])
def test_a_run_resumed_under_another_batch_size_says_which_it_needs(
        name, argv, good, tmp_path, monkeypatch, capsys):
    argv = [*argv, "--model", str(good)]
    assert main([*argv, "--batch-size", "4", "--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "resumed"
    real = rundir.RunDir.save_unit
    saved = []

    def stop_after_two(self, unit, *args, **kwargs):
        real(self, unit, *args, **kwargs)
        saved.append(unit)
        if len(saved) == 2:
            raise _Stop

    monkeypatch.setattr(rundir.RunDir, "save_unit", stop_after_two)
    assert main([*argv, "--batch-size", "4", "--out", str(out)]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    # units are per (batch, condition): another batching is one sentence naming the old one
    assert main([*argv, "--batch-size", "16", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--batch-size 4" in err and "Traceback" not in err
    assert main([*argv, "--batch-size", "4", "--out", str(out)]) == 0, capsys.readouterr().err
    assert "resuming" in capsys.readouterr().out
    expected, got = read_json(tmp_path / "whole" / "results.json"), read_json(
        out / "results.json")
    assert differences(expected, got) == []
    if name == "probe":
        assert (out / "predictions.csv").read_bytes() == (
            tmp_path / "whole" / "predictions.csv").read_bytes()

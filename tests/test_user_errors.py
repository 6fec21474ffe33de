"""Every user mistake is one sentence and exit code 2, before any heavy work, with nothing
written to ``--out``: one generated case per range, choice and type of every option of
every command, plus the mistakes that need more than one option or a file to see."""

from __future__ import annotations

import dataclasses
import os
import typing

import pytest

from llm_fourier.batch.commands import BATCH_COMMANDS
from llm_fourier.cli import main
from llm_fourier.commands import all_commands
from llm_fourier.commands.settings import _META, _flag, _kind

COMMANDS = {**all_commands(), **{c.name: c for c in BATCH_COMMANDS}}
# required positional values / options that the generated cases keep valid
REQUIRED = {"toy analyze": ["ckpt.safetensors"], "report": ["grid.toml"]}


def _base(command) -> list[str]:
    argv = [*command.name.split(), *REQUIRED.get(command.name, [])]
    for f in dataclasses.fields(command.Settings):
        meta = f.metadata.get(_META)
        if meta and not meta["positional"] and f.default is dataclasses.MISSING \
                and f.default_factory is dataclasses.MISSING:
            argv += [_flag(f.name, meta), "m"]  # never loaded: the bad value fails first
    return argv


def _bad_values(settings_cls) -> list[tuple[str, str, str]]:
    """(option, bad value, why) for every range, choice and type of the settings."""
    hints = typing.get_type_hints(settings_cls)
    cases = []
    for f in dataclasses.fields(settings_cls):
        meta = f.metadata.get(_META)
        if meta is None or meta["positional"]:
            continue
        elem, _, _ = _kind(hints[f.name])
        flag = _flag(f.name, meta)
        if meta["choices"] is not None:
            cases.append((flag, "no-such-choice", "choice"))
        if elem in (int, float):
            cases.append((flag, "x", "type"))
            if meta["min"] is not None:
                cases.append((flag, str(elem(meta["min"] - 1)), "min"))
            if meta["above"] is not None:
                cases.append((flag, str(elem(meta["above"])), "above"))
            if meta["max"] is not None:
                cases.append((flag, str(elem(meta["max"] + 1)), "max"))
        if elem is float:
            cases.append((flag, "nan", "finite"))
    return cases


GENERATED = [pytest.param([*_base(c), flag, value], why, id=f"{name}{flag}={value}({why})")
             for name, c in COMMANDS.items() for flag, value, why in _bad_values(c.Settings)]
# the words each kind of generated case must be refused with (argparse or the settings)
REASONS = {"choice": "invalid choice", "type": "invalid", "min": "must be at least",
           "max": "must be at most", "above": "must be above", "finite": "must be a finite"}
SPECIFIC = [
    (["probe", "--model", "m", "--max-operand", "20", "--tau", "50"], "--tau must lie in 1..20"),
    (["embed", "--model", "m", "--max-number", "20", "--tau", "50"], "--tau must lie in 1..10"),
    (["ablate", "--model", "m", "--max-operand", "20", "--tau", "5", "--keep", "30"],
     "--keep components must lie in 1..20"),
    (["ablate", "--model", "m", "--layers", "1-x"], "cannot read --layers"),
    (["hidden", "--model", "m", "--ablate-periods", "7"], "were not fitted"),
    (["hidden", "--model", "m", "--folds", "1"], "--folds must be at least 2"),
    (["hidden", "--model", "m", "--helix-periods", "0"], "--helix-periods must be at least 2"),
    (["transplant", "--periods", "0"], "--periods must be at least 2"),
    (["transplant", "--heads", "3", "--d-model", "16"], "--heads must divide --d-model 16"),
    (["toy", "train", "--seeds", "1", "1"], "--seeds must be distinct"),
    (["toy", "train", "--lr", "-1"], "--lr must be above 0"),
    (["toy", "train", "--train-frac", "2"], "--train-frac must be at most 1"),
    (["finetune", "--model", "m", "--lr", "0"], "--lr must be above 0"),
    (["report"], "name a config file or a preset"),
    (["report", "no-such-config"], "no config file or preset named"),
    (["probe", "--model", "m", "--task-seed", "-3"], "--task-seed must be at least 0, got -3"),
    (["hidden", "--model", "m", "--seed", "-1"], "--seed must be at least 0"),
    (["neurons", "--model", "m", "--seed", str(2**40)], "--seed must be at most 4294967295"),
    (["toy", "train", "--seeds", "0", "-2"], "--seeds must be at least 0"),
    (["probe", "--model", "m", "--max-operand", "100000"], "use --max-operand"),
]
if not __import__("torch").cuda.is_available():
    SPECIFIC.append((["probe", "--model", "m", "--device-map", "cuda"], "no CUDA device"))


def one_sentence(argv: list[str], out, capsys) -> str:
    """Run ``argv`` into ``out``: exit code 2, one line on stderr, no traceback, and no
    ``--out`` folder left behind; returns the line."""
    assert main([*argv, "--out", str(out)]) == 2, argv
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists(), f"{argv} wrote into --out"
    return err


@pytest.mark.parametrize("argv, why", GENERATED)
def test_every_bad_option_value_is_one_sentence_exit_2(argv, why, tmp_path, capsys):
    err = one_sentence(argv, tmp_path / "out", capsys)
    assert REASONS[why] in err and argv[-2] in err, err  # refused for that option, that reason


@pytest.mark.parametrize("argv, words", SPECIFIC)
def test_mistakes_across_options_are_one_sentence(argv, words, tmp_path, capsys):
    assert words in one_sentence(argv, tmp_path / "out", capsys)


def test_the_table_covers_every_command():
    covered = {name for name, c in COMMANDS.items()
               if any(case.values[0][:len(name.split())] == name.split() for case in GENERATED)}
    checkable = {name for name, c in COMMANDS.items() if _bad_values(c.Settings)}
    assert len(GENERATED) > 60 and {"probe", "ablate", "hidden", "finetune"} <= covered
    assert covered == checkable, checkable - covered


@pytest.mark.parametrize("problem", ["file", "under a file", "read-only"])
def test_out_that_cannot_be_written_is_refused_before_loading(problem, tmp_path, capsys):
    out = tmp_path / "out"
    if problem == "file":
        out.write_text("not a folder")
    elif problem == "under a file":
        (tmp_path / "f").write_text("a file")
        out = tmp_path / "f" / "out"
    else:
        out.mkdir()
        os.chmod(out, 0o500)
        if os.access(out, os.W_OK):  # root ignores modes
            pytest.skip("running as root: folder modes are not enforced")
    # the model does not exist: if --out were checked after loading, the error would name it
    assert main(["probe", "--model", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "missing" not in err and len(err.strip().splitlines()) == 1


def test_a_failure_after_the_out_check_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["probe", "--model", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing" in capsys.readouterr().err and not out.exists()


def test_generated_cases_really_are_out_of_range():
    ids = [c.id for c in GENERATED]
    assert "probe--tau=0(min)" in ids and "toy train--lr=0.0(above)" in ids
    assert any(i.startswith("toy train--train-frac=2.0(max)") for i in ids)
    assert "toy train--lr=nan(finite)" in ids
    seeds = {i for i in ids if "seed" in i}  # every seed option has both bounds
    for name, flag in [("probe", "--task-seed"), ("hidden", "--seed"), ("neurons", "--seed"),
                       ("patch", "--seed"), ("finetune", "--seed"), ("toy train", "--seeds"),
                       ("transplant", "--seeds"), ("transplant", "--task-seed")]:
        assert f"{name}{flag}=-1(min)" in seeds and f"{name}{flag}=4294967296(max)" in seeds


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """A model folder whose weights file was cut short, and one without a tokenizer."""
    import shutil

    from tests.tiny import tiny_model_dir

    root = tmp_path_factory.mktemp("damaged")
    good = tiny_model_dir(root / "good", "gpt2")
    cut = shutil.copytree(good, root / "cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[:len(data) // 3])
    bare = shutil.copytree(good, root / "bare")
    for path in bare.glob("tokenizer*"):
        path.unlink()
    return cut, bare


@pytest.mark.parametrize("argv", [["probe", "--tau", "4"], ["embed", "--tau", "4"], ["hidden"],
                                  ["finetune"], ["ablate", "--tau", "4"]])
def test_a_truncated_weights_file_is_named_in_one_sentence(argv, damaged, tmp_path, capsys):
    cut, _ = damaged
    err = one_sentence([*argv, "--model", str(cut), "--max-operand", "20"]
                 if argv[0] not in ("embed",) else [*argv, "--model", str(cut)],
                 tmp_path / "out", capsys)
    assert str(cut) in err and "truncated or corrupt" in err


def test_a_folder_without_a_tokenizer_says_so(damaged, tmp_path, capsys):
    _, bare = damaged
    err = one_sentence(["probe", "--model", str(bare), "--max-operand", "20", "--tau", "4"],
                 tmp_path / "out", capsys)
    assert "holds no tokenizer" in err and "--tokenizer" in err

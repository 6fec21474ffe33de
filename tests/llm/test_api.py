"""``import llm_fourier as lf``: commands as functions of their settings, checked as on the
command line, returning what the CLI writes; without ``out`` nothing is written."""

from __future__ import annotations

import os

import pytest

import llm_fourier as lf
from llm_fourier.cli import main
from llm_fourier.output.files import read_json

SETTINGS = {"max_operand": 12, "limit": 10, "tau": 4, "batch_size": 5}


def test_a_command_from_python_returns_the_results_the_cli_writes(tiny_dir, tmp_path):
    model = str(tiny_dir("gpt2"))
    cwd = os.getcwd()
    os.chdir(tmp_path)  # nothing may be written, not even into the working folder
    try:
        got = lf.probe(model=model, **SETTINGS)
    finally:
        os.chdir(cwd)
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "cli"
    argv = [x for k, v in SETTINGS.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    assert main(["probe", "--model", model, *argv, "--out", str(out)]) == 0
    written = read_json(out / "results.json")
    written.pop("files")
    assert read_json_roundtrip(got) == written


def read_json_roundtrip(obj):
    import json

    from llm_fourier.output.files import to_jsonable

    return json.loads(json.dumps(to_jsonable(obj)))


def test_settings_are_checked_as_on_the_command_line(tiny_dir):
    with pytest.raises(lf.UserError, match=r"probe: --tau must lie in 1\.\.12"):
        lf.probe(model=str(tiny_dir("gpt2")), max_operand=12, tau=13)
    with pytest.raises(lf.UserError, match="probe has no setting 'taus'"):
        lf.probe(model="gpt2", taus=3)
    for command in (lf.ablate, lf.embed, lf.hidden, lf.finetune, lf.patch, lf.neurons):
        with pytest.raises(lf.UserError, match="--model is required"):
            command()


def test_run_reaches_every_registered_command_by_name(tmp_path):
    res = lf.run("toy train", p=7, epochs=3, d_model=8, heads=1, d_head=8, d_mlp=8,
                 log_every=1, measure_every=0, out=str(tmp_path / "grok"))
    assert [r["seed"] for r in res["seeds"]] == [0]
    assert (tmp_path / "grok" / "checkpoint.safetensors").is_file()
    with pytest.raises(lf.UserError, match="unknown command 'toy trian'"):
        lf.run("toy trian")


def test_library_steps_are_importable_by_name():
    task = lf.make_task("+", 5)
    assert task.max_answer == 10 and callable(lf.run_lens) and callable(lf.capture)
    with pytest.raises(AttributeError):
        lf.no_such_step  # noqa: B018

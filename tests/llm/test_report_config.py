"""Report configs: expansion into jobs, references, ordering, and errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import llm_fourier.commands as registry
from llm_fourier.batch.config import load_config, parse_config, resolve_refs
from llm_fourier.cli import main
from llm_fourier.commands.base import Command
from llm_fourier.commands.options import OutputOptions
from llm_fourier.commands.settings import option
from llm_fourier.errors import UserError


@dataclass(kw_only=True)
class TrainSettings(OutputOptions):
    command = "fake train"
    model: str = option("gpt2", help="model")
    seed: int = option(0, help="seed")
    lr: float = option(1e-3, above=0, help="learning rate")
    op: str = option("+", choices=("+", "*"), help="op")
    max_operand: int = option(10, min=1, help="operands")
    revision: str | None = option(None, help="hub revision")


@dataclass(kw_only=True)
class UseSettings(OutputOptions):
    command = "fake use"
    source: str = option("", help="source")
    layers: list[int] | None = option(None, help="layers")


class FakeTrain(Command):
    name, help, Settings = "fake train", "train", TrainSettings


class FakeUse(Command):
    name, help, Settings = "fake use", "use", UseSettings


FAKES = [FakeTrain(), FakeUse()]


@pytest.fixture(autouse=True)
def fake_registry(monkeypatch):
    real = registry.all_commands
    monkeypatch.setattr(registry, "all_commands",
                        lambda: {**real(), **{c.name: c for c in FAKES}})


GRID = {
    "title": "grid",
    "seeds": [0, 1],
    "models": {"small": "gpt2", "local": "/data/llama"},
    "tasks": {"add": {"op": "+", "max-operand": 20}, "mul": {"op": "*"}},
    "jobs": [
        {"command": "fake use", "name": "use",
         "settings": {"source": "{jobs.train-small-add-s1}/model", "layers": ["0", "1"]}},
        {"command": "fake train", "name": "train", "models": "*", "tasks": ["add", "mul"],
         "settings": {"lr": "0.5"}},
    ],
}


def test_grid_expands_models_tasks_seeds_and_orders_by_reference():
    report = parse_config(GRID)
    ids = [j.id for j in report.jobs]
    train = [f"train-{m}-{t}-s{s}" for m in ("small", "local") for t in ("add", "mul")
             for s in (0, 1)]
    assert sorted(ids) == sorted(train + ["use"])
    # the job that references train-small-add-s1 runs after it
    assert ids.index("use") > ids.index("train-small-add-s1")
    job = report.job("train-local-mul-s1")
    assert job.settings == {"lr": 0.5, "op": "*", "model": "/data/llama", "seed": 1}
    assert (job.model, job.task, job.seed) == ("local", "mul", 1)
    assert report.job("train-small-add-s0").settings["max_operand"] == 20
    use = report.job("use")
    assert use.needs == ("train-small-add-s1",)
    assert use.settings["layers"] == [0, 1]  # strings converted by the option's type
    assert "seed" not in use.settings  # the command has no --seed: no seed axis
    resolved = resolve_refs(use.settings["source"], lambda i: f"/out/jobs/{i}")
    assert resolved == "/out/jobs/train-small-add-s1/model"


def test_hash_changes_with_settings_and_with_upstream():
    a = parse_config(GRID).job("train-small-add-s0")
    grid = {**GRID, "jobs": [GRID["jobs"][0], {**GRID["jobs"][1], "settings": {"lr": 0.1}}]}
    b = parse_config(grid).job("train-small-add-s0")
    assert a.settings_hash() == parse_config(GRID).job("train-small-add-s0").settings_hash()
    assert a.settings_hash() != b.settings_hash()
    use = parse_config(GRID).job("use")
    assert use.settings_hash({"train-small-add-s1": "x"}) != \
        use.settings_hash({"train-small-add-s1": "y"})


def test_placeholders_and_model_override():
    raw = {"models": {"m": "gpt2"}, "jobs": [
        {"command": "fake train", "models": ["m"], "seeds": [4], "name": "t"},
        {"command": "fake use", "name": "u", "needs": [],
         "settings": {"source": "{jobs.t-m-s4}/{model}"}}]}
    report = parse_config(raw, model_overrides={"m": "/local/gpt2"})
    assert report.job("t-m-s4").settings["model"] == "/local/gpt2"
    with pytest.raises(UserError, match="models.x: --model override names no model"):
        parse_config(raw, model_overrides={"x": "y"})


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(colour=1), "colour: unknown key"),
    (lambda c: c.update(models=["gpt2"]), "models: must map names to model ids"),
    (lambda c: c["jobs"][1].update(command="nope"), r"jobs\[1\].command: unknown command"),
    (lambda c: c["jobs"][1].update(settings={"lrr": 1}), r"jobs\[1\].settings.lrr: the command "
                                                         "has no option 'lrr'"),
    (lambda c: c["jobs"][1].update(settings={"lr": "fast"}), r"job train-small-add-s0: "
                                                             "fake train: lr must be a number"),
    (lambda c: c["jobs"][1].update(settings={"lr": -1}), r"job train-small-add-s0: fake "
                                                         "train: --lr must be above 0"),
    (lambda c: c["tasks"]["add"].update(op="-"), r"job train-small-add-s0: fake train: --op "
                                                 "must be one of"),
    (lambda c: c["jobs"][1].update(models=["big"]), r"jobs\[1\].models: unknown name 'big'"),
    (lambda c: c["jobs"][0].update(models=["small"]), r"jobs\[0\].models: command 'fake use' "
                                                      "has no option 'model'"),
    (lambda c: c["jobs"][1].update(seeds="x"), r"jobs\[1\].seeds: must be an integer"),
    (lambda c: c["jobs"][1].update(tasks=[]), r"jobs\[1\].tasks: name at least one"),
    (lambda c: c["jobs"][1].update(name="a b"), r"jobs\[1\].name: use letters"),
    (lambda c: c["jobs"][0]["settings"].update(source="{jobs.zzz}"),
     "job use: refers to unknown job 'zzz'"),
    (lambda c: c["jobs"].append(dict(c["jobs"][0])), "two jobs have the id 'use'"),
    (lambda c: c.update(jobs=[]), "jobs: give at least one"),
    (lambda c: c.update(revisions=""), "revisions: must be a revision name"),
    (lambda c: c.update(revisions=[]), "revisions: name at least one"),
    (lambda c: c.update(revisions=["a", 3]), "revisions: must be a revision name"),
    (lambda c: c.update(revisions=["step1", "step1"]), "names a revision twice"),
    (lambda c: c["jobs"][0].update(revisions=["main"]), r"jobs\[0\].revisions: command "
                                                        "'fake use' has no option 'revision'"),
    (lambda c: c["jobs"][1].update(revisions=["main"], settings={"revision": "x"}),
     r"jobs\[1\].revisions: the job's settings set a revision too"),
    (lambda c: c.update(revisions=["v1/x", "v1_x"]), "two jobs have the id "
                                                     "'train-small-add-rv1_x-s0'"),
    (lambda c: c["jobs"][1].update(needs=["use"]),
     "part of a dependency cycle"),
])
def test_config_errors_name_the_key(mutate, message):
    import copy

    raw = copy.deepcopy(GRID)
    mutate(raw)
    with pytest.raises(UserError, match=message):
        parse_config(raw, source="c.toml")


def test_a_list_seed_option_gets_one_seed_per_job():
    raw = {"jobs": [{"command": "fake use", "seeds": [3, 4], "seed_setting": "layers"}]}
    jobs = parse_config(raw).jobs
    assert [(j.id, j.settings["layers"]) for j in jobs] == [("fake-use-s3", [3]),
                                                            ("fake-use-s4", [4])]


def test_toml_and_yaml_files_give_the_same_jobs(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('title = "t"\nseeds = [2]\n[tasks]\nadd = { op = "*" }\n'
                    '[[jobs]]\ncommand = "fake train"\ntasks = ["add"]\n'
                    'settings = { max-operand = 7 }\n')
    yaml = tmp_path / "c.yaml"
    yaml.write_text('title: t\nseeds: [2]\ntasks:\n  add: {op: "*"}\n'
                    'jobs:\n  - command: fake train\n    tasks: [add]\n'
                    '    settings: {max-operand: 7}\n')
    a, b = load_config(toml), load_config(yaml)
    assert [(j.id, j.settings) for j in a.jobs] == [(j.id, j.settings) for j in b.jobs] == \
        [("fake-train-add-s2", {"max_operand": 7, "op": "*", "seed": 2})]


def test_cli_config_error_is_one_sentence_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[jobs]]\ncommand = "fake train"\nsettings = { lr = "x" }\n')
    assert main(["report", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm-fourier: error:") and "job fake-train-s0" in err and "lr" in err
    assert "\n" not in err and "Traceback" not in err
    broken = tmp_path / "broken.toml"
    broken.write_text("[[jobs]\n")
    assert main(["report", str(broken)]) == 2
    assert "cannot parse the config" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing.toml")]) == 2
    assert "no config file or preset" in capsys.readouterr().err


def test_revisions_expand_jobs_and_set_the_revision_setting():
    raw = {"revisions": ["step0", "step1000"], "seeds": [0], "models": {"m": "org/m"},
           "jobs": [
               {"command": "fake train", "name": "t", "models": ["m"]},  # the top-level axis
               {"command": "fake train", "name": "own", "revisions": "main", "seeds": [1]},
               {"command": "fake train", "name": "fixed", "settings": {"revision": "v2"}},
               {"command": "fake train", "name": "c", "revisions": ["v1.0/rc"],
                "settings": {"model": "ckpt-{revision}"}},
               {"command": "fake use", "name": "u",  # no revision option: no axis
                "settings": {"source": "{jobs.t-m-rstep1000-s0}/x"}},
           ]}
    report = parse_config(raw)
    ids = [j.id for j in report.jobs]
    assert sorted(ids) == sorted(["t-m-rstep0-s0", "t-m-rstep1000-s0", "own-rmain-s1",
                                  "fixed-s0", "c-rv1.0_rc-s0", "u"])
    job = report.job("t-m-rstep1000-s0")
    assert job.settings == {"model": "org/m", "revision": "step1000", "seed": 0}
    assert (job.model, job.revision, job.seed) == ("m", "step1000", 0)
    assert report.job("own-rmain-s1").settings["revision"] == "main"
    fixed = report.job("fixed-s0")
    assert fixed.settings["revision"] == "v2" and fixed.revision is None
    assert report.job("c-rv1.0_rc-s0").settings["model"] == "ckpt-v1.0/rc"
    use = report.job("u")
    assert "revision" not in use.settings and use.needs == ("t-m-rstep1000-s0",)
    # the revision takes part in the settings hash, so a new revision is a new job
    assert report.job("t-m-rstep0-s0").settings_hash() != job.settings_hash()

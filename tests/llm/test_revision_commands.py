"""Hub revisions through the commands and a report: every command that loads a model passes
``--revision`` on, and a report over two local revisions of a tiny model (a hub cache laid
out as huggingface_hub writes it, offline) loads each revision's own weights and draws the
emergence figures against the training step."""

from __future__ import annotations

import csv
import importlib
import inspect
import json

import numpy as np
import pytest
import torch

import llm_fourier.commands.embed as embed_cmd
import llm_fourier.commands.options as options
from llm_fourier.analyses.embeddings import load_embedding_matrix
from llm_fourier.batch.runner import MANIFEST, job_dir
from llm_fourier.cli import main
from llm_fourier.commands import BUILTIN_MODULES
from llm_fourier.commands.base import JobView
from llm_fourier.commands.emergence import emergence_html, emergence_rows
from llm_fourier.model.loading import load_model
from llm_fourier.model.numbers import find_number_tokens
from tests.tiny import save_tiny, tiny_lm

REPO = "tiny-org/tiny-gpt2"
P = 201  # numbers 0..200 are single tokens of the tiny tokenizer


def _loading_commands():
    commands = [importlib.import_module(m).COMMAND for m in BUILTIN_MODULES]
    return [c for c in commands if "model" in c.Settings.option_names()]


def test_every_builtin_command_that_loads_a_model_takes_a_revision():
    names = {c.name for c in _loading_commands()}
    assert names >= {"probe", "ablate", "embed", "hidden", "patch", "neurons", "finetune"}
    assert [c.name for c in _loading_commands() if "revision" not in
            c.Settings.option_names()] == []


class _Loaded(Exception):
    pass


@pytest.mark.parametrize("command", _loading_commands(), ids=lambda c: c.name)
def test_the_revision_reaches_the_loader(command, monkeypatch, tmp_path):
    seen: dict = {}

    def loader(*args, **kwargs):
        seen.update(kwargs)
        raise _Loaded

    def tokenizer_loader(source, trust_remote_code=False, revision=None):  # sources' order
        if revision is not None:
            seen["revision"] = revision
        raise _Loaded

    monkeypatch.setattr(options, "load_model", loader)
    monkeypatch.setattr(options, "load_tokenizer", tokenizer_loader)
    monkeypatch.setattr(embed_cmd, "load_embedding_matrix", loader)
    with pytest.raises(_Loaded):
        command(model=REPO, revision="step1000", out=str(tmp_path / "a"))
    assert seen["revision"] == "step1000"
    seen.clear()
    with pytest.raises(_Loaded):
        command(model=REPO, out=str(tmp_path / "b"))
    assert "revision" not in seen  # the default branch: the loaders' own default


def _loaders_take_revisions() -> bool:
    return all("revision" in inspect.signature(f).parameters
               for f in (load_model, load_embedding_matrix))


def _planted_rows(seed: int) -> np.ndarray:
    """Number rows with cosines of periods 10 and 5 (random phases) plus a little noise."""
    rng = np.random.default_rng(seed)
    x = np.arange(P)[:, None]
    rows = 0.05 * rng.standard_normal((P, 32))
    for amp, period in ((1.0, 10), (0.7, 5)):
        rows += amp * np.cos(2 * np.pi * x / period + rng.uniform(0, 2 * np.pi, 32))
    return rows


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """``step0`` (random init) and ``step1000`` (Fourier number rows planted) of one repo:
    refs/<branch> holds a commit hash, snapshots/<hash>/ the saved files."""
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / f"models--{REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    rows = {}
    for seed, (branch, commit) in enumerate([("step0", "0" * 40), ("step1000", "1" * 40)]):
        model, tok = tiny_lm("gpt2", seed=seed)
        ids = torch.as_tensor(find_number_tokens(tok, P - 1).token_ids)
        if branch == "step1000":
            with torch.no_grad():
                model.transformer.wte.weight[ids] = torch.tensor(_planted_rows(3),
                                                                 dtype=torch.float32)
        rows[branch] = model.transformer.wte.weight[ids].detach().double().numpy()
        save_tiny(model, tok, repo / "snapshots" / commit)
        (repo / "refs" / branch).write_text(commit)
    (repo / "refs" / "main").write_text("1" * 40)
    return cache, rows


CONFIG = """
title = "tiny checkpoints"
revisions = ["step1000", "step0"]
[models]
tiny = "REPO"
[tasks]
add = { op = "+", max_operand = 29 }
[[jobs]]
command = "embed"
models = ["tiny"]
settings = { basis = "dft", tau = 10 }
[[jobs]]
command = "hidden"
models = ["tiny"]
tasks = ["add"]
settings = { n_probe = 120, roles = ["block"], periods = [2, 10], helix_periods = [10], \
pca_dim = 8, mod_pca_dim = 16, folds = 2, no_random_baseline = true, quiet = true }
""".replace("REPO", REPO)


def _strength(rows: np.ndarray, period: float) -> float:
    """numpy: |DFT| pooled over columns at the component nearest ``period``, over the median
    non-constant component (the normalisation of a basis cancels in the ratio)."""
    mags = np.sqrt((np.abs(np.fft.rfft(rows, axis=0)) ** 2).sum(axis=1))[1:]
    k = int(np.argmin(np.abs(P / np.arange(1, len(mags) + 1) - period)))
    return float(mags[k] / np.median(mags))


@pytest.mark.skipif(not _loaders_take_revisions(), reason="load_model / load_embedding_matrix "
                    "take no revision yet (branch arch)")
def test_report_over_two_local_revisions(hub_cache, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache, rows = hub_cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    out = tmp_path / "report"
    assert main(["report", str(config), "--out", str(out)]) == 0
    jobs = json.loads((out / MANIFEST).read_text())["jobs"]
    assert {j: e["status"] for j, e in jobs.items()} == dict.fromkeys(
        ["embed-tiny-rstep1000", "embed-tiny-rstep0", "hidden-tiny-add-rstep1000-s0",
         "hidden-tiny-add-rstep0-s0"], "done")
    assert jobs["embed-tiny-rstep0"]["revision"] == "step0"
    # each revision's own weights: the planted periods only at step1000
    for rev in ("step0", "step1000"):
        res = json.loads((job_dir(out, f"embed-tiny-r{rev}") / "results.json").read_text())
        assert res["revision"] == rev
        found = {round(o["period"]) for o in res["outliers"]}
        assert ({10, 5} <= found) == (rev == "step1000")
    with open(out / "tables" / "emergence_embed.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [(r["revision"], r["step"]) for r in table] == [("step0", "0"), ("step1000", "1000")]
    for r in table:
        for T in (2, 2.5, 5, 10):
            assert float(r[f"T={T:g}"]) == pytest.approx(_strength(rows[r["revision"]], T),
                                                         rel=1e-4)
    assert float(table[1]["T=10"]) > 10 * float(table[0]["T=10"])
    page = (out / "index.html").read_text()
    assert "emergence_embed.png" in page and "revision step1000" in page
    # the hidden view's emergence figure (one line in HiddenCommand.section_html)
    views = [JobView(j, job_dir(out, j), e, json.loads(
        (job_dir(out, j) / "results.json").read_text())) for j, e in jobs.items()
        if e["command"] == "hidden"]
    series = emergence_rows(views, "hidden")
    assert [r["step"] for r in series] == [0, 1000]
    for r, view in zip(series, sorted(views, key=lambda v: v.entry["revision"])):
        for T in (2, 10):
            kappas = [p["mod"][str(T)]["kappa"] for p in view.results["probes"]]
            assert r[f"mod {T}"] == pytest.approx(max(kappas))
    assert "emergence_hidden.png" in emergence_html(views, out, "hidden")

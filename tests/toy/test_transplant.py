"""Transplant math: projections keep the Fourier outliers, synthetic controls, row freezing,
rows written at the right numbers, frozen rows bit-identical through real training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_fourier.analyses.finetuning import RowFreezer, embedding_params
from llm_fourier.errors import UserError
from probes import FourierBasis, spectrum
from toy.adders import AdderConfig, build_adder
from toy.transplant import project_rows, rescale_rows, synthetic_embeddings

P = 121
BASIS = FourierBasis(P)


def planted_embeddings(p: int, dim: int, periods, seed: int) -> np.ndarray:
    """Number embeddings (p x dim) with planted Fourier features at ``periods`` over a smooth
    low-frequency background and noise, as in GPT-2's number tokens (a known answer for
    spectrum and outlier tests)."""
    rng = np.random.default_rng(seed)
    x = np.arange(p)[:, None]
    emb = 0.3 * np.cumsum(rng.standard_normal((p, dim)), axis=0)  # smooth background
    emb += 0.5 * rng.standard_normal((p, dim))
    for period in periods:
        phase = rng.uniform(0, 2 * np.pi, dim)
        emb += rng.uniform(0.5, 1.5, dim) * np.cos(2 * np.pi * x / period + phase)
    return emb


def outlier_periods(rows: np.ndarray) -> set[float]:
    return {round(o.period, 3) for o in spectrum(rows, BASIS, axis=0).outliers()}


@pytest.mark.parametrize("method", ["pca", "random"])
def test_projection_keeps_source_outlier_periods(method):
    # independent source: planted embeddings (random-walk background + noise)
    source = planted_embeddings(P, 256, (2, 2.5, 5, 10), seed=3)
    assert outlier_periods(source) == {2.0, 2.5, 5.0, 10.0}
    projected = project_rows(source, 48, method, seed=1)
    assert projected.shape == (P, 48)
    assert outlier_periods(projected) == {2.0, 2.5, 5.0, 10.0}


def test_pca_projection_is_the_top_principal_subspace():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((50, 20)) * np.linspace(5, 0.1, 20)  # decaying variances
    proj = project_rows(rows, 5, "pca")
    centred = rows - rows.mean(0)
    # variance kept equals the sum of the 5 largest eigenvalues of the covariance
    eig = np.sort(np.linalg.eigvalsh(centred.T @ centred))[::-1]
    kept = ((proj - proj.mean(0)) ** 2).sum()
    assert kept == pytest.approx(eig[:5].sum(), rel=1e-9)
    # equal width is a copy, a narrower source keeps its pairwise distances
    assert np.array_equal(project_rows(rows, 20), rows)
    for method in ("pca", "random"):
        wide = project_rows(rows, 32, method)
        assert wide.shape == (50, 32)
        d0 = np.linalg.norm(rows[:, None] - rows[None], axis=-1)
        d1 = np.linalg.norm(wide[:, None] - wide[None], axis=-1)
        assert np.allclose(d0, d1)
    with pytest.raises(UserError):
        project_rows(rows, 5, "umap")


def test_synthetic_controls():
    fourier = synthetic_embeddings(P, 64, "fourier", periods=(2, 2.5, 5, 10), norm=2.0)
    low = synthetic_embeddings(P, 64, "low", norm=2.0)
    rand = synthetic_embeddings(P, 64, "random", norm=2.0, seed=5)
    assert outlier_periods(fourier) == {2.0, 2.5, 5.0, 10.0}
    assert not {2.0, 2.5, 5.0, 10.0} & outlier_periods(low)
    assert spectrum(low, BASIS, axis=0).low_high(10)["low_fraction"] > 0.95
    # matched norms: the random control has the Fourier rows' norms, mean 2
    assert np.allclose(np.linalg.norm(rand, axis=1), np.linalg.norm(fourier, axis=1))
    assert np.linalg.norm(fourier, axis=1).mean() == pytest.approx(2.0)
    # every number gets its own embedding (the smooth components break n ~ n + 10)
    for e in (fourier, low):
        d = np.linalg.norm(e[:, None] - e[None], axis=-1) + np.eye(P)
        assert d.min() > 1e-3
    # other periods are honoured
    assert outlier_periods(synthetic_embeddings(P, 64, periods=(3, 8))) == {3.0, 8.0}
    with pytest.raises(UserError):
        synthetic_embeddings(P, 8, "fourier")  # 15 features do not fit 8 dims
    assert rescale_rows(fourier, None) is fourier


def test_row_freezer_survives_adamw_weight_decay():
    model, tok = build_adder(AdderConfig(max_number=20, n_layer=1, d_model=16, n_head=2), seed=0)
    frozen = np.array([5, 6, 7, 12])
    W = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is W  # tied
    before = W.detach().clone()
    freezer = RowFreezer(embedding_params(model), frozen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    x = torch.randint(0, len(tok), (8, 6))
    for _ in range(3):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        assert W.grad[frozen].abs().max() == 0
        opt.step()
        opt.zero_grad()
        freezer.restore()
    freezer.remove()
    assert torch.equal(W[frozen], before[frozen])
    others = np.setdiff1d(np.arange(len(tok)), frozen)
    assert (W[others] != before[others]).any(dim=1).float().mean() > 0.5


def test_without_restore_weight_decay_would_move_frozen_rows():
    # the reason RowFreezer restores rows: zero gradient alone does not stop AdamW's decay
    model, _ = build_adder(AdderConfig(max_number=20, n_layer=1, d_model=16, n_head=2), seed=0)
    W = model.get_input_embeddings().weight
    before = W.detach().clone()
    freezer = RowFreezer([W], [5])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    x = torch.randint(0, W.shape[0], (4, 5))
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    assert not torch.equal(W[5], before[5])
    assert torch.allclose(W[5], before[5] * (1 - 1e-2 * 0.5))
    freezer.restore()
    assert torch.equal(W[5], before[5])


def shuffled_tokenizer(max_number: int, seed: int):
    """A word-level tokenizer whose number tokens have shuffled ids (so id != value + 4)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from llm_fourier.model.tokenizers import word_level_tokenizer

    base = word_level_tokenizer(max_number)
    tokens = sorted(base.get_vocab(), key=base.get_vocab().get)
    rest = tokens[4:]
    np.random.default_rng(seed).shuffle(rest)
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(tokens[:4] + rest)},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = base.backend_tokenizer.pre_tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", bos_token="<bos>")


def source_folder(tmp_path, arch: str, width: int):
    """A saved model (``arch``) whose embedding row of number n is (n, n^2, 1, 0, ...)."""
    import transformers as T

    from tests.tiny import tiny_config

    tok = shuffled_tokenizer(150, seed=4)
    cfg = tiny_config(arch, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    if arch == "gpt2":
        cfg.n_embd = width
    else:
        cfg.hidden_size = width
    model = (T.AutoModelForCausalLM if arch == "gpt2" else T.AutoModel).from_config(cfg)
    with torch.no_grad():
        W = model.get_input_embeddings().weight
        for n in range(151):
            W[tok.convert_tokens_to_ids(str(n))] = 0.0
            W[tok.convert_tokens_to_ids(str(n)), :3] = torch.tensor([n, n * n, 1.0])
    model.save_pretrained(tmp_path / arch / "model")  # a run folder: RUN/model
    tok.save_pretrained(tmp_path / arch / "model")
    return tmp_path / arch, tok


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_source_rows_land_on_the_same_numbers(tmp_path, arch):
    from llm_fourier.model.numbers import find_number_tokens
    from toy.transplant import source_number_rows, transplant_rows

    run_dir, src_tok = source_folder(tmp_path, arch, width=16)
    assert src_tok.convert_tokens_to_ids("37") != 37 + 4  # ids are shuffled
    rows, info = source_number_rows(run_dir, p=101)
    assert rows.shape == (101, 16) and info["source_numbers"] == 101
    model, tok = build_adder(AdderConfig(max_number=100, n_layer=1, d_model=16, n_head=2))
    numbers = find_number_tokens(tok, 100)
    ids = transplant_rows(model, numbers, rows)
    W = model.get_input_embeddings().weight
    for n in (0, 7, 37, 100):
        row = W[tok.convert_tokens_to_ids(str(n))]
        assert row[:3].tolist() == [n, n * n, 1.0] and not row[3:].any()
    assert torch.equal(model.get_output_embeddings().weight[ids], W[ids])  # tied unembedding
    untouched = tok.convert_tokens_to_ids("Answer")
    assert W[untouched, 1] != float(untouched) ** 2


def test_wider_source_is_projected_and_matched(tmp_path):
    from llm_fourier.model.numbers import find_number_tokens
    from toy.transplant import source_number_rows, transplant_rows

    run_dir, _ = source_folder(tmp_path, "gpt2", width=40)
    rows, _ = source_number_rows(run_dir, p=101)
    model, tok = build_adder(AdderConfig(max_number=100, n_layer=1, d_model=16, n_head=2))
    transplant_rows(model, find_number_tokens(tok, 100), project_rows(rows, 16, "pca"))
    W = model.get_input_embeddings().weight.detach().double().numpy()
    got = W[[tok.convert_tokens_to_ids(str(n)) for n in range(101)]]
    # the source spans 3 directions: PCA keeps them all, so distances between numbers stay
    d_src = np.linalg.norm(rows[:, None] - rows[None], axis=-1)
    d_got = np.linalg.norm(got[:, None] - got[None], axis=-1)
    assert np.allclose(d_src, d_got, rtol=1e-5, atol=1e-3)


def test_frozen_transplant_stays_bit_identical_through_training(tmp_path):
    from llm_fourier.analyses.finetuning import FinetuneConfig, FineTuner
    from llm_fourier.model.loading import load_model
    from llm_fourier.model.numbers import find_number_tokens
    from llm_fourier.model.tasks import make_task
    from toy.transplant import transplant_rows

    task = make_task("+", 10, ordered=True, seed=0)
    results = {}
    for frozen in (True, False):
        model, tok = build_adder(AdderConfig(max_number=20, n_layer=1, d_model=16, n_head=2))
        numbers = find_number_tokens(tok, 20)
        rows = synthetic_embeddings(numbers.p, 16, n_low=2, periods=(2, 5), norm=1.0)
        ids = transplant_rows(model, numbers, rows)
        W = model.get_input_embeddings().weight
        before = W.detach().clone()
        cfg = FinetuneConfig(epochs=2, lr=1e-2, batch_size=16, weight_decay=0.1)
        FineTuner(load_model(model, tok), task, numbers, tmp_path / str(frozen), cfg,
                  frozen_token_ids=ids if frozen else None, progress=False).train()
        results[frozen] = (torch.equal(W[ids], before[ids]),
                           torch.equal(W[ids], torch.as_tensor(rows, dtype=W.dtype)))
        others = np.setdiff1d(np.arange(W.shape[0]), ids)
        assert (W[others] != before[others]).any()
    assert results[True] == (True, True)
    assert results[False] == (False, False)


def test_transplant_command_resumes_a_killed_run_to_the_same_result(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import toy.transplant_cli as cli_module
    from llm_fourier.cli import main
    from llm_fourier.model.loading import load_model
    from llm_fourier.model.numbers import find_number_tokens, number_rows
    from llm_fourier.output.files import read_json

    def argv(out, *extra):
        return ["transplant", "--seeds", "0", "--max-operand", "8", "--layers", "1",
                "--d-model", "16", "--heads", "2", "--epochs", "2", "--batch-size", "16",
                "--lr", "3e-3", "--eval-every", "1", "--n-low", "2", "--tau", "3",
                "--out", str(out), *extra]

    assert main(argv(tmp_path / "a")) == 0
    real, trained = cli_module.FineTuner.train, []

    def killed(self, *args, **kw):  # the transplant arm dies after 3 steps
        trained.append(self.out.name)
        if self.out.name == "transplant":
            real(self, *args, **{**kw, "stop_after_steps": 3})
            raise KeyboardInterrupt
        return real(self, *args, **kw)

    monkeypatch.setattr(cli_module.FineTuner, "train", killed)
    assert main(argv(tmp_path / "b")) == 130
    assert main(argv(tmp_path / "b", "--lr", "1e-3")) == 2  # other settings: refused
    monkeypatch.setattr(cli_module.FineTuner, "train",
                        lambda self, *a, **kw: trained.append(self.out.name)
                        or real(self, *a, **kw))
    assert main(argv(tmp_path / "b")) == 0
    assert trained == ["scratch", "transplant", "transplant"]  # finished arm skipped

    a, b = read_json(tmp_path / "a" / "results.json"), read_json(tmp_path / "b" / "results.json")
    assert a["arms"] == b["arms"]
    for arm in ("scratch", "transplant"):
        wa = load_file(tmp_path / "a" / "seed0" / arm / "model" / "model.safetensors")
        wb = load_file(tmp_path / "b" / "seed0" / arm / "model" / "model.safetensors")
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    for name in ("runs.csv", "lens.csv", "ablation.csv", "accuracy.png",
                 "error_histograms.png", "embedding_spectra.png", "heatmap_scratch_mlp.png"):
        assert (tmp_path / "b" / name).exists(), name

    # the frozen transplanted rows are the synthetic source, the scratch rows are not
    source = synthetic_embeddings(17, 16, "fourier", n_low=2, norm=1.0, seed=0)
    for arm, same in (("transplant", True), ("scratch", False)):
        lm = load_model(tmp_path / "b" / "seed0" / arm / "model")
        rows = number_rows(lm.embedding(), find_number_tokens(lm.tokenizer, 16))
        assert torch.equal(rows, torch.as_tensor(source, dtype=torch.float32)) is same
    runs = {r["arm"]: r for arm in b["arms"].values() for r in arm["runs"]}
    abl = b["arms"]["transplant"]["summary"]["ablation_accuracy_mean"]
    assert abl["none"] == runs["transplant"]["test_accuracy"]  # same evaluate, same split
    assert set(abl) == {"none", "attn+MLP low removed", "attn low removed", "MLP low removed",
                        "attn+MLP high removed", "attn high removed", "MLP high removed"}


def test_error_structure_shares():
    from toy.transplant_report import error_structure

    hist = {"1": 3, "-1": 2, "2": 1, "10": 3, "-20": 1, "7": 2}  # JSON keys are strings
    got = error_structure(hist)
    assert got == {"numeric_errors": 12, "off_by_1": 5 / 12, "within_2": 6 / 12,
                   "off_by_10s": 4 / 12}
    assert error_structure({})["off_by_1"] is None

"""Fine-tuning: answer-token loss, gradient accumulation, exact resume after a kill, and a
result folder that loads back through ``load_model`` and scores as reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_fourier.analyses.finetuning import (
    FinetuneConfig,
    FineTuner,
    answer_batch,
    answer_loss,
    latest_checkpoint,
)
from llm_fourier.cli import main
from llm_fourier.errors import UserError
from llm_fourier.model.loading import load_model
from llm_fourier.model.numbers import find_number_tokens
from llm_fourier.model.tasks import make_task
from llm_fourier.output.files import read_json
from tests.tiny import save_tiny, tiny_lm

MAX_NUMBER = 30


def tiny_task(**kw):
    return make_task("+", 12, ordered=True, limit=60, seed=1, **kw)


def tiny(seed: int = 0):
    return tiny_lm("gpt2", max_number=MAX_NUMBER, seed=seed)


def train(model, tok, task, numbers, out, cfg, resume=False, **kw):
    lm = load_model(model, tok)
    return FineTuner(lm, task, numbers, out, cfg).train(resume=resume, **kw)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_answer_loss_is_cross_entropy_of_the_answer_token_at_the_last_position():
    model, tok = tiny()
    task = tiny_task()
    numbers = find_number_tokens(tok, MAX_NUMBER)
    batch = answer_batch(tok, task.train[:6], numbers)
    assert batch["input_ids"][:, -1].tolist() == [tok.convert_tokens_to_ids(":")] * 6
    assert [tok.decode([i]) for i in batch["labels"]] == [str(e.answer) for e in task.train[:6]]
    with torch.no_grad():
        loss = answer_loss(model, batch).item()
        # each prompt alone, unpadded: the loss must not depend on the batch's padding
        logits = np.stack([
            model(**tok(e.prompt, return_tensors="pt")).logits[0, -1].double().numpy()
            for e in task.train[:6]])
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    manual = -logp[np.arange(6), batch["labels"].numpy()].mean()
    assert loss == pytest.approx(manual, rel=1e-5)


def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    # one template: every prompt has the same length, so padding cannot differ
    task = tiny_task(templates=["Add together {a} and {b}."])
    numbers = find_number_tokens(tiny()[1], MAX_NUMBER)
    finals = []
    for bs, accum in ((8, 1), (4, 2)):
        model, tok = tiny()
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        cfg = FinetuneConfig(epochs=1, lr=1e-2, batch_size=bs, grad_accum=accum, max_grad_norm=None)
        state = train(model, tok, task, numbers, tmp_path / f"bs{bs}", cfg)
        assert state["step"] == 6  # ceil(48 / 8) optimizer steps either way
        finals.append(params(model))
    # Adam turns float noise in the (exactly zero) key-bias gradients into ~1e-5 steps
    for k in finals[0]:
        assert torch.allclose(finals[0][k], finals[1][k], atol=1e-4), k
    diff = finals[0]["transformer.h.0.mlp.c_fc.weight"] - params(tiny()[0])[
        "transformer.h.0.mlp.c_fc.weight"]
    assert diff.abs().max() > 1e-3  # and training did move the weights


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path):
    task = tiny_task()
    # dropout stays on (GPT-2 default 0.1): the RNG state must be restored too
    cfg = FinetuneConfig(epochs=2, lr=3e-3, batch_size=8, grad_accum=2, weight_decay=0.1,
                      warmup_steps=2, save_every=2)
    model, tok = tiny()
    numbers = find_number_tokens(tok, MAX_NUMBER)
    full = train(model, tok, task, numbers, tmp_path / "full", cfg)
    reference = params(model)

    model, tok = tiny()
    stopped = train(model, tok, task, numbers, tmp_path / "killed", cfg,
                    stop_after_steps=5)  # mid-epoch (3 steps per epoch), off the save grid
    assert not stopped["finished"] and stopped["step"] == 5
    assert latest_checkpoint(tmp_path / "killed").name == "step-00000005"

    model, tok = tiny(seed=123)  # a fresh process: other init, the checkpoint wins
    resumed = train(model, tok, task, numbers, tmp_path / "killed", cfg,
                    resume=True)
    assert resumed["finished"] and resumed["step"] == full["step"] == 6
    for k, v in reference.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert resumed["history"] == full["history"]
    assert resumed["test"] == full["test"]


def test_checkpoints_hold_no_pickle_that_runs(tmp_path):
    """A crafted file in a checkpoint is refused with one sentence; its code never runs."""
    task = tiny_task()
    cfg = FinetuneConfig(epochs=1, lr=3e-3, batch_size=8)
    model, tok = tiny()
    numbers = find_number_tokens(tok, MAX_NUMBER)
    train(model, tok, task, numbers, tmp_path / "run", cfg, stop_after_steps=2)
    ckpt = latest_checkpoint(tmp_path / "run")
    planted = sorted(p.name for p in ckpt.iterdir() if p.suffix in (".bin", ".pkl", ".pt"))
    assert planted, "the checkpoint should hold optimizer/scheduler/RNG state files"
    for name in planted:
        original = (ckpt / name).read_bytes()
        marker = tmp_path / f"pwned-{name}"
        (ckpt / name).write_bytes(evil_pickle(marker))
        with pytest.raises(UserError, match="cannot be read.*--restart"):
            train(tiny()[0], tok, task, numbers, tmp_path / "run", cfg, resume=True)
        assert not marker.exists(), f"code in {name} ran"
        (ckpt / name).write_bytes(original)


def evil_pickle(marker) -> bytes:
    """A pickle that, if unpickled with a full unpickler, creates ``marker``."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps(Evil())


def test_finetune_command_writes_a_model_folder_that_loads_back(tmp_path, capsys):
    from llm_fourier.analyses.ablation import evaluate

    src = save_tiny(*tiny(), tmp_path / "src")
    out = tmp_path / "run"
    argv = ["finetune", "--model", str(src), "--max-operand", "12", "--ordered",
            "--max-pairs", "80", "--epochs", "3", "--lr", "1e-2", "--batch-size", "16",
            "--out", str(out)]
    assert main(argv + ["--stop-after", "4"]) == 0
    assert "run the same command again" in capsys.readouterr().out
    assert main([*argv[:-4], "--lr", "5e-3", *argv[-2:]]) == 2  # other settings: refused
    assert "lr 0.01 -> 0.005" in capsys.readouterr().err
    assert main(argv) == 0  # the same command resumes
    results = read_json(out / "results.json")
    assert results["finished"] and results["steps"] == 12
    assert [h["epoch"] for h in results["history"]] == [1, 2, 3]
    assert results["history"][-1]["loss"] < results["history"][0]["loss"]  # it learns
    for name in ("history.csv", "history.png", "predictions.csv", "test_errors.png"):
        assert (out / name).exists()

    lm = load_model(out / "model")
    assert lm.roles.blocks == "transformer.h" and lm.n_layers == 2
    task = make_task("+", 12, ordered=True, limit=80)
    numbers = find_number_tokens(lm.tokenizer, 24)
    scored = evaluate(lm, task.test, numbers)
    assert scored["accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert scored["loss"] == pytest.approx(results["test"]["loss"], rel=1e-5)


def test_bad_settings_are_user_errors(tmp_path):
    model, tok = tiny()
    numbers = find_number_tokens(tok, MAX_NUMBER)
    with pytest.raises(UserError, match="mixed precision"):
        train(model, tok, tiny_task(), numbers, tmp_path, FinetuneConfig(mixed_precision="fp8"))
    with pytest.raises(UserError, match="batch-size"):
        train(model, tok, tiny_task(), numbers, tmp_path, FinetuneConfig(batch_size=0))

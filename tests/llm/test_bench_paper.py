"""scripts/bench_paper.py --small: every stage of the paper's pipeline runs and is counted."""

import importlib.util
import json
from pathlib import Path

import pytest

from llm_fourier.model.tasks import make_task
from llm_fourier.model.tokenizers import word_level_tokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_paper.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_paper", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpt2_parameters(vocab: int, d: int, layers: int, n_positions: int = 1024) -> int:
    """GPT-2 parameter count written out (tied unembedding counted once)."""
    per_layer = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (4 * d * d + 4 * d) \
        + (4 * d * d + d)
    return vocab * d + n_positions * d + layers * per_layer + 2 * d


def test_small_run_prints_every_stage_and_a_json_summary(capsys):
    summary = load_script().main(["--small", "--limit", "40", "--batch-size", "16"])
    out = capsys.readouterr().out
    rows = ["none", "attn+MLP low removed", "attn low removed", "MLP low removed",
            "attn+MLP high removed", "attn high removed", "MLP high removed"]
    for stage in ["build model", "lens + spectra", "Table 1 (7 rows)"]:
        assert stage in out and stage in summary["stages_s"]
    assert "word-level" in out and "pipeline after load" in out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(summary))
    assert list(summary["accuracy"]) == rows
    assert summary["prompts"] == 40 and summary["readings"] == 8
    assert summary["lens_layers"] == {"attn": 2, "mlp": 2, "block": 2}
    # independent counts: parameters of the shape; padded tokens of batches of 16 prompts
    # sorted by length (as the engine batches); the table's prefix pass and 7 one-token rows
    tok = word_level_tokenizer(520)
    assert summary["parameters"] == gpt2_parameters(len(tok), 64, 2)
    lengths = sorted(len(tok(e.prompt)["input_ids"]) for e in make_task("+", 260).test[:40])
    tokens = sum(len(part) * max(part) for part in (lengths[i:i + 16] for i in range(0, 40, 16)))
    assert summary["tokens_per_pass"] == tokens
    assert summary["tokens_run"] == tokens + (tokens - 40) + 7 * 40
    assert summary["flops"] == 2 * summary["parameters"] * summary["tokens_run"]
    assert summary["prompts_per_s"] == pytest.approx(
        40 * 8 / summary["pipeline_after_load_s"], rel=0.01)
    assert summary["fraction_of_peak"] is None and summary["peak_rss_gib"] > 0  # CPU: no peak

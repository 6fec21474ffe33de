"""hidden keeps its states and probe --keep-rows its lens rows; lf.load_states reads them back
equal to a fresh collect (float32 exactly, float16 to its rounding)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import llm_fourier as lf
from llm_fourier.analyses.hidden_states import collect
from llm_fourier.cli import main
from llm_fourier.model.tasks import make_task

SMALL = ["--max-operand", "19", "--bootstrap", "0", "--permutations", "0", "--refits", "0",
         "--quiet"]


def _fresh(folder, token, n, layers=None):
    lm = lf.load_model(str(folder))
    examples = make_task("+", 19).train[:n]
    return collect(lm, examples, token, layers=layers), examples, lm


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_hidden_keeps_its_states_and_they_load_back(tiny_dir, tmp_path, dtype):
    folder = tiny_dir("llama", split_digits=True)
    out = tmp_path / "run"
    assert main(["hidden", "--model", str(folder), *SMALL, "--n-probe", "40", "--layers", "0",
                 "1", "--periods", "2", "--helix-periods", "10", "--pca-dim", "4",
                 "--mod-pca-dim", "4", "--folds", "2", "--digit-kinds", "--token", "b",
                 "--no-random-baseline", "--states-dtype", dtype, "--out", str(out)]) == 0
    st = lf.load_states(out)
    hs, examples, lm = _fresh(folder, "b", 40, [0, 1])
    assert st.roles == ["block", "attn", "mlp"] and st.layers == [0, 1] and len(st) == 40
    tol = 0 if dtype == "float32" else 2e-3
    for role in st.roles:
        assert st.arrays[role].dtype == np.float32
        np.testing.assert_allclose(st.arrays[role], hs.states[role], rtol=tol, atol=tol)
    np.testing.assert_array_equal(st.at("mlp", 1), st.arrays["mlp"][:, 1])
    assert st.prompts == [e.prompt for e in examples]
    assert list(st.b) == [e.b for e in examples] and list(st.answers) == [e.answer for e in
                                                                          examples]
    # the token read is b's last digit (a digit tokenizer), by id and by text
    assert [lm.tokenizer.convert_ids_to_tokens(int(i)) for i in st.token_ids] == st.tokens
    assert [t.lstrip("Ġ▁ ") for t in st.tokens] == [str(e.b)[-1] for e in examples]
    index = json.loads((out / "states" / "index.json").read_text())
    assert index["dtypes"] == {r: dtype for r in st.roles} and index["read_at"] == "b"
    assert (out / "states" / "index.csv").read_text().splitlines()[0] == \
        "prompt,a,b,answer,token_id,token"
    assert not (out / ".partial").exists()


def test_no_keep_states_and_probe_keep_rows(tiny_dir, tmp_path):
    folder = tiny_dir("gpt2")
    out = tmp_path / "hidden"
    assert main(["hidden", "--model", str(folder), *SMALL, "--n-probe", "30", "--layers", "0",
                 "--periods", "2", "--helix-periods", "10", "--pca-dim", "4", "--mod-pca-dim",
                 "4", "--folds", "2", "--digit-kinds", "--no-random-baseline",
                 "--no-keep-states", "--out", str(out)]) == 0
    assert not (out / "states").exists()
    with pytest.raises(lf.UserError, match="no kept states"):
        lf.load_states(out)
    out = tmp_path / "probe"
    assert main(["probe", "--model", str(folder), "--max-operand", "19", "--limit", "12",
                 "--tau", "3", "--keep-rows", "--quiet", "--out", str(out)]) == 0
    st = lf.load_states(out / "states")  # the folder itself works too
    task = make_task("+", 19)
    lm = lf.load_model(str(folder))
    hs = collect(lm, task.test[:12], "last")
    assert st.meta["source"] == "probe" and st.meta["read_at"] == "last"
    assert st.layers == list(range(lm.n_layers))
    for role in ("block", "attn", "mlp"):  # float16 of the rows the lens reads
        np.testing.assert_allclose(st.arrays[role], hs.states[role], rtol=2e-3, atol=2e-3)
    # a probe of one's own: scikit-learn on the kept rows (12 rows in 32 dimensions: exact)
    from sklearn.linear_model import LinearRegression
    fit = LinearRegression().fit(st.at("block", 1), st.answers)
    assert fit.score(st.at("block", 1), st.answers) > 0.999


def test_hidden_tokenizes_its_probed_prompts_once(tiny_dir, tmp_path, monkeypatch):
    """The states, the kept index, the token-identity check and the random-init baseline
    all use the one tokenization of the probed prompts (``HiddenStates.ids`` / ``read_ids``)."""
    import llm_fourier.analyses.hidden_states as hidden_states

    real, calls = hidden_states.token_ids_at, []
    monkeypatch.setattr(hidden_states, "token_ids_at",
                        lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    out = tmp_path / "run"
    assert main(["hidden", "--model", str(tiny_dir("llama", split_digits=True)), *SMALL,
                 "--n-probe", "30", "--layers", "0", "--periods", "2", "--helix-periods", "10",
                 "--pca-dim", "4", "--mod-pca-dim", "4", "--folds", "2", "--token", "a",
                 "--out", str(out)]) == 0
    assert calls == [30]
    results = json.loads((out / "results.json").read_text())
    assert results["probes"][0]["random_init"] is not None  # the baseline ran on the same ids
    st = lf.load_states(out)
    assert [t.lstrip("Ġ▁ ") for t in st.tokens] == [str(a)[-1] for a in st.a]


@pytest.mark.parametrize("arch, split", [("gpt2", False), ("llama", True)])
def test_probe_keeps_the_rows_of_its_own_lens_forward(tiny_dir, tmp_path, monkeypatch, arch,
                                                       split):
    """--keep-rows takes the rows from the lens's forward (number lens and digit lens): no
    collect, one engine pass, and the kept rows equal a separate collect (float32)."""
    import llm_fourier.commands.probe as probe_cmd
    from llm_fourier.model.engine import Engine

    folder = tiny_dir(arch, split_digits=split)
    real, passes = Engine.run, []
    monkeypatch.setattr(Engine, "run", lambda self, *a, **k: passes.append(1) or
                        real(self, *a, **k))
    out = tmp_path / "probe"
    assert not hasattr(probe_cmd, "collect")
    assert main(["probe", "--model", str(folder), "--max-operand", "19", "--limit", "12",
                 "--tau", "3", "--keep-rows", "--states-dtype", "float32", "--quiet",
                 "--out", str(out)]) == 0
    assert len(passes) == 1
    st = lf.load_states(out)
    lm = lf.load_model(str(folder))
    hs = collect(lm, make_task("+", 19).test[:12], "last")
    assert st.roles == ["block", "attn", "mlp"]
    for role in st.roles:  # the lens reads the last token on the cached prefix: float noise
        np.testing.assert_allclose(st.arrays[role], hs.states[role], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(st.token_ids, hs.read_ids)

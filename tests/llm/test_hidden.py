"""Hidden-state probes end to end on tiny saved models (digit-splitting and single-token)."""

import json

import numpy as np
import pytest
import torch

from llm_fourier.analyses.answers import greedy_answers
from llm_fourier.analyses.hidden_ablation import (
    logit_filter,
    probe_ablation,
    probe_filters,
    random_filters,
)
from llm_fourier.analyses.hidden_states import (
    HiddenStates,
    collect,
    flat_row,
    frequency_control,
    load_scalar,
    probe_layers,
    random_copy,
    token_identity,
    token_ids_at,
)
from llm_fourier.cli import main
from llm_fourier.errors import UserError
from llm_fourier.model.hooks import capture, edit
from llm_fourier.model.loading import load_model
from llm_fourier.model.number_format import number_format
from llm_fourier.model.numbers import find_number_tokens
from llm_fourier.model.tasks import Example, make_task
from probes import FourierBasis
from probes.stats import StatsConfig
from tests.llm.stores import counting, interrupted


@pytest.fixture(scope="module")
def digit_lm(tiny_dir):
    return load_model(tiny_dir("gpt2", split_digits=True, seed=1))


@pytest.fixture(scope="module")
def digit_states(digit_lm):
    task = make_task(max_operand=39, seed=0)
    return collect(digit_lm, task.train[:240], token="a", roles=("block", "mlp"),
                   progress=False), task


def test_operand_tokens_are_found_through_offsets(digit_lm, number_tokenizer):
    ex = Example(25, 137, 162, "Put together 25 and 137. Answer: ")
    tok = digit_lm.tokenizer
    cut = {t: tok.convert_ids_to_tokens(token_ids_at(tok, [ex], t)[0]) for t in ("a", "b")}
    assert cut["a"] == ["Put", "together", "2", "5"]
    assert cut["b"] == ["Put", "together", "2", "5", "and", "1", "3", "7"]
    assert token_ids_at(tok, [ex], "last")[0] == tok(ex.prompt)["input_ids"]
    whole = number_tokenizer.convert_ids_to_tokens(token_ids_at(number_tokenizer, [ex], "a")[0])
    assert whole == ["Put", "together", "25"]
    # k-shot prompts: the query's operands are the last two numbers
    shot = Example(3, 4, 7, "Total of 1 and 2. Answer: 3\nTotal of 3 and 4. Answer: ")
    assert tok.convert_ids_to_tokens(token_ids_at(tok, [shot], "a")[0])[-1] == "3"
    assert len(token_ids_at(tok, [shot], "a")[0]) == len(tok("Total of 1 and 2. Answer: 3\n"
                                                              "Total of 3")["input_ids"])
    with pytest.raises(UserError, match="last two numbers"):
        token_ids_at(tok, [Example(9, 9, 18, "Add 1 and 2. Answer: ")], "a")


def test_collect_matches_a_plain_forward(digit_lm, digit_states):
    hs, task = digit_states
    assert hs.states["block"].shape == (240, 2, 32)
    tok, model = digit_lm.tokenizer, digit_lm.model
    for i in (0, 7, 123):  # independent: full prompt, hidden states at the operand position
        ex = task.train[i]
        n_cut = len(token_ids_at(tok, [ex], "a")[0])
        with torch.no_grad():
            out = model(**tok(ex.prompt, return_tensors="pt"), output_hidden_states=True)
        torch.testing.assert_close(torch.from_numpy(hs.at("block", 0)[i]),
                                   out.hidden_states[1][0, n_cut - 1], atol=1e-5, rtol=1e-4)
    last = collect(digit_lm, task.train[:5], token="last", roles=("block",), layers=[1],
                   progress=False)
    with torch.no_grad():
        ref = model(**tok(task.train[3].prompt, return_tensors="pt")).logits
    normed = digit_lm.final_norm(torch.from_numpy(last.at("block", 1)[3]))
    torch.testing.assert_close(model.lm_head(normed), ref[0, -1], atol=1e-4, rtol=1e-4)


def test_probes_baselines_and_random_copy(digit_lm, digit_states):
    hs, _ = digit_states
    res = probe_layers(hs, "a", [10], [10], pca_dim=8, mod_pca_dim=8, progress=False)
    assert set(res) == {("block", 0), ("block", 1), ("mlp", 0), ("mlp", 1)}
    for r in res.values():  # shuffled labels sit at chance
        assert abs(r["mod"][10]["kappa_shuffled"]) < 0.2
        assert r["helix"]["r2_test_shuffled"] < 0.2
    # the last token of a is its last digit: even a random model's state there gives n mod 10
    rand = random_copy(digit_lm, seed=5)
    p0 = [p.detach().clone() for p in rand.model.parameters()]
    assert not torch.equal(p0[0], next(digit_lm.model.parameters()))
    assert torch.equal(p0[0], next(random_copy(digit_lm, seed=5).model.parameters()))
    rhs = collect(rand, hs.examples, token="a", roles=("block",), layers=[0], progress=False)
    rres = probe_layers(rhs, "a", [10, 3], [10], pca_dim=8, mod_pca_dim=32, progress=False)
    assert rres[("block", 0)]["mod"][10]["kappa"] > 0.7  # chance: 0
    assert rres[("block", 0)]["mod"][3]["kappa"] < 0.2  # the last digit does not give n mod 3


def test_probe_direction_ablation_removes_the_fitted_subspace(digit_lm, digit_states):
    hs, task = digit_states
    res = probe_layers(hs, "a", [10], [5, 10], pca_dim=8, mod_pca_dim=8, progress=False,
                       shuffled=False)
    fits = {k: v["fit"] for k, v in res.items()}
    filters = probe_filters(fits, [10])
    f = filters[("mlp", 1)]
    assert f.rank == 2 and np.allclose(f.R.T @ f.R, np.eye(2), atol=1e-8)
    assert random_filters(filters)[("mlp", 1)].rank == 2
    with edit(digit_lm, {("mlp", 1): f.apply}, positions="all"):
        with capture(digit_lm, ("mlp",), [1], positions="last") as cap:
            ids = torch.tensor([token_ids_at(digit_lm.tokenizer, [task.test[0]], "a")[0]])
            digit_lm.model(input_ids=ids)
        edited = cap.get("mlp", 1).numpy()
    assert np.abs(edited @ f.R).max() < 1e-5
    with capture(digit_lm, ("mlp",), [1]) as cap:
        digit_lm.model(input_ids=ids)
    assert np.abs(cap.get("mlp", 1).numpy() @ f.R).max() > 1e-3  # it did change something
    rows = probe_ablation(digit_lm, task.test[:6], fits, [10], groups=("MLP",),
                          progress=False)
    assert [r["row"] for r in rows] == ["none", "MLP probe", "MLP random"]
    assert all(r["method"] == "greedy generation" and r["n"] == 6 for r in rows)
    with pytest.raises(UserError, match="attn"):
        probe_ablation(digit_lm, task.test[:2], fits, [10], groups=("attn",), progress=False)


def test_greedy_generation_matches_a_loop_of_generate(digit_lm):
    tok = digit_lm.tokenizer
    fmt = number_format(tok, 99)
    assert fmt.parse(tok.convert_tokens_to_ids(["1", "0", "8", ".", "3"])) == 108
    assert fmt.parse(tok.convert_tokens_to_ids(["Answer", "1"])) == -1
    examples = make_task(max_operand=20, seed=3).test[:5]
    preds = greedy_answers(digit_lm, number_format(tok, max(e.answer for e in examples)),
                           examples, progress=False)
    cap = max(len(str(e.answer)) for e in examples) + 1  # one token per digit, plus one
    for ex, pred in zip(examples, preds):
        ids = tok(ex.prompt, return_tensors="pt")["input_ids"]
        out = digit_lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=cap, do_sample=False,
                                      pad_token_id=tok.pad_token_id)
        assert pred == fmt.parse(out[0, ids.shape[1]:].tolist())


def test_single_token_numbers_cross_check_with_logit_filter(tiny_dir):
    lm = load_model(tiny_dir("gpt2"))
    task = make_task(max_operand=30, seed=0)
    numbers = find_number_tokens(lm.tokenizer, max_number=task.max_answer)
    f = logit_filter(lm, numbers, [10, 5])
    basis = FourierBasis(numbers.p)
    W = lm.unembedding()[torch.as_tensor(numbers.token_ids)].double().numpy()
    x = f.apply(np.random.default_rng(0).standard_normal((4, 32)))
    rows = basis.rows_of([basis.k_of_period(10), basis.k_of_period(5)])
    assert np.abs(basis.matrix[rows] @ W @ x.T).max() < 1e-8
    hs = collect(lm, task.train[:150], token="last", roles=("attn", "mlp"), progress=False)
    res = probe_layers(hs, "answer", [10], [10], pca_dim=8, mod_pca_dim=8, progress=False,
                       shuffled=False)
    rows = probe_ablation(lm, task.test[:8], {k: v["fit"] for k, v in res.items()}, [10],
                          groups=("attn+MLP",), numbers=numbers, positions="last",
                          progress=False)
    assert [r["kind"] for r in rows] == ["none", "probe", "random", "logit"]
    assert all(r["method"] == "next token" for r in rows)


def test_frequency_control_reads_files_and_finds_the_control_spike(tmp_path):
    n = np.arange(201)
    counts = 1000.0 / (1 + n) + np.where(n % 10 == 0, 100.0, 0.0)  # round numbers are frequent
    np.save(tmp_path / "c.npy", counts)
    (tmp_path / "c.json").write_text(json.dumps({str(i): float(v) for i, v in enumerate(counts)}))
    (tmp_path / "c.csv").write_text("number,count\n" + "".join(
        f"{i},{float(v)!r}\n" for i, v in enumerate(counts)))
    for name in ("c.npy", "c.json", "c.csv"):
        np.testing.assert_allclose(load_scalar(tmp_path / name, 201), counts)
    emb = np.random.default_rng(0).standard_normal((201, 8))
    emb[:, 0] += 5 * np.cos(2 * np.pi * n / 10)
    rep = frequency_control(counts, emb)
    assert {10.0, 5.0, 2.5} <= {o["period"] for o in rep["control"]["outliers"]}
    assert 10.0 in rep["shared_outlier_periods"]
    with pytest.raises(UserError, match="one value for each number"):
        load_scalar(tmp_path / "c.npy", 500)
    with pytest.raises(UserError, match="does not exist"):
        load_scalar(tmp_path / "missing.csv")
    # values are placed by the number they name, whatever the order of the rows
    (tmp_path / "shuffled.csv").write_text("number,count\n2,20\n0,0\n1,10\n")
    np.testing.assert_allclose(load_scalar(tmp_path / "shuffled.csv"), [0, 10, 20])
    (tmp_path / "gap.json").write_text(json.dumps({"0": 1.0, "1": 2.0, "3": 4.0}))
    with pytest.raises(UserError, match="gaps"):
        load_scalar(tmp_path / "gap.json")


def test_hidden_command_end_to_end_and_resume(tiny_dir, tmp_path, monkeypatch, capsys):
    np.save(tmp_path / "counts.npy", 1.0 / (1 + np.arange(100)))
    out = tmp_path / "run"
    argv = ["hidden", "--model", str(tiny_dir("gpt2", split_digits=True, seed=1)),
            "--max-operand", "29", "--n-probe", "150", "--n-eval", "6", "--roles", "block",
            "mlp", "--periods", "2", "10", "--helix-periods", "10", "--pca-dim", "8",
            "--mod-pca-dim", "32", "--folds", "3", "--ablate-periods", "10",
            "--ablate-groups", "MLP", "--control", str(tmp_path / "counts.npy"), "--quiet",
            "--bootstrap", "100", "--permutations", "100", "--refits", "2",
            "--out", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["target"] == "a" and len(res["probes"]) == 4
    p = res["probes"][0]
    assert {"mod", "helix", "random_init", "spectrum"} <= set(p)
    assert set(p["mod"]["10"]) >= {"kappa", "accuracy", "kappa_shuffled"}
    assert p["random_init"]["mod"]["10"]["kappa"] > 0.7  # last digit, as above (chance: 0)
    # one token per digit: the logit row filters the digit readout W_U[0..9]
    assert [r["row"] for r in res["ablation"]] == ["none", "MLP probe", "MLP random",
                                                   "MLP logit"]
    assert res["ablation"][-1]["filter"] == "logit T=10"
    assert res["readout"]["readout"] == "digit" and res["numbers"]["family"] == "digits"
    assert res["frequency_control"]["beside_what"].startswith("mean block state")
    for name in ("probes.csv", "ablation.csv", "kappa_by_layer.png", "r2_by_layer.png",
                 "digit_probes.csv", "digit_probes.png"):
        assert (out / name).stat().st_size > 0
    assert {(r["place"], r["kind"]) for r in res["digit_probes"]} == {
        (p, k) for p in (0, 1) for k in ("circular", "linear", "value")}
    assert "[" not in (out / "ablation.csv").read_text()  # lists flattened, not reprs
    assert "kappa_mod10" in (out / "probes.csv").read_text().splitlines()[0]
    # a run killed during the ablations resumes: states and finished units are reused
    import llm_fourier.commands.hidden_units as units
    import llm_fourier.commands.kept as kept

    killed = argv[:-1] + [str(tmp_path / "killed")]
    real, seen = units.probe_ablation, []
    monkeypatch.setattr(units, "probe_ablation", interrupted(real, after=1))
    assert main(killed) == 130
    monkeypatch.setattr(kept, "collect", lambda *a, **k: pytest.fail("states not reused"))
    monkeypatch.setattr(units, "probe_ablation", counting(real, seen))
    assert main(killed) == 0
    assert seen == ["MLP probe/0", "MLP random/0", "MLP logit/0"]  # "none" was kept
    again = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert again["ablation"] == res["ablation"] and again["probes"] == res["probes"]
    monkeypatch.undo()
    capsys.readouterr()
    assert main(argv[:-2] + ["--layers", "7", "--out", str(tmp_path / "bad")]) == 2
    assert "layer" in capsys.readouterr().err


def test_helix_planted_in_the_embeddings_is_found_through_the_model(tiny_dir):
    """W_E rows of the number tokens carry a period-10 circle (known phase): the probes on
    the residual after layer 0 find it, the random-init copy does not, and projecting out
    the fitted directions removes n mod 10 from the states."""
    lm = load_model(tiny_dir("gpt2"))
    numbers = find_number_tokens(lm.tokenizer, max_number=99)
    phase = 0.9
    n = np.arange(100)
    with torch.no_grad():
        W = lm.model.get_input_embeddings().weight
        ids = torch.as_tensor(numbers.token_ids)
        W[ids, 0] = torch.tensor(3 * np.cos(2 * np.pi * n / 10 + phase), dtype=W.dtype)
        W[ids, 1] = torch.tensor(3 * np.sin(2 * np.pi * n / 10 + phase), dtype=W.dtype)
    examples = make_task(max_operand=99, seed=0).train[:300]
    hs = collect(lm, examples, token="a", roles=("block",), layers=[0], progress=False)
    res = probe_layers(hs, "a", [10, 3], [10], pca_dim=8, mod_pca_dim=8, progress=False)
    r = res[("block", 0)]
    assert r["mod"][10]["kappa"] > 0.95 and abs(r["mod"][10]["kappa_shuffled"]) < 0.15
    assert r["mod"][3]["kappa"] < 0.3  # no period 3 was planted
    assert r["helix"]["r2_test"] > 0.5 and r["helix"]["r2_test_shuffled"] < 0.1
    circle = r["fit"].circle(10, np.eye(32)[0])
    assert abs((circle["phase"] - phase + np.pi) % (2 * np.pi) - np.pi) < 0.1
    assert circle["along_amplitude"] == pytest.approx(3, rel=0.1)
    # a random-init copy has no helix: held-out numbers are unpredictable
    rhs = collect(random_copy(lm, seed=3), examples, token="a", roles=("block",), layers=[0],
                  progress=False)
    rr = probe_layers(rhs, "a", [10], [10], pca_dim=8, mod_pca_dim=8, progress=False,
                      shuffled=False)[("block", 0)]
    assert abs(rr["mod"][10]["kappa"]) < 0.15 and rr["helix"]["r2_test"] < 0.1
    # the ablation filter removes n mod 10 (states re-collected under the edit)
    f = probe_filters({("block", 0): r["fit"]}, [10])[("block", 0)]
    with edit(lm, {("block", 0): f.apply}, positions="all"):
        ahs = collect(lm, examples, token="a", roles=("block",), layers=[0], progress=False)
    ar = probe_layers(ahs, "a", [10], [10], pca_dim=8, mod_pca_dim=8, progress=False,
                      shuffled=False)[("block", 0)]
    assert ar["mod"][10]["kappa"] < 0.3


def read_token_ids(tokenizer, examples, token: str) -> np.ndarray:
    """The id of the token read in each prompt: the last of the cut prompt."""
    return np.array([ids[-1] for ids in token_ids_at(tokenizer, examples, token)])


def test_token_identity_finds_the_digit_confound(digit_lm, number_tokenizer):
    task = make_task(max_operand=99, seed=0)
    examples = task.train[:400]
    a = np.array([e.a for e in examples])
    ids = read_token_ids(digit_lm.tokenizer, examples, "a")
    tok = digit_lm.tokenizer
    assert tok.convert_ids_to_tokens(int(ids[0])) == str(examples[0].a % 10)  # last digit
    res = token_identity(ids, a, [2, 3, 5, 10])
    for T in (2, 5, 10):  # the last digit is a mod 10: token identity tells all three
        assert res[T]["confounded"] and res[T]["function_of_token"]
        assert res[T]["token_accuracy"] == pytest.approx(1.0)
    assert not res[3]["confounded"] and res[3]["token_accuracy"] < 0.5  # the digit != a mod 3
    assert res[10]["n_token_ids"] == 10
    # a plain loop: the most common residue among other numbers with the same last digit
    T, hits = 3, 0
    for i, e in enumerate(examples):
        others = [f.a % T for f, t in zip(examples, ids) if t == ids[i] and f.a != e.a]
        hits += bool(others) and max(set(others), key=others.count) == e.a % T
    assert res[3]["token_accuracy"] == pytest.approx(hits / len(examples))
    # single-token numbers: no other number shares a's token, so nothing is confounded
    single = token_identity(read_token_ids(number_tokenizer, examples, "a"), a, [2, 10])
    assert not any(v["confounded"] for v in single.values())
    assert single[10]["token_accuracy"] == 0.0 and single[10]["function_of_token"]
    # the last prompt token (":") is the same for every prompt: it tells nothing
    last = token_identity(read_token_ids(tok, examples, "last"), a, [2, 10])
    assert not any(v["confounded"] for v in last.values()) and last[10]["n_token_ids"] == 1


def test_token_control_removes_the_digit_from_a_random_model(digit_lm, digit_states):
    hs, _ = digit_states
    rand = random_copy(digit_lm, seed=5)
    rhs = collect(rand, hs.examples, token="a", roles=("block",), layers=[0], progress=False)
    ids = read_token_ids(digit_lm.tokenizer, hs.examples, "a")
    np.testing.assert_array_equal(rhs.read_ids, ids)  # collect keeps the ids it read
    cheap = StatsConfig(n_boot=200, n_perm=200)
    res = probe_layers(rhs, "a", [10, 3], [10], pca_dim=8, mod_pca_dim=32, progress=False,
                       token_ids=ids, stats=cheap)[("block", 0)]
    assert res["mod"][10]["kappa"] > 0.7 and res["mod"][10]["kappa_p_value"] < 0.01
    ctl = res["control"]["mod"]
    assert ctl[10]["kappa_ci_low"] <= 0.05 and ctl[10]["kappa"] < 0.2  # the digit was all
    assert "fit" not in res["control"] and "kappa_shuffled" not in ctl[10]
    row = flat_row(res)
    for key in ("kappa_mod10", "kappa_mod10_ci_low", "kappa_mod10_ci_high",
                "kappa_mod10_p_value", "accuracy_mod10_ci_low", "ci_inflation_mod10",
                "kappa_mod10_shuffled", "r2_test_ci_low", "r2_test_p_value",
                "decode_accuracy_ci_high", "control_kappa_mod10", "control_kappa_mod10_ci_low",
                "control_r2_test"):
        assert key in row, key
    never = probe_layers(rhs, "a", [10], [10], pca_dim=8, mod_pca_dim=32, progress=False,
                         token_ids=ids, control="never", stats=cheap)
    assert "control" not in never[("block", 0)]
    with pytest.raises(UserError, match="token-control"):
        probe_layers(rhs, "a", [10], [10], token_ids=ids, control="maybe", progress=False)


def test_null_calibration_on_real_states_with_shuffled_targets(digit_lm):
    """States of a tiny random transformer on digit-splitting prompts (clustered by digits,
    strongly anisotropic) probed for targets permuted between numbers: no mod-T information,
    so the intervals must cover 0 (all but at most one of 12 probes)."""
    task = make_task(max_operand=59, seed=1)
    examples = task.train[:360]
    hs = collect(digit_lm, examples, token="last", roles=("block",), progress=False)
    answers = np.array([e.answer for e in examples])
    covered, kappas = [], []
    for seed in range(2):
        perm = np.random.default_rng(seed).permutation(answers.max() + 1)
        shuffled = HiddenStates(hs.states, hs.layers, [
            Example(e.a, e.b, int(perm[e.answer]), e.prompt) for e in examples], "last",
            hs.read_ids)
        res = probe_layers(shuffled, "answer", [2, 5, 10], [10], pca_dim=8, mod_pca_dim=16,
                           progress=False, shuffled=False, seed=seed,
                           stats=StatsConfig(n_boot=300, n_perm=0, seed=seed))
        for r in res.values():
            for m in r["mod"].values():
                covered.append(m["kappa_ci_low"] <= 0 <= m["kappa_ci_high"])
                kappas.append(m["kappa"])
    assert sum(covered) >= len(covered) - 1, (covered, kappas)
    assert abs(np.mean(kappas)) < 0.05


def test_hidden_reports_intervals_the_token_confound_and_a_corpus_control(tiny_dir, tmp_path):
    """A digit tokenizer read at operand a's last digit: a mod 10 is the token's identity
    (flagged, and probed again with it removed); every kappa carries an interval over numbers
    and a p-value; without --control, number counts in a text become the control."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("3 apples and 3 pears, 12 eggs; 40 and 3.\n7 7 7 12\n")
    out = tmp_path / "run"
    argv = ["hidden", "--model", str(tiny_dir("gpt2", split_digits=True, seed=1)),
            "--max-operand", "39", "--n-probe", "160", "--roles", "block", "--layers", "0",
            "--periods", "2", "10", "--helix-periods", "10", "--pca-dim", "8",
            "--mod-pca-dim", "16", "--folds", "4", "--digit-kinds", "--no-random-baseline",
            "--bootstrap", "200", "--permutations", "200", "--refits", "2",
            "--corpus", str(corpus), "--quiet", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["token_identity"]["10"]["confounded"] and res["token_identity"]["2"]["confounded"]
    probe = res["probes"][0]
    mod10 = probe["mod"]["10"]
    assert mod10["kappa_ci_low"] <= mod10["kappa"] <= mod10["kappa_ci_high"]
    assert 0 < mod10["kappa_p_value"] <= 1
    assert "control" in probe  # the same probes with the token-identity means removed
    assert probe["control"]["mod"]["10"]["kappa"] < mod10["kappa"]
    rows = (out / "probes.csv").read_text().splitlines()
    assert "kappa_mod10_ci_low" in rows[0] and "control_kappa_mod10" in rows[0]
    control = res["frequency_control"]
    assert control["source"] == f"number text counts in {corpus}"
    counts = {int(r.split(",")[0]): float(r.split(",")[1])
              for r in (out / "control_values.csv").read_text().splitlines()[1:]}
    assert (counts[3], counts[7], counts[12], counts[40], counts[5]) == (3, 3, 2, 1, 0)
    from llm_fourier.commands.base import JobView
    from llm_fourier.commands.hidden import COMMAND

    html = COMMAND.job_html(JobView("hidden", out, {}, res))
    assert "Token identity: at the a token, a mod 2, 10 is what the token itself says" in html

"""Issue 15 end to end: ``report`` runs ``probe``, ``ablate`` and ``hidden`` on a GPT-2-style
(single-token numbers), a digit-splitting (Llama-2 style) and a 3-digit-chunk (Llama-3 style)
tiny model; each job's numbers are checked against independent computations (full forwards
without a cache, numpy FFT, loops of ``model.generate``), and the page shows the digit views
for the digit model and the number views for the others, decided from results.json."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import llm_fourier.commands.probe as probe_cmd
from llm_fourier.cli import main
from llm_fourier.model.hooks import capture, edit
from llm_fourier.model.loading import load_model
from llm_fourier.model.number_format import number_format
from llm_fourier.model.tasks import make_task
from llm_fourier.output.files import read_json
from probes import FourierBasis, remove_components
from tests.llm.stores import interrupted

TASKS = {"add": {"op": "+", "max_operand": 60}, "big": {"op": "+", "max_operand": 700}}
LIMIT = 6
HIDDEN = {"n_probe": 90, "n_eval": 5, "roles": ["block"], "layers": [1], "periods": [10],
          "helix_periods": [10], "pca_dim": 8, "mod_pca_dim": 8, "folds": 2,
          "no_random_baseline": True, "digit_kinds": ["circular", "linear"],
          "intervene_place": 0, "quiet": True, "batch_size": 8}


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


@pytest.fixture(scope="module")
def report(tiny_dir, family_dir, tmp_path_factory):
    """One report over the three families; returns its folder."""
    root = tmp_path_factory.mktemp("families")
    models = {"gpt2": tiny_dir("gpt2"), "digits": family_dir("digits"),
              "chunks": family_dir("chunks")}
    quick = {"limit": LIMIT, "batch_size": 4}
    jobs = [("probe", ["gpt2", "digits"], "add", quick),
            ("ablate", ["gpt2", "digits"], "add", {**quick, "layers": "1"}),
            ("ablate", ["chunks"], "big", quick),
            ("hidden", ["gpt2", "digits"], "add", HIDDEN)]
    lines = ['title = "three tokenizer families"', "", "[models]"]
    lines += [f'{name} = "{path}"' for name, path in models.items()]
    lines += ["", "[tasks]"] + [f"{k} = {_toml(v)}" for k, v in TASKS.items()]
    for command, names, task, settings in jobs:
        lines += ["", "[[jobs]]", f'command = "{command}"', f"models = {_toml(names)}",
                  f'tasks = ["{task}"]', f"settings = {_toml(settings)}"]
    config = root / "families.toml"
    config.write_text("\n".join(lines) + "\n")
    out = root / "out"
    assert main(["report", str(config), "--out", str(out)]) == 0
    return out


def _job(out, job_id: str) -> tuple[dict, dict]:
    folder = out / "jobs" / job_id
    csvs = {p.stem: list(csv.DictReader(open(p))) for p in folder.glob("*.csv")}
    return read_json(folder / "results.json"), csvs


@pytest.fixture(scope="module")
def digits_lm(family_dir):
    lm = load_model(family_dir("digits"))
    return lm, number_format(lm.tokenizer, 120)


def _examples(max_operand: int = 60):
    return make_task("+", max_operand, seed=0).test[:LIMIT]


def _generate(lm, fmt, examples, cap: int) -> list[int]:
    """Each prompt alone (no padding) through ``model.generate``."""
    out = []
    for e in examples:
        ids = lm.tokenizer(e.prompt, return_tensors="pt")["input_ids"]
        gen = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                max_new_tokens=cap, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id)
        out.append(fmt.parse(gen[0, ids.shape[1]:].tolist()))
    return out


def _cap(fmt, examples) -> int:
    return max(len(fmt.encode(e.answer)) for e in examples) + 1


def _forward_digits(lm, fmt, examples, role: str):
    """Per answer digit: (place, digit, L x 10 digit logits of ``role``, log p of the digit
    token from the model's logits), from one full forward over prompt + answer (no cache)."""
    W = lm.unembedding()[torch.as_tensor(fmt.digit_ids)].double().numpy()
    out = []
    for e in examples:
        ids = lm.tokenizer(e.prompt)["input_ids"]
        answer = list(fmt.encode(e.answer))
        with torch.no_grad(), capture(lm, [role], positions="all") as cap:
            logits = lm.model(input_ids=torch.tensor([ids + answer])).logits[0]
        x = cap.stack(role)[0].double().numpy()  # T x L x D
        logp = torch.log_softmax(logits.double(), -1)
        text = str(e.answer)
        for j, ch in enumerate(text):
            pos = len(ids) - 1 + j
            out.append((len(text) - 1 - j, int(ch), x[pos] @ W.T,
                        float(logp[pos, answer[j]])))
    return out


def test_digit_probe_job_matches_full_forwards_numpy_and_generate(report, digits_lm):
    res, csvs = _job(report, "probe-digits-add")
    lm, fmt = digits_lm
    examples = _examples()
    assert res["readout"]["readout"] == "digit" and res["readout"]["basis"] == "dft"
    assert res["numbers"]["family"] == "digits" and res["tau"] == 3
    assert "accuracy" not in res and "layers" not in res  # no number lens for digits
    for role in ("mlp", "block"):
        rows = _forward_digits(lm, fmt, examples, role)
        logits = np.stack([r[2] for r in rows])  # n x L x 10
        fft = np.abs(np.fft.fft(logits, axis=-1))  # orthonormal real DFT magnitudes:
        mag = np.concatenate([fft[..., 1:5] * np.sqrt(0.2), fft[..., 5:6] / np.sqrt(10)],
                             axis=-1).mean(0)  # L x 5: periods 10, 5, 3.33, 2.5, 2
        got = res["digit_lens"][role]["all"]
        assert got["n"] == len(rows)
        for layer, info in enumerate(got["layers"]):
            want = dict(zip(["10", "5", "3.33", "2.5", "2"], mag[layer]))
            for T, m in want.items():
                assert info[f"period_{T}"] == pytest.approx(m, rel=1e-5)
            energy = mag[layer] ** 2
            assert info["low_fraction"] == pytest.approx(energy[:2].sum() / energy.sum())
        hits = logits.argmax(-1) == np.array([r[1] for r in rows])[:, None]
        assert got["accuracy"] == pytest.approx(hits.mean(0).tolist())
        units = np.array([r[0] == 0 for r in rows])
        assert res["digit_lens"][role]["places"][0]["accuracy"] == pytest.approx(
            hits[units].mean(0).tolist())
    spectra = [r for r in csvs["digit_spectra"] if r["role"] == "block" and r["place"] == "all"]
    assert len(spectra) == 2 * 5 and sorted({float(r["period"]) for r in spectra}) == \
        pytest.approx([2, 2.5, 10 / 3, 5, 10])
    # predictions.csv: the prompt, its answer and the greedy whole answer, as generate gives it
    preds = csvs["predictions"]
    assert [r["prompt"] for r in preds] == [e.prompt for e in examples]
    want = _generate(lm, fmt, examples, _cap(fmt, examples))
    assert [int(r["prediction"]) for r in preds] == want
    assert len({len(str(p)) for p in want}) > 1  # whole answers of several lengths
    assert res["model_accuracy"] == np.mean(np.array(want) == [e.answer for e in examples])
    for name in ("digit_heatmap_mlp.png", "digit_lens_accuracy.png"):
        assert name in res["files"]


def test_digit_ablate_job_scores_whole_answers_at_the_answer_positions(report, digits_lm):
    res, csvs = _job(report, "ablate-digits-add")
    lm, fmt = digits_lm
    examples = _examples()
    table = {r["row"]: r for r in res["table"]}
    assert list(table) == ["none", "attn+MLP low removed", "attn low removed",
                           "MLP low removed", "attn+MLP high removed", "attn high removed",
                           "MLP high removed"]
    assert res["positions"] == "every answer position" and res["tau"] == 3
    cap = _cap(fmt, examples)
    preds = {name: [int(r[name]) for r in csvs["predictions"]] for name in table}
    assert preds["none"] == _generate(lm, fmt, examples, cap)
    # loss: mean -log p(whole answer) from full forwards; teacher-forced accuracy
    rows = _forward_digits(lm, fmt, examples, "block")
    logp, k = [], 0
    for e in examples:
        n = len(str(e.answer))
        logp.append(sum(r[3] for r in rows[k:k + n]))
        k += n
    assert table["none"]["loss"] == pytest.approx(-np.mean(logp), rel=1e-5)
    # "MLP low removed" = periods 10 and 5 of W_U[digits] removed from layer 1's MLP output
    # at every answer position: generate with that edit on its own KV steps
    W = lm.unembedding()[torch.as_tensor(fmt.digit_ids)].double().numpy()
    filt = remove_components(W, FourierBasis(10, "dft"), [1, 2])
    with edit(lm, {("mlp", 1): filt}, positions="last"):
        assert preds["MLP low removed"] == _generate(lm, fmt, examples, cap)
    head = list(csvs["table"][0])
    assert {"teacher_forced_accuracy", "frac_errors_one_digit", "digit_accuracy_0",
            "digit_accuracy_1"} <= set(head)
    answers = np.array([e.answer for e in examples])
    for name, row in table.items():
        got = np.array(preds[name])
        assert row["accuracy"] == np.mean(got == answers)
        assert row["digit_accuracy"][0] == np.mean((got >= 0) & (got % 10 == answers % 10))
        assert row["method"] == "greedy generation"
    assert "digit_errors.png" in res["files"]
    assert (report / "jobs" / "ablate-digits-add" / "digit_errors.png").stat().st_size > 0


def test_chunk_answers_get_whole_answer_scores_only(report, family_dir):
    res, csvs = _job(report, "ablate-chunks-big")
    assert res["numbers"]["family"] == "chunks" and res["numbers"]["chunk_width"] == 3
    assert res["readout"] is None and res["tau"] is None and "readout" in res["note"]
    assert [r["row"] for r in res["table"]] == ["none"]
    lm = load_model(family_dir("chunks"))
    examples = _examples(700)
    fmt = number_format(lm.tokenizer, 1400)
    assert [int(r["none"]) for r in csvs["predictions"]] == \
        _generate(lm, fmt, examples, _cap(fmt, examples))


def test_number_jobs_keep_the_number_views_and_predict_the_next_token(report, tiny_dir):
    res, csvs = _job(report, "probe-gpt2-add")
    assert res["readout"]["readout"] == "number" and res["numbers"]["family"] == "single"
    assert res["numbers"]["p"] == 121 and res["tau"] == 50 and "digit_lens" not in res
    lm = load_model(tiny_dir("gpt2"))
    fmt = number_format(lm.tokenizer, 120)
    examples = _examples()
    want = []
    for e in examples:  # the model's next token over the whole vocabulary, as a number
        with torch.no_grad():
            top = int(lm.model(**lm.tokenizer(e.prompt, return_tensors="pt")).logits[0, -1]
                      .argmax())
        want.append(fmt.parse([top]))
    assert [int(r["prediction"]) for r in csvs["predictions"]] == want
    ablate, acsv = _job(report, "ablate-gpt2-add")
    assert [int(r["none"]) for r in acsv["predictions"]] == want
    assert ablate["table"][0]["method"] == "next token" and ablate["readout"]["p"] == 121


def test_hidden_digit_probes_and_intervention(report):
    for job in ("hidden-digits-add-s0", "hidden-gpt2-add-s0"):
        res, csvs = _job(report, job)
        rows = {(r["place"], r["kind"]): r for r in res["digit_probes"]}
        assert set(rows) == {(p, k) for p in (0, 1) for k in ("circular", "linear")}
        assert len(csvs["digit_probes"]) == len(res["digit_probes"])
        iv = res["intervention"]
        assert iv["layer"] == 1 and iv["token"] == "a" and iv["probe_place"] == 0
        per = csvs["intervention"]
        ok = [r for r in per if min(int(r[k]) for k in ("clean", "rotated", "random")) >= 0]
        moved = [(int(r["rotated"]) - int(r["clean"])) % 10 == 1 for r in ok]
        assert iv["n_scored"] == len(ok) and iv["rate_shifted"] == pytest.approx(
            sum(moved) / max(len(ok), 1))
    # one token per digit: the state at a's last token is its units digit's token, so the
    # units digit decodes from it (chance: the most frequent digit's share)
    units = {r["kind"]: r for r in _job(report, "hidden-digits-add-s0")[0]["digit_probes"]
             if r["place"] == 0}
    assert units["linear"]["accuracy"] > 0.9 > units["linear"]["accuracy_shuffled"] + 0.5
    assert units["circular"]["accuracy"] > units["circular"]["chance"] + 0.3


def test_the_page_shows_each_family_its_views(report):
    page = (report / "index.html").read_text()
    sections = {job: page.split(f"id='job-{job}'", 1)[1].split("<div class='job'", 1)[0]
                for job in ("probe-gpt2-add", "probe-digits-add", "ablate-gpt2-add",
                            "ablate-digits-add", "ablate-chunks-big", "hidden-digits-add-s0")}
    digit, number = sections["probe-digits-add"], sections["probe-gpt2-add"]
    assert "digit_heatmap_mlp.png" in digit and "digit_lens_accuracy.png" in digit
    assert "digit-lens accuracy" in digit and "MLP strongest period" in digit
    assert "heatmap_mlp.png" in number and "digit_heatmap" not in number
    assert "logit-lens accuracy of the residual stream" in number
    assert "teacher-forced accuracy %" in sections["ablate-digits-add"]
    assert "digit_errors.png" in sections["ablate-digits-add"]
    assert "teacher-forced" not in sections["ablate-gpt2-add"]
    assert "digit_errors" not in sections["ablate-gpt2-add"]
    assert "no readout" in sections["ablate-chunks-big"]
    assert "Digit probes (Levy &amp; Geva)" in sections["hidden-digits-add-s0"]
    assert "Digit intervention" in sections["hidden-digits-add-s0"]
    # the cross-job Table 1 marks the digit job's column
    with open(report / "tables" / "ablation_table1.csv") as fh:
        head = next(csv.reader(fh))
    assert "ablate-gpt2-add" in head and "ablate-digits-add (digit readout)" in head


def test_the_python_api_gives_the_cli_results_and_writes_nothing(report, family_dir,
                                                                 tmp_path, monkeypatch):
    from llm_fourier.commands.probe import COMMAND as probe

    monkeypatch.chdir(tmp_path)
    res = probe(model=str(family_dir("digits")), max_operand=60, limit=LIMIT, batch_size=4)
    assert res["digit_lens"] == _job(report, "probe-digits-add")[0]["digit_lens"]
    assert list(tmp_path.iterdir()) == []


def test_digit_lens_resumes_after_an_interruption(report, family_dir, tmp_path, monkeypatch):
    fresh, _ = _job(report, "probe-digits-add")
    real = probe_cmd.run_digit_lens

    argv = ["probe", "--model", str(family_dir("digits")), "--max-operand", "60", "--limit",
            str(LIMIT), "--batch-size", "4", "--out", str(tmp_path / "p")]
    monkeypatch.setattr(probe_cmd, "run_digit_lens", interrupted(real))
    assert main(argv) == 130
    assert (tmp_path / "p" / ".partial" / "lens-lens_0.json").exists()
    monkeypatch.setattr(probe_cmd, "run_digit_lens", real)
    assert main(argv) == 0
    again = read_json(tmp_path / "p" / "results.json")
    assert again["digit_lens"] == fresh["digit_lens"]
    assert again["model_accuracy"] == fresh["model_accuracy"]


@pytest.mark.parametrize("family, argv, words", [
    ("digits", ["probe", "--tau", "9"], "--tau must lie in 1..5 for the digit readout"),
    ("digits", ["ablate", "--keep", "7"], "--keep components must lie in 1..5"),
    ("chunks", ["probe", "--max-operand", "700"], "answers up to 1400 are written as chunks"),
    ("chunks", ["ablate", "--max-operand", "700", "--prediction", "numbers"],
     "--prediction numbers needs"),
    ("digits", ["hidden", "--token", "last", "--intervene-place", "0"], "--token a or"),
    ("digits", ["hidden", "--digit-places", "4"], "--digit-places [4] leave the places"),
])
def test_digit_settings_are_refused_with_one_sentence(family_dir, tmp_path, capsys, family,
                                                      argv, words):
    full = [*argv, "--model", str(family_dir(family)), "--out", str(tmp_path / "x")]
    if "--max-operand" not in argv:
        full += ["--max-operand", "60"]
    assert main(full) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("llm-fourier: error:")]
    assert len(lines) == 1 and words in lines[0] and lines[0].endswith(".")
    assert "Traceback" not in err

"""The ``any-model`` preset: the whole analysis of one model, sized to it and to the device.

``any_model_config(overrides, scale)`` reads ``presets/any-model.toml`` (the laptop-sized
base), names the one model given with ``--model NAME=ID_OR_FOLDER``, reads its config and
tokenizer (no weights) and returns a report config: sizes for the scale (``laptop``: a CPU,
minutes for a 0.5B model, shrunk further for bigger ones; ``gpu``; ``paper``: the papers'
sizes), layers spread over the model's depth, and the views its tokenizer cannot have left
out with the reason in the page's description (``SKIPPED``). Options whose range depends on
the model (operand range, tau, basis) stay unset: each command chooses them itself.
"""

from __future__ import annotations

from pathlib import Path

from llm_fourier.errors import UserError
from llm_fourier.model.answer_space import fitting_operands
from llm_fourier.model.number_format import NumberFormat, number_format
from llm_fourier.model.sources import load_config, load_tokenizer
from llm_fourier.model.tasks import largest_answer
from llm_fourier.output.reading import read_data

PRESET = Path(__file__).resolve().parent / "presets" / "any-model.toml"
SCALES = ("auto", "laptop", "gpu", "paper")
LAPTOP_PARAMS = 5e8  # laptop sizes are for a 0.5B model; bigger ones get fewer prompts
# command -> its preferred operand range; it reads the answers' readout (W_U[numbers] or
# W_U[digits]), so it is skipped (with this reason) where answers have neither.
SKIPPED = {
    "neurons": (260, "neurons reads each MLP neuron's direction through the answers' readout, "
                     "which needs single-token answers or one token per digit"),
    "heads": (260, "heads reads each head's number logits through the answers' readout, "
                   "which needs single-token answers or one token per digit"),
}
# settings per scale (None: the command's default, i.e. the whole split / the paper's size)
SIZES = {
    "gpu": {"embed": {"bootstrap": 1000, "permutations": 1000},
            "probe": {"limit": 1000}, "ablate": {"limit": 500},
            "hidden": {"n_probe": 1000, "roles": ["block", "attn", "mlp"], "bootstrap": 1000,
                       "permutations": 1000, "refits": 20, "no_random_baseline": False,
                       "n_eval": 200},
            "patch": {"train_limit": 1000, "test_limit": 100},
            "neurons": {"limit": 500, "n_random": 5},
            "heads": {"limit": 300, "bootstrap": 1000, "n_random": 5}},
    "paper": {"embed": {"bootstrap": 1000, "permutations": 1000},
              "probe": {"limit": None}, "ablate": {"limit": None},
              "hidden": {"n_probe": 1000, "roles": ["block", "attn", "mlp"], "bootstrap": 1000,
                         "permutations": 1000, "refits": 20, "no_random_baseline": False,
                         "n_eval": 500},
              "patch": {"train_limit": 2000, "test_limit": 200, "all_prompts": False},
              "neurons": {"limit": None, "n_random": 5},
              "heads": {"limit": None, "bootstrap": 1000, "n_random": 5}},
}
SHRINK = {"probe": "limit", "ablate": "limit", "hidden": "n_probe", "patch": "train_limit",
          "neurons": "limit", "heads": "limit"}  # the laptop sizes that shrink with the model


def _dims(config) -> tuple[int, int, int]:
    """(layers, d_model, parameters, estimated from the config alone)."""
    config = getattr(config, "text_config", None) or config
    get = lambda *names, default=0: next(  # noqa: E731
        (getattr(config, n) for n in names if getattr(config, n, None)), default)
    layers = int(get("num_hidden_layers", "n_layer", "num_layers"))
    d = int(get("hidden_size", "n_embd", "d_model"))
    ff = int(get("intermediate_size", "n_inner", "ffn_dim", default=4 * d) or 4 * d)
    vocab = int(get("vocab_size"))
    return layers, d, layers * (4 * d * d + 3 * d * ff) + vocab * d


def _format(tokenizer, max_answer: int) -> NumberFormat | None:
    """How the tokenizer writes the answers 0..max_answer (None where it cannot write some
    back, as word-level tokenizers: their family is "mixed", with no readout)."""
    try:
        return number_format(tokenizer, max_answer)
    except UserError:
        return None


def spread(n_layers: int, k: int = 4) -> list[int]:
    """``k`` layers spread over the depth, the last included."""
    if n_layers <= k:
        return list(range(n_layers))
    return sorted({round(i * (n_layers - 1) / (k - 1)) for i in range(k)})


def any_model_config(overrides: dict[str, str], scale: str = "auto") -> tuple[dict, dict]:
    """(raw report config, what was chosen and why) for the one model in ``overrides``."""
    if len(overrides) != 1:
        raise UserError("report any-model: name one model with --model NAME=HUB_ID_OR_FOLDER "
                        f"(got {len(overrides)}).")
    (name, source), = overrides.items()
    raw = read_data(PRESET, "preset")
    if scale == "auto":
        import torch

        scale = "gpu" if torch.cuda.is_available() else "laptop"
    n_layers, d_model, params = _dims(load_config(source))
    tokenizer = load_tokenizer(source)
    fmt = _format(tokenizer, largest_answer("+", 260))
    family = fmt.family if fmt is not None else "mixed"
    factor = min(1.0, LAPTOP_PARAMS / max(params, 1.0)) if scale == "laptop" else 1.0
    skipped, jobs = {}, []
    for job in raw["jobs"]:
        command, settings = job["command"], dict(job.get("settings", {}))
        if command in SKIPPED:
            operands, why = SKIPPED[command]
            m, _ = fitting_operands(tokenizer, "+", operands)
            answers = _format(tokenizer, largest_answer("+", m))
            if answers is None or answers.readout is None:
                skipped[command] = f"{why}; this tokenizer writes them as {family} tokens"
                continue
        settings |= SIZES.get(scale, {}).get(command, {})
        if command in SHRINK and factor < 1 and settings.get(SHRINK[command]):
            settings[SHRINK[command]] = max(20, int(settings[SHRINK[command]] * factor))
        if scale == "laptop" and command in ("hidden", "patch", "heads"):
            settings["layers"] = spread(n_layers)
            if command == "hidden":
                settings["intervene_layer"] = settings["layers"][len(settings["layers"]) // 2]
        jobs.append({**job, "settings": {k: v for k, v in settings.items() if v is not None}})
    raw.update(jobs=jobs, models={name: source}, title=raw["title"].format(name=name))
    chosen = {"model": source, "scale": scale, "parameters": params, "layers": n_layers,
              "d_model": d_model, "family": family, "skipped": skipped}
    raw["description"] = describe(name, chosen)
    return raw, chosen


def describe(name: str, c: dict) -> str:
    """The page's opening paragraph: the model, its number format, the sizes and what is left
    out, and why."""
    fam = {"single": "one token per answer, so the lens and filters read W_U[numbers] over "
                     "the number line",
           "digits": "one token per digit, so the lens and filters read the ten digit tokens "
                     "(DFT over ten points) at every answer position",
           "chunks": "digit chunks, so answers are scored whole and the lens reads the "
                     "operand range whose answers stay single tokens",
           "mixed": "a mix of tokens, so answers are scored whole and the lens reads the "
                    "operand range whose answers stay single tokens"}[c["family"]]
    sizes = {"laptop": "laptop sizes (a CPU: a few hundred prompts, four layers for the "
                       "per-layer fits" + (", shrunk for the model's size" if
                                           c["parameters"] > LAPTOP_PARAMS else "") + ")",
             "gpu": "GPU sizes (about a thousand prompts, every layer)",
             "paper": "the papers' sizes (whole test splits, every layer)"}[c["scale"]]
    text = (f"{name} ({c['model']}): about {c['parameters'] / 1e6:.3g}M parameters, "
            f"{c['layers']} layers, d_model {c['d_model']}. Its tokenizer writes the answers "
            f"of a + b (operands 0..260) as {fam}. Each view below says which readout it used "
            f"and which options were chosen from the model, and why. Run at {sizes}.")
    for command, why in c["skipped"].items():
        text += f" Not run: {command} ({why})."
    return text

"""Keeping what was computed: the states ``hidden`` collects and the rows ``probe --keep-rows``
captures, saved in the run folder (``output.states``) for ``lf.load_states``; states kept as
a resume unit of the run (``collect_kept``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_fourier.analyses.hidden_states import HiddenStates, collect
from llm_fourier.commands.settings import Settings, option
from llm_fourier.model.loading import LoadedModel
from llm_fourier.output.rundir import RunDir
from llm_fourier.output.states import STATE_DTYPES, STATES_DIR, save_states


@dataclass(kw_only=True)
class StatesOptions(Settings):
    states_dtype: str = option("float16", choices=STATE_DTYPES, identity=False,
                               help="dtype of the states kept in OUT/states/ (a role beyond "
                               "float16's range is kept in float32)")


def keep_states(run: RunDir, s: StatesOptions, lm: LoadedModel, hs: HiddenStates,
                source: str) -> None:
    """Write ``hs`` to ``OUT/states/`` with an index of prompts, operands, answers and the
    token read (where the run writes)."""
    folder = run.file(STATES_DIR)
    if folder is None:
        return
    rows = [{"prompt": e.prompt, "a": e.a, "b": e.b, "answer": e.answer, "token_id": int(t),
             "token": lm.tokenizer.convert_ids_to_tokens(int(t))}
            for e, t in zip(hs.examples, hs.read_ids)]
    meta = {"source": source, "model": lm.name, "read_at": hs.token,
            "read_at_meaning": {"a": "the last token of operand a",
                                "b": "the last token of operand b",
                                "last": "the last prompt token (where the answer's first "
                                        "token is read)"}[hs.token],
            "roles_meaning": {"block": "the residual stream after the layer",
                              "attn": "what the layer's attention adds to the residual stream",
                              "mlp": "what the layer's MLP adds to the residual stream"}}
    save_states(folder, hs.states, hs.layers, rows, meta, s.states_dtype)
    print(f"kept {len(rows)} x {len(hs.layers)} layers x {', '.join(hs.roles)} states "
          f"({s.states_dtype}) in {folder}; load them with lf.load_states({str(run.path)!r})")


def collect_kept(run: RunDir, unit: str, lm, examples, s, layers, ids=None) -> HiddenStates:
    """``collect`` with the states kept as a unit of the run (safetensors)."""
    saved = run.load_unit(unit)
    if saved is not None and "read_ids" in saved[1]:
        return HiddenStates({r: saved[1][r].numpy() for r in s.roles}, layers, list(examples),
                            s.token, saved[1]["read_ids"].numpy())
    hs = collect(lm, examples, s.token, s.roles, layers, s.batch_size, not s.quiet, ids)
    tensors = {r: torch.from_numpy(v) for r, v in hs.states.items()}
    run.save_unit(unit, {"layers": layers}, {**tensors, "read_ids": torch.from_numpy(hs.read_ids)})
    return hs

"""Kept activations: the states a run collected, saved in its folder and loaded back.

``save_states(folder, arrays, layers, rows, meta)`` writes ``folder/<role>.safetensors``
(one N x L x D tensor per role, float16 unless asked) and an index: ``index.json`` (roles,
layers, dtypes, where the states were read, the model) and ``index.csv`` (one row per
prompt: prompt, operands, answer, the token read). ``load_states(run_dir)`` returns them as
float32 numpy arrays with their labels (``States``). Every file is written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llm_fourier.errors import UserError
from llm_fourier.output.files import atomic_write_bytes, read_json, write_csv, write_json

STATES_DIR = "states"
STATE_DTYPES = ("float16", "bfloat16", "float32")
INDEX_COLUMNS = ("prompt", "a", "b", "answer", "token_id", "token")
_FP16_MAX = 65504.0


@dataclass
class States:
    """Kept states: ``arrays[role]`` is N x L x D (float32); row i is prompt i of the index,
    layer axis j is ``layers[j]``."""

    arrays: dict[str, np.ndarray]
    layers: list[int]
    prompts: list[str]
    a: np.ndarray
    b: np.ndarray
    answers: np.ndarray
    token_ids: np.ndarray
    tokens: list[str]
    meta: dict = field(default_factory=dict)

    @property
    def roles(self) -> list[str]:
        return list(self.arrays)

    def at(self, role: str, layer: int) -> np.ndarray:
        """N x D states of one role at one layer."""
        if role not in self.arrays:
            raise UserError(f"no {role!r} states kept; kept roles: {', '.join(self.roles)}.")
        if layer not in self.layers:
            raise UserError(f"layer {layer} was not kept; kept layers: {self.layers}.")
        return self.arrays[role][:, self.layers.index(layer)]

    def __len__(self) -> int:
        return len(self.prompts)


def save_states(folder: str | Path, arrays: Mapping[str, np.ndarray], layers: Sequence[int],
                rows: Sequence[Mapping], meta: Mapping, dtype: str = "float16") -> Path:
    """Write the states and their index under ``folder`` (made if needed); a role whose
    values leave float16's range is kept in float32 (the index says which)."""
    import torch
    from safetensors.torch import save

    if dtype not in STATE_DTYPES:
        raise UserError(f"states dtype must be one of {', '.join(STATE_DTYPES)}, got {dtype!r}.")
    folder = Path(folder)
    dtypes = {}
    for role, values in arrays.items():
        t = torch.from_numpy(np.ascontiguousarray(values))
        dtypes[role] = dtype
        if dtype == "float16" and t.numel() and float(t.abs().max()) > _FP16_MAX:
            dtypes[role] = "float32"  # float16 would turn these values into inf
            print(f"note: {role} states exceed float16's range; kept in float32")
        atomic_write_bytes(folder / f"{role}.safetensors",
                           save({"states": t.to(getattr(torch, dtypes[role])).contiguous()}))
    rows = [{k: r.get(k) for k in INDEX_COLUMNS} for r in rows]
    write_csv(folder / "index.csv", rows)
    write_json(folder / "index.json", {
        **meta, "roles": list(arrays), "layers": [int(i) for i in layers], "dtypes": dtypes,
        "n": len(rows), "shape": "N x L x D per role (prompts x layers x d_model)",
        "rows": rows})
    return folder


def load_states(run_dir: str | Path, roles: Sequence[str] | None = None) -> States:
    """The states kept in a run folder (``hidden``, ``probe --keep-rows``), or in its
    ``states/`` folder itself, as float32 arrays with their labels."""
    from safetensors.torch import load

    path = Path(run_dir)
    folder = next((f for f in (path, path / STATES_DIR) if (f / "index.json").is_file()), None)
    if folder is None:
        raise UserError(f"{path} holds no kept states (no {STATES_DIR}/index.json); run "
                        "`llm-fourier hidden --out DIR` or `llm-fourier probe --keep-rows --out "
                        "DIR` first.")
    try:
        index = read_json(folder / "index.json")
        wanted = list(index["roles"]) if roles is None else list(roles)
        unknown = [r for r in wanted if r not in index["roles"]]
        if unknown:
            raise UserError(f"{folder} keeps no {', '.join(unknown)} states; kept roles: "
                            f"{', '.join(index['roles'])}.")
        arrays = {r: load((folder / f"{r}.safetensors").read_bytes())["states"].float().numpy()
                  for r in wanted}
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"cannot read the kept states in {folder} ({type(err).__name__}: "
                        f"{err}); run the command again with --restart to rewrite them.") from None
    rows = index["rows"]

    def col(key: str) -> np.ndarray:
        return np.array([-1 if r.get(key) is None else r[key] for r in rows], dtype=np.int64)

    meta = {k: v for k, v in index.items() if k not in ("rows", "roles", "layers")}
    return States(arrays, [int(i) for i in index["layers"]], [r["prompt"] for r in rows],
                  col("a"), col("b"), col("answer"), col("token_id"),
                  [r.get("token") or "" for r in rows], meta)

"""Capture and edit residual contributions at chosen layers and positions (forward hooks).

``capture`` records what each role adds to the residual stream (``lm.site(layer, role)``:
a module's output, element 0 of a tuple, times the block's multiplier where it scales it)
at the last real token (or at every position) and keeps only those rows, as float32 on the
CPU; ``edit`` makes the block add ``fn(contribution)`` instead (Granite: the module output
becomes ``fn(m * out) / m``). Both are context managers that always remove their hooks.

The attention mask is read from the forward's ``attention_mask`` keyword (a pre-hook on
the model root), else from ``.set_mask(mask)``; without either the last position is T - 1.
Of a tuple output (attention's ``(output, weights)``) element 0 is captured or edited. A
``flat`` module's (N*T) x D rows (OPT's ``fc2``) are viewed as N x T x D through the shape
of the forward's ``input_ids``. Capture hooks return nothing: logits stay bit-identical.

The ``heads`` role (``llm_fourier.model.heads``) captures N x H x D per layer: what each
attention head adds, read from the attention output projection's input; ``Capture.get``
gives the heads, ``Capture.head_bias`` the projection's bias term (they sum to ``attn``).
``edit`` with role ``heads`` (or ``edit_heads``) rewrites chosen heads' slices of that input.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from llm_fourier.errors import UserError
from llm_fourier.model.heads import head_capture_hooks, head_site

ROLES = ("attn", "mlp", "block", "heads")
POSITIONS = ("last", "all")


def last_token_positions(attention_mask: Tensor) -> Tensor:
    """Index of the last real (mask = 1) token of each row (0 for a row without one); right
    for left or right padding."""
    mask = attention_mask.to(torch.bool)
    t = mask.shape[-1]
    # argmax returns the first maximum: flip so the first hit is the last real token
    return (t - 1 - mask.flip(-1).to(torch.uint8).argmax(-1)).to(torch.long)


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrapped forwards
        return False


@dataclass(frozen=True)
class Site:
    """Where a role is read and written: ``module``'s output times ``scale`` is what the
    block adds; ``flat`` when the module sees (N*T) x D rows."""

    module: nn.Module
    scale: float = 1.0
    flat: bool = False


def _output_tensor(output) -> Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _replace_output(output, new: Tensor):
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    return new


class _Positions:
    """The attention mask of the current forward and its last-token positions per device."""

    def __init__(self) -> None:
        self.user_mask: Tensor | None = None
        self.forward_mask: Tensor | None = None
        self.tokens: tuple[int, int] | None = None  # (N, T) of this forward's input
        self._cache: dict = {}

    def set_mask(self, mask: Tensor | None) -> None:
        self.user_mask = mask
        self._cache = {}

    def pre_hook(self, module: nn.Module, args, kwargs) -> None:
        self.forward_mask = kwargs.get("attention_mask")
        x = kwargs.get("input_ids", args[0] if args else None)
        x = kwargs.get("inputs_embeds") if x is None else x
        self.tokens = tuple(x.shape[:2]) if isinstance(x, Tensor) and x.dim() >= 2 else None
        self._cache = {}

    def grid(self, out: Tensor, site: Site) -> Tensor:
        """``out`` as N x T x D (a view; only ``flat`` modules need the input's shape)."""
        if site.flat and out.dim() == 2:
            if self.tokens is None:
                raise UserError("a flat (N*T x D) module output needs the forward's input_ids "
                                "(or inputs_embeds) of shape N x T; pass them to the model.")
            return out.view(*self.tokens, out.shape[-1])
        if out.dim() != 3:
            raise UserError(f"{type(site.module).__name__} returned a tensor of shape "
                            f"{tuple(out.shape)}, not N x T x D; a role whose module sees "
                            "(N*T) x D rows must be marked flat in its Contribution.")
        return out

    def last(self, out: Tensor) -> Tensor | None:
        """Last-token positions for ``out`` (N x T x D) on its device; None = all at T - 1."""
        mask = self.forward_mask if self.forward_mask is not None else self.user_mask
        if mask is None:
            return None
        key = (out.device, out.shape[0], out.shape[1])
        if key not in self._cache:
            if mask.dim() != 2 or mask.shape[0] != out.shape[0] or mask.shape[1] < out.shape[1]:
                raise UserError(
                    f"the attention mask has shape {tuple(mask.shape)} but the hooked output "
                    f"has {out.shape[0]} rows of {out.shape[1]} tokens; pass the mask of the "
                    "batch you run (set_mask or the attention_mask keyword)."
                )
            # with a KV cache the output covers only the last T columns of the mask
            pos = last_token_positions(mask[:, mask.shape[1] - out.shape[1]:])
            self._cache[key] = pos.to(out.device)
        return self._cache[key]


def _rows(out: Tensor, pos: Tensor | None) -> Tensor:
    """The N x D rows of ``out`` (N x T x D) at ``pos`` (None = last position)."""
    if pos is None:
        return out[:, -1].clone()  # a copy: a view would keep all N x T x D alive
    return out[torch.arange(out.shape[0], device=out.device), pos]


def _check(lm, roles: Iterable[str], layers: Iterable[int] | None, positions: str):
    roles = tuple(roles)
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise UserError(f"unknown role(s) {bad}; choose among {', '.join(ROLES)}.")
    if positions not in POSITIONS:
        raise UserError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}.")
    layers = list(range(lm.n_layers)) if layers is None else sorted(set(int(i) for i in layers))
    wrong = [i for i in layers if not 0 <= i < lm.n_layers]
    if wrong:
        raise UserError(f"layer(s) {wrong} do not exist; the model has layers "
                        f"0..{lm.n_layers - 1}.")
    return roles, layers


class _Hooks:
    """What ``Capture`` and ``Editor`` share: the positions and the mask that locates them."""

    def __init__(self, positions: str) -> None:
        self.positions = positions
        self._where = _Positions()

    def set_mask(self, mask: Tensor | None) -> None:
        """Attention mask for forwards that do not pass ``attention_mask`` as a keyword."""
        self._where.set_mask(mask)


class Capture(_Hooks):
    """Rows captured by ``capture``; ``stack(role)`` gives N x L x D (or N x T x L x D)."""

    def __init__(self, roles: Sequence[str], layers: Sequence[int], positions: str,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(positions)
        self.roles = tuple(roles)
        self.layers = list(layers)
        self.device = torch.device(device)
        self._pending: dict[tuple[str, int], list[Tensor]] = {k: [] for k in self._keys()}
        self._done: dict[tuple[str, int], list[Tensor]] = {k: [] for k in self._keys()}

    def _keys(self):
        return [(r, i) for r in self.roles for i in self.layers]

    def _hook(self, key: tuple[str, int], site: Site) -> Callable:
        def hook(module: nn.Module, args, output) -> None:
            rows = self._rows(self._where.grid(_output_tensor(output).detach(), site))
            # stays on its device until the forward ends
            self._pending[key].append(rows * site.scale if site.scale != 1.0 else rows)

        return hook

    def _rows(self, t: Tensor) -> Tensor:
        """The captured positions of an N x T x W tensor (all of them copied: the model may
        later update its output in place, Falcon does)."""
        return t.clone() if self.positions == "all" else _rows(t, self._where.last(t))

    def flush(self, *_ignored) -> None:
        """Move this forward's rows to ``device`` (the CPU by default) as float32, once per
        forward (no sync per layer)."""
        for key, chunks in self._pending.items():
            self._done[key] += [c.to(self.device, torch.float32) for c in chunks]
            chunks.clear()

    def clear(self) -> None:
        for store in (self._pending, self._done):
            for chunks in store.values():
                chunks.clear()

    def chunks(self, role: str, layer: int) -> int:
        """How many times (role, layer)'s hook ran (forwards since the last ``clear``)."""
        self.flush()
        return len(self._done.get((role, layer), ()))

    @property
    def n(self) -> int:
        self.flush()
        return sum(c.shape[0] for c in self._done[self._keys()[0]]) if self._keys() else 0

    def get(self, role: str, layer: int) -> Tensor:
        """Rows of one (role, layer): N x D (or N x T x D for positions "all")."""
        self.flush()
        if (role, layer) not in self._done:
            raise UserError(f"({role!r}, layer {layer}) was not captured; captured roles "
                            f"{self.roles} at layers {self.layers}.")
        chunks = self._done[(role, layer)]
        if not chunks:
            raise UserError("nothing was captured; run a forward inside the capture block.")
        if self.positions == "all" and len({c.shape[1] for c in chunks}) > 1:
            raise UserError("batches of different lengths cannot be stacked at all positions; "
                            "pad every batch to the same length or capture the last position.")
        out = torch.cat(chunks)
        return out[..., :-1, :] if role == "heads" else out

    def head_bias(self, layer: int) -> Tensor:
        """The bias term beside the heads of ``layer`` (N x D): the output projection's bias
        (through the frozen post-norm with its beta, times the multiplier; zero if none)."""
        self.get("heads", layer)  # the checks
        return torch.cat(self._done[("heads", layer)])[..., -1, :]

    def stack(self, role: str) -> Tensor:
        """All captured layers of ``role``: N x L x D (N x T x L x D for positions "all";
        N x H x L x D for heads)."""
        return torch.stack([self.get(role, i) for i in self.layers], dim=-2)


@contextmanager
def _hooked(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture(lm, roles: Iterable[str] = ROLES, layers: Iterable[int] | None = None,
            positions: str = "last", device: str | torch.device = "cpu") -> Iterator[Capture]:
    """Record (role, layer) outputs of every forward inside the block, as float32 on
    ``device`` (the CPU by default; on an accelerator a readout of them is fast). ``lm`` is
    a ``LoadedModel`` (``.model``, ``.n_layers``, ``.site(layer, role)``)."""
    roles, layers = _check(lm, roles, layers, positions)
    cap = Capture(roles, layers, positions, device)
    handles = [lm.model.register_forward_pre_hook(cap._where.pre_hook, with_kwargs=True)]
    with _hooked(handles):
        for r, i in cap._keys():
            if r == "heads":
                handles += head_capture_hooks(head_site(lm, i), cap._rows,
                                              cap._pending[(r, i)].append)
                continue
            site = lm.site(i, r)
            handles.append(site.module.register_forward_hook(cap._hook((r, i), site)))
        handles.append(lm.model.register_forward_hook(cap.flush))
        yield cap
    cap.flush()


class Editor(_Hooks):
    """Handle yielded by ``edit``; ``set_mask`` as for ``Capture``."""

    def _apply(self, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """``x`` (N x T x W) with ``fn`` applied at the chosen positions, in ``x``'s dtype."""
        if self.positions == "all":
            return fn(x).to(x.dtype)
        n = torch.arange(x.shape[0], device=x.device)
        pos = self._where.last(x)
        pos = torch.full_like(n, x.shape[1] - 1) if pos is None else pos
        return x.index_put((n, pos), fn(x[n, pos]).to(x.dtype))

    def _hook(self, fn: Callable[[Tensor], Tensor], site: Site) -> Callable:
        def edited(rows: Tensor) -> Tensor:  # the block adds scale * output: edit that
            return fn(rows * site.scale) / site.scale if site.scale != 1.0 else fn(rows)

        def hook(module: nn.Module, args, output):
            raw = _output_tensor(output)
            new = self._apply(self._where.grid(raw, site), edited)
            return _replace_output(output, new.reshape(raw.shape))

        return hook

    def _head_hook(self, fn: Callable[[Tensor], Tensor], site) -> Callable:
        """A pre-hook on the attention output projection rewriting the heads' slices."""
        def on_heads(x: Tensor) -> Tensor:  # ... x (H * d_head) -> ... x H x d_head and back
            return fn(x.reshape(*x.shape[:-1], site.n_heads, site.d_head)).reshape(x.shape)

        def hook(module: nn.Module, args):
            return (self._apply(args[0], on_heads), *args[1:])

        return hook


@contextmanager
def edit(lm, edits: dict[tuple[str, int], Callable[[Tensor], Tensor]],
         positions: str = "last") -> Iterator[Editor]:
    """Make each (role, layer) add ``fn(contribution)`` at the chosen positions: ``fn``
    receives N x D rows (the last real token) or N x T x D (positions "all") of what the
    block adds to the residual stream, on the module's device and dtype, and returns the
    same shape. For role ``"heads"`` it receives the head outputs z instead (the attention
    output projection's input: N x H x d_head, or N x T x H x d_head)."""
    _check(lm, {r for r, _ in edits}, [i for _, i in edits], positions)
    editor = Editor(positions)
    handles = [lm.model.register_forward_pre_hook(editor._where.pre_hook, with_kwargs=True)]
    with _hooked(handles):
        for (r, i), fn in edits.items():
            if r == "heads":
                site = head_site(lm, i)
                handles.append(site.proj.register_forward_pre_hook(
                    editor._head_hook(fn, site)))
                continue
            site = lm.site(i, r)
            handles.append(site.module.register_forward_hook(editor._hook(fn, site)))
        yield editor


@contextmanager
def edit_heads(lm, edits: dict[int, Callable[[Tensor], Tensor]],
               positions: str = "last") -> Iterator[Editor]:
    """``edit`` of role ``"heads"`` at layers ``edits``' keys: replace layer i's head outputs
    z (model dtype) by ``edits[i](z)``, z N x H x d_head at each row's last real token or
    N x T x H x d_head at every position of the forward (``positions="all"``)."""
    with edit(lm, {("heads", i): fn for i, fn in edits.items()}, positions) as editor:
        yield editor

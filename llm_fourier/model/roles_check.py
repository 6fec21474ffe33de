"""The self-check at load: do the roles add up to the residual stream the blocks output?

One forward of one short prompt (8 fixed token ids, no cache, one logit column). Plain
hooks, independent of the roles, record the input of block 0, every block's output and the
input of the final norm; the roles' own capture (``hooks.capture``, all positions) records
every attention and MLP contribution. Then, with h_l the output of block l:

- embedding: h_{-1} (block 0's input) = the scaled token embedding (+ position embeddings);
- layer l:   h_l = h_{l-1} + attn_l + mlp_l (so by telescoping every h_l is the embedding
  plus the contributions of layers <= l);
- final norm: its input = h_{L-1}.

Sums are redone in the model's own dtype, in each order a block may add its three terms
((h + a) + m, (h + m) + a, h + (a + m)), and the closest is kept: a right role reproduces the
block's output to the last bit, so the tolerance can be the dtype's epsilon (relative to
the row's norm), one rounding step, not a guess. Checking layer by layer (rather than the
cumulative sum, whose rounding grows with depth) keeps the tolerance that tight at every
depth and names the first layer that does not add up. A layer whose output holds NaN or
inf is refused first, naming the tensor of that layer that holds it (damaged weights, not
wrong roles).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from llm_fourier.errors import UserError
from llm_fourier.model.architectures import refusal
from llm_fourier.model.hooks import _accepts, _output_tensor, capture

CHECK_TOKENS = 8


@dataclass
class RolesCheck:
    """Relative errors of each step of the decomposition, in stream order."""

    model_type: str
    dtype: torch.dtype
    tolerance: float
    errors: list[tuple[str, float]] = field(default_factory=list)
    missing: str | None = None  # a hooked module that did not run exactly once
    nonfinite: str | None = None  # the first output holding NaN or inf, and its cause

    @property
    def ok(self) -> bool:
        return self.missing is None and self.nonfinite is None and self.failure is None
    heads_errors: list[tuple[str, float]] = field(default_factory=list)
    heads_tolerance: float = 0.0
    heads_refusal: str | None = None  # one sentence: why the heads role cannot be used

    @property
    def failure(self) -> tuple[str, float] | None:
        """The first (step, error) above the tolerance; None when everything adds up."""
        return next(((w, e) for w, e in self.errors if not e <= self.tolerance), None)


def tolerance(dtype: torch.dtype) -> float:
    """Two epsilons of ``dtype`` relative to the row norm (float32's for wider types, since
    captured rows are float32)."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return 2 * max(eps, torch.finfo(torch.float32).eps)


def _relative(out: Tensor, candidates: list[Tensor]) -> float:
    """max over rows of min over candidates of |out - c| / |out| (float64 norms)."""
    out64 = out.double()
    scale = out64.norm(dim=-1).clamp_min(torch.finfo(torch.float64).tiny)
    errs = torch.stack([(out64 - c.double()).norm(dim=-1) / scale for c in candidates])
    return float(errs.min(dim=0).values.max())


def measure_roles(lm) -> RolesCheck:
    """Run the check's forward on ``lm`` (a ``LoadedModel``) and return every step's error."""
    model = lm.model
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    first = next(model.parameters())
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.tensor([[(13 + 7919 * i) % vocab for i in range(CHECK_TOKENS)]],
                       device=lm.input_device)
    seen: dict[str, list[Tensor]] = {"input": [], "final": [], "positions": []}
    blocks: list[list[Tensor]] = [[] for _ in range(lm.n_layers)]

    def keep(store: list, x) -> None:
        store.append(x.detach().to("cpu", copy=True))

    def first_tensor(args, kwargs) -> Tensor:
        if args:
            return args[0]
        if isinstance(kwargs.get("hidden_states"), Tensor):
            return kwargs["hidden_states"]
        return next(v for v in kwargs.values() if isinstance(v, Tensor))

    handles = [module.register_forward_pre_hook(
        lambda m, a, k, s=seen[name]: keep(s, first_tensor(a, k)), with_kwargs=True)
        for module, name in ((lm.block(0), "input"), (lm.final_norm, "final"))]
    handles += [b.register_forward_hook(lambda m, a, o, s=s: keep(s, _output_tensor(o)))
                for b, s in zip(lm.blocks, blocks)]
    if lm.roles.positions:
        handles.append(model.get_submodule(lm.roles.positions).register_forward_hook(
            lambda m, a, o: keep(seen["positions"], _output_tensor(o))))
    extra = {k: v for k, v in (("use_cache", False), ("logits_to_keep", 1))
             if _accepts(model, k)}
    report = RolesCheck(model_type, first.dtype, tolerance(first.dtype))
    try:
        with torch.inference_mode(), capture(lm, ("attn", "mlp"), positions="all") as cap, \
                capture(lm, ("attn", "mlp"), positions="last") as last:
            model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra)
            embedded = lm.embed_tokens(ids).to("cpu")
    except (UserError, RuntimeError, IndexError) as err:  # a hook read a misshapen output
        report.missing = f"the forward with the roles' hooks failed: {str(err)[:200].rstrip('.')}"
        return report
    finally:
        for h in handles:
            h.remove()
    if blocks[0]:
        report.dtype = blocks[0][0].dtype
        report.tolerance = tolerance(report.dtype)
    report.missing = _missing(lm, seen, blocks, cap, last)
    if report.missing:
        return report
    report.nonfinite = _nonfinite(lm, seen["input"][0], [b[0] for b in blocks])
    if report.nonfinite:
        return report
    h = seen["input"][0]
    emb = embedded.to(h.dtype)
    if seen["positions"]:
        emb = emb + seen["positions"][0].to(h.dtype)
    report.errors.append(("the embedding", _relative(h, [emb])))
    for i, out in enumerate(b[0] for b in blocks):
        a = cap.get("attn", i).to(out.dtype).reshape(out.shape)
        m = cap.get("mlp", i).to(out.dtype).reshape(out.shape)
        h = h.to(out.dtype)
        report.errors.append((f"layer {i}", _relative(out, [(h + a) + m, (h + m) + a,
                                                           h + (a + m)])))
        h = out
    report.errors.append(("the final norm", _relative(seen["final"][0], [h])))
    if report.ok:
        _check_heads(lm, report, ids, extra)
    return report


def heads_tolerance(dtype: torch.dtype, n_heads: int) -> float:
    """Heads are summed in float32 from the projection's input: a few float32 epsilons per
    sqrt(head) of rounding, or the rounding of the model's own (wider-eps) output."""
    return max(4 * n_heads ** 0.5 * torch.finfo(torch.float32).eps, tolerance(dtype))


def _check_heads(lm, report: RolesCheck, ids: Tensor, extra: dict) -> None:
    """Do the heads (plus the bias term) add up to ``attn`` in every layer? Sets
    ``report.heads_refusal`` to one sentence where they do not (the model stays usable)."""
    why = None
    try:
        with torch.inference_mode(), capture(lm, ("attn", "heads"), positions="all") as cap:
            lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra)
        n_heads = cap.get("heads", 0).shape[-2]
        report.heads_tolerance = heads_tolerance(report.dtype, n_heads)
        for i in range(lm.n_layers):
            total = cap.get("heads", i).double().sum(-2) + cap.head_bias(i).double()
            report.heads_errors.append((f"layer {i}", _relative(cap.get("attn", i), [total])))
    except (UserError, RuntimeError, IndexError, ValueError) as err:
        why = str(err)[:200].rstrip(".")
    bad = next(((w, e) for w, e in report.heads_errors if not e <= report.heads_tolerance), None)
    if why is None and bad is not None:
        why = (f"at {bad[0]} its heads plus the output projection's bias do not add up to the "
               f"attention output (relative error {bad[1]:.2g}, tolerance "
               f"{report.heads_tolerance:.1g})")
    if why is not None:
        report.heads_refusal = (f"the heads role is not available for this {report.model_type} "
                                f"model: {why}; analyse its attention as a whole (attn).")


def _missing(lm, seen: dict, blocks: list, cap, last) -> str | None:
    """What did not run exactly once, or a role whose last-token rows are not its output's."""
    runs = [("block 0", len(seen["input"])), ("the final norm", len(seen["final"]))]
    runs += [(f"block {i}", len(s)) for i, s in enumerate(blocks)]
    if lm.roles.positions:
        runs.append((f"the position embedding ({lm.roles.positions})", len(seen["positions"])))
    for role in ("attn", "mlp"):
        path = getattr(lm.roles, role).path
        runs += [(f"layer {i}'s {role} module ({path})", cap.chunks(role, i))
                 for i in range(lm.n_layers)]
    for name, count in runs:
        if count != 1:
            return f"{name} ran {count} times in one forward"
    for role in ("attn", "mlp"):
        for i in range(lm.n_layers):
            full, rows = cap.get(role, i), last.get(role, i)
            if full.dim() != 3 or rows.shape != full[:, -1].shape or not torch.equal(
                    rows, full[:, -1]):
                return (f"layer {i}'s {role} rows at the last token are not those of its "
                        f"output (shape {tuple(rows.shape)}; a module that sees (N*T) x D "
                        "rows must be marked flat)")
    return None


def _bad_tensor(module) -> str | None:
    """The first parameter or buffer of ``module`` holding NaN or inf."""
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def _nonfinite(lm, embedded: Tensor, outputs: list[Tensor]) -> str | None:
    """Where the forward first turned NaN or inf, named by the tensor that holds it."""
    if not bool(torch.isfinite(embedded).all()):
        bad = _bad_tensor(lm.model.get_submodule(lm.roles.embed))
        return (f"the embedding ({lm.roles.embed}.{bad})" if bad else
                "the embedding (block 0's input)")
    for i, out in enumerate(outputs):
        if not bool(torch.isfinite(out).all()):
            bad = _bad_tensor(lm.blocks[i])
            return (f"layer {i} ({lm.roles.blocks}.{i}.{bad})" if bad else
                    f"layer {i}'s output")
    return None


def verify_roles(lm) -> RolesCheck:
    """``measure_roles``, raising one ``UserError`` sentence when something does not add up."""
    reason = refusal(getattr(lm.model, "config", None))
    if reason:
        raise UserError(reason)
    report = measure_roles(lm)
    if report.ok:
        lm.heads_refusal = report.heads_refusal
        return report
    fix = ("add its roles to llm_fourier.model.architectures.ROLES (see ARCHITECTURE.md), or pass "
           "--skip-roles-check (load_model(..., verify=False)) at your own risk")
    if report.nonfinite:
        raise UserError(f"the weights of {lm.name} hold NaN or inf in {report.nonfinite}: the "
                        "check's forward gives non-finite values there, so every lens, probe "
                        "and filter after it would too; the weights are damaged: copy or "
                        "download them again.")
    if report.missing:
        raise UserError(f"the roles of this {report.model_type} model are wrong: "
                        f"{report.missing}; {fix}.")
    where, err = report.failure
    pos = " plus position embeddings" if lm.roles.positions else ""
    text = {"the embedding": "the embedding (block 0's input is not the model's scaled token "
                             f"embedding{pos})",
            "the final norm": "the final norm (its input is not the last block's output)",
            }.get(where, f"{where} (the block's output is not its input plus its attention and "
                         "MLP contributions)")
    raise UserError(f"the residual stream of this {report.model_type} model does not add up "
                    f"at {text}: relative error {err:.2g}, tolerance {report.tolerance:.1g} "
                    f"for {str(report.dtype).replace('torch.', '')}, so its roles are wrong "
                    f"and captures, lens and filters would be too; {fix}.")

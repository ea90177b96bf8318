"""Expressive scores per domain (exact per example) and the domain-general score.

For a unit u and domain d: E_d[u] = mean over d's examples of |dL_i/dgate_u|, L_i being example i's
own loss. Gates are per example and the loss is summed over the batch, so one backward pass gives
every example's own gate gradient exactly (gate_i only touches example i). Model weights need no
gradient here.

Head scores are l2-normalized within each layer (the paper); FFN scores across layers (the
released code). Domain-general score = mean over domains - lambda * population variance over
domains; the winning-ticket score is the expressive score of all training data pooled.

Granularity. With ``granularity="neuron"`` every FFN intermediate neuron has a gate of its own too (a
pre-hook on the FFN output projection scales its input column), and the same single backward pass gives
each example's gradient for every neuron: `expressive_scores` then also returns per-neuron sums (D, L, I),
normalized within each layer (as heads, Molchanov et al. 2017), and `UnitScores.doge / worst / winning
(granularity="neuron")` rank heads and neurons. Block scores are computed in both cases.

The per-example gradients also give each domain mean's sampling variance (sum of squares), hence a
noise-corrected between-domain variance: with D domains, the observed population variance of the
domain means m_d = mu_d + e_d (Var e_d = v_d) has expectation var(mu) + (D - 1) / D * mean(v), so
var(mu) is estimated by var(m) - (D - 1) / D * mean(v), floored at 0 (method ``doge-nc``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dogetickets.data.batching import batch_indices, collate, model_inputs, to_device
from dogetickets.data.tasks import Encoded, Task
from dogetickets.models.units import GRANULARITIES, Units
from dogetickets.progress import progress_bar


def check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r} (one of {', '.join(GRANULARITIES)})")


def _per_domain(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    return total / count.astype(np.float64).reshape(-1, *([1] * (total.ndim - 1)))


def _sampling_var(total: np.ndarray, sq: np.ndarray, count: np.ndarray) -> np.ndarray:
    n = count.astype(np.float64).reshape(-1, *([1] * (total.ndim - 1)))
    return np.maximum(sq - total**2 / n, 0.0) / np.maximum(n - 1, 1) / n


@dataclass
class DomainScores:
    """Raw sums of |gradient| per domain, so domains and pooled data can be combined exactly."""

    domains: list[str]
    head_sum: np.ndarray  # (D, L, H)
    ffn_sum: np.ndarray  # (D, L)
    count: np.ndarray  # (D,)
    head_sq: np.ndarray | None = None  # (D, L, H) sums of squares, for the sampling variance
    ffn_sq: np.ndarray | None = None  # (D, L)
    neuron_sum: np.ndarray | None = None  # (D, L, I), with granularity "neuron"
    neuron_sq: np.ndarray | None = None  # (D, L, I)

    def expressive(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-domain means, (D, L, H) and (D, L)."""
        return _per_domain(self.head_sum, self.count), _per_domain(self.ffn_sum, self.count)

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """Expressive scores over all training data pooled, (L, H) and (L,)."""
        n = float(self.count.sum())
        return self.head_sum.sum(0) / n, self.ffn_sum.sum(0) / n

    def sampling_var(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Sampling variance of each domain mean (sample variance / n), (D, L, H) and (D, L); None
        without sums of squares."""
        if self.head_sq is None or self.ffn_sq is None:
            return None
        return _sampling_var(self.head_sum, self.head_sq, self.count), _sampling_var(self.ffn_sum, self.ffn_sq,
                                                                                    self.count)

    def neuron_expressive(self) -> np.ndarray | None:
        """Per-domain means of the neurons, (D, L, I); None without neuron scores."""
        return None if self.neuron_sum is None else _per_domain(self.neuron_sum, self.count)

    def neuron_pooled(self) -> np.ndarray | None:
        """The neurons' expressive scores over all training data pooled, (L, I)."""
        return None if self.neuron_sum is None else self.neuron_sum.sum(0) / float(self.count.sum())

    def neuron_sampling_var(self) -> np.ndarray | None:
        """Sampling variance of each domain mean of the neurons, (D, L, I)."""
        if self.neuron_sum is None or self.neuron_sq is None:
            return None
        return _sampling_var(self.neuron_sum, self.neuron_sq, self.count)


Autocast = Callable[[], AbstractContextManager]  # e.g. `Accelerator.autocast`


def per_example_gate_grads(
    model: nn.Module,
    units: Units,
    task: Task,
    batch: dict[str, torch.Tensor],
    autocast: Autocast | None = None,
    granularity: str = "block",
) -> tuple[torch.Tensor, ...]:
    """dL_i/dgate for each example i of the batch: (B, L, H) and (B, L) (fp32 gates, the forward under
    `autocast()` if given); with granularity "neuron" also (B, L, I) for every FFN neuron, from the same
    backward pass."""
    check_granularity(granularity)
    B = batch["input_ids"].shape[0]
    device = batch["input_ids"].device
    heads = torch.ones(B, units.num_layers, units.num_heads, device=device, requires_grad=True)
    ffn = torch.ones(B, units.num_layers, device=device, requires_grad=True)
    gates = [heads, ffn]
    if granularity == "neuron":
        gates.append(torch.ones(B, units.num_layers, units.intermediate_size, device=device, requires_grad=True))
    with units.gated(*gates), (autocast or nullcontext)():
        logits = model(**model_inputs(batch)).logits
        loss = task.per_example_loss(logits, batch["labels"]).sum()
    return torch.autograd.grad(loss, gates)


def expressive_scores(
    model: nn.Module,
    units: Units,
    task: Task,
    data: Encoded,
    batch_size: int,
    pad_id: int,
    device: torch.device | str = "cpu",
    show_progress: bool = True,
    autocast: Autocast | None = None,
    granularity: str = "block",
) -> DomainScores:
    """Accumulate |dL_i/dgate| per domain over `data` (eval mode: no dropout), the forward passes under
    `autocast()` if given (as training: pass the training accelerator's `autocast` when it runs in bf16).
    With granularity "neuron" the sums of every FFN neuron too (`neuron_sum`, `neuron_sq`: (D, L, I)).

    The model comes back as it came: every submodule's train/eval mode and every parameter's
    requires_grad are restored.
    """
    modes = [(m, m.training) for m in model.modules()]
    needs_grad = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    D, L, H = len(data.domain_names), units.num_layers, units.num_heads
    head_sum = torch.zeros(D, L, H, dtype=torch.float64)
    ffn_sum = torch.zeros(D, L, dtype=torch.float64)
    head_sq = torch.zeros(D, L, H, dtype=torch.float64)
    ffn_sq = torch.zeros(D, L, dtype=torch.float64)
    check_granularity(granularity)
    neurons = granularity == "neuron"
    neuron_sum = torch.zeros(D, L, units.intermediate_size, dtype=torch.float64) if neurons else None
    neuron_sq = torch.zeros_like(neuron_sum) if neuron_sum is not None else None
    count = torch.zeros(D, dtype=torch.long)
    batches = batch_indices(data.lengths, batch_size, shuffle=False)
    try:
        with progress_bar("scoring", total=len(data), enabled=show_progress) as advance:
            for idx in batches:
                host = collate(data, idx, pad_id)
                grads = per_example_gate_grads(model, units, task, to_device(host, device), autocast, granularity)
                dom = host["domain"]
                gh, gf, *gn = (g.abs().double().cpu() for g in grads)
                head_sum.index_add_(0, dom, gh)
                ffn_sum.index_add_(0, dom, gf)
                head_sq.index_add_(0, dom, gh * gh)
                ffn_sq.index_add_(0, dom, gf * gf)
                if neuron_sum is not None and neuron_sq is not None:
                    neuron_sum.index_add_(0, dom, gn[0])
                    neuron_sq.index_add_(0, dom, gn[0] * gn[0])
                count += torch.bincount(dom, minlength=D)
                advance(len(idx))
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in needs_grad:
            p.requires_grad_(flag)
    return DomainScores(list(data.domain_names), head_sum.numpy(), ffn_sum.numpy(), count.numpy(),
                        head_sq.numpy(), ffn_sq.numpy(),
                        None if neuron_sum is None else neuron_sum.numpy(),
                        None if neuron_sq is None else neuron_sq.numpy())


def normalize(head: np.ndarray, ffn: np.ndarray, heads: bool = True, ffns: bool = True) -> tuple:
    """l2-normalize head scores within each layer (last axis) and FFN scores across layers (last axis: given
    neuron scores, (..., L, I), within each layer)."""
    head = np.asarray(head, dtype=np.float64)
    ffn = np.asarray(ffn, dtype=np.float64)
    if heads:
        head = head / np.maximum(np.linalg.norm(head, axis=-1, keepdims=True), 1e-20)
    if ffns:
        ffn = ffn / np.maximum(np.linalg.norm(ffn, axis=-1, keepdims=True), 1e-20)
    return head, ffn


def domain_general(values: np.ndarray, lam: float, sampling_var: np.ndarray | None = None) -> np.ndarray:
    """mean over domains (axis 0) - lam * population variance over domains; with `sampling_var` (the
    sampling variance of each domain mean, same shape as `values`) the noise-corrected variance."""
    values = np.asarray(values, dtype=np.float64)
    return values.mean(0) - lam * between_domain_var(values, sampling_var)


def between_domain_var(values: np.ndarray, sampling_var: np.ndarray | None = None) -> np.ndarray:
    """Population variance over domains (axis 0); minus (D - 1) / D * the mean sampling variance of the
    domain means, floored at 0, when `sampling_var` is given (see the module docstring)."""
    values = np.asarray(values, dtype=np.float64)
    var = values.var(0)
    if sampling_var is None:
        return var
    D = values.shape[0]
    return np.maximum(var - (D - 1) / D * np.asarray(sampling_var, dtype=np.float64).mean(0), 0.0)


def _scale(raw: np.ndarray, normalized: np.ndarray) -> np.ndarray:
    """normalized / raw elementwise (1 where raw is 0): the normalizer, a constant per (domain, layer)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(raw > 0, normalized / np.where(raw > 0, raw, 1), 1.0)


@dataclass
class UnitScores:
    """Everything selection and the figures need, JSON-ready."""

    domains: list[str]
    per_domain_heads: np.ndarray  # (D, L, H), normalized
    per_domain_ffn: np.ndarray  # (D, L), normalized
    pooled_heads: np.ndarray  # (L, H), normalized
    pooled_ffn: np.ndarray  # (L,), normalized
    counts: np.ndarray
    # sampling variance of each (normalized) domain mean, (D, L, H) and (D, L); None in old scores.json
    sampling_var_heads: np.ndarray | None = None
    sampling_var_ffn: np.ndarray | None = None
    # FFN neurons (scored with granularity "neuron"), normalized within each layer: (D, L, I), (L, I), (D, L, I)
    per_domain_neurons: np.ndarray | None = None
    pooled_neurons: np.ndarray | None = None
    sampling_var_neurons: np.ndarray | None = None

    @classmethod
    def from_domain_scores(cls, s: DomainScores, norm_heads: bool = True, norm_ffn: bool = True) -> UnitScores:
        """Normalized scores; `norm_ffn` normalizes FFN blocks across layers and neurons within each layer."""
        raw_h, raw_f = s.expressive()
        h, f = normalize(raw_h, raw_f, norm_heads, norm_ffn)
        ph, pf = normalize(*s.pooled(), norm_heads, norm_ffn)
        sv = s.sampling_var()
        vh = vf = None
        if sv is not None:  # the normalizer is a constant per (domain, layer): the variance scales by its square
            vh, vf = sv[0] * _scale(raw_h, h) ** 2, sv[1] * _scale(raw_f, f) ** 2
        n = pn = vn = None
        raw_n, raw_pn = s.neuron_expressive(), s.neuron_pooled()
        if raw_n is not None and raw_pn is not None:
            n = normalize(raw_h, raw_n, False, norm_ffn)[1]
            pn = normalize(ph, raw_pn, False, norm_ffn)[1]
            sn = s.neuron_sampling_var()
            vn = None if sn is None else sn * _scale(raw_n, n) ** 2
        return cls(s.domains, h, f, ph, pf, s.count, vh, vf, n, pn, vn)

    @property
    def has_sampling_var(self) -> bool:
        return self.sampling_var_heads is not None and self.sampling_var_ffn is not None

    @property
    def has_neurons(self) -> bool:
        """Whether these scores rank FFN neurons too (scored with granularity "neuron")."""
        return self.per_domain_neurons is not None and self.pooled_neurons is not None

    def _ffn(self, granularity: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(per-domain, sampling variance, pooled) FFN scores of `granularity`."""
        check_granularity(granularity)
        if granularity == "block":
            return self.per_domain_ffn, self.sampling_var_ffn, self.pooled_ffn
        if not self.has_neurons:
            raise ValueError("these scores have no FFN neuron scores (score again with granularity \"neuron\")")
        return self.per_domain_neurons, self.sampling_var_neurons, self.pooled_neurons  # type: ignore[return-value]

    def doge(self, lam: float, variance: str = "paper", granularity: str = "block") -> tuple[np.ndarray, np.ndarray]:
        """mean - lam * between-domain variance: the observed one ("paper") or noise-corrected ("corrected"),
        of heads and FFN blocks, or of heads and FFN neurons (granularity "neuron": (L, H), (L, I))."""
        per_domain, sv, _ = self._ffn(granularity)
        if variance == "corrected":
            if not self.has_sampling_var or sv is None:
                raise ValueError("these scores have no sampling variances (score again)")
            return (domain_general(self.per_domain_heads, lam, self.sampling_var_heads),
                    domain_general(per_domain, lam, sv))
        return domain_general(self.per_domain_heads, lam), domain_general(per_domain, lam)

    def worst(self, granularity: str = "block") -> tuple[np.ndarray, np.ndarray]:
        """Each unit's lowest score over the training domains."""
        return self.per_domain_heads.min(0), self._ffn(granularity)[0].min(0)

    def winning(self, granularity: str = "block") -> tuple[np.ndarray, np.ndarray]:
        return self.pooled_heads, self._ffn(granularity)[2]

    def to_json(self, lambdas: list[float]) -> dict:
        """The scores as JSON; neuron scores (when present) under "neurons" beside "heads" and "ffn" in the
        per-domain, winning and sampling-variance entries (the doge combinations are of heads and blocks)."""
        D, L, H = self.per_domain_heads.shape
        extra = {}

        def entry(heads: np.ndarray, ffn: np.ndarray, neurons: np.ndarray | None) -> dict:
            out = {"heads": heads.tolist(), "ffn": ffn.tolist()}
            return out if neurons is None else out | {"neurons": neurons.tolist()}

        if self.has_sampling_var:
            sn = self.sampling_var_neurons
            extra["per_domain_sampling_var"] = {
                d: entry(self.sampling_var_heads[i], self.sampling_var_ffn[i], None if sn is None else sn[i])
                for i, d in enumerate(self.domains)
            }
        pn = self.per_domain_neurons
        return {
            "domains": self.domains,
            "num_layers": L,
            "num_heads": H,
            "counts": {d: int(c) for d, c in zip(self.domains, self.counts, strict=True)},
            "per_domain": {
                d: entry(self.per_domain_heads[i], self.per_domain_ffn[i], None if pn is None else pn[i])
                for i, d in enumerate(self.domains)
            },
            "combined": {
                "winning": entry(self.pooled_heads, self.pooled_ffn, self.pooled_neurons),
                **{
                    f"doge-l{lam:g}": {"lambda": lam, "heads": h.tolist(), "ffn": f.tolist()}
                    for lam in lambdas
                    for h, f in [self.doge(lam)]
                },
            },
            **extra,
        }

    @classmethod
    def from_json(cls, raw: dict) -> UnitScores:
        doms = raw["domains"]
        sv = raw.get("per_domain_sampling_var")
        neurons = "neurons" in raw["per_domain"][doms[0]] if doms else False
        sv_neurons = bool(sv) and neurons and "neurons" in sv[doms[0]]
        return cls(
            doms,
            np.array([raw["per_domain"][d]["heads"] for d in doms]),
            np.array([raw["per_domain"][d]["ffn"] for d in doms]),
            np.array(raw["combined"]["winning"]["heads"]),
            np.array(raw["combined"]["winning"]["ffn"]),
            np.array([raw["counts"][d] for d in doms]),
            np.array([sv[d]["heads"] for d in doms]) if sv else None,
            np.array([sv[d]["ffn"] for d in doms]) if sv else None,
            np.array([raw["per_domain"][d]["neurons"] for d in doms]) if neurons else None,
            np.array(raw["combined"]["winning"]["neurons"]) if neurons else None,
            np.array([sv[d]["neurons"] for d in doms]) if sv_neurons else None,
        )

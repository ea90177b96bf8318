"""Expressive scores per domain (exact per example) and the domain-general score.

For a unit u and domain d: E_d[u] = mean over d's examples of |dL_i/dgate_u|, L_i being example i's
own loss. Gates are per example and the loss is summed over the batch, so one backward pass gives
every example's own gate gradient exactly (gate_i only touches example i). Model weights need no
gradient here.

Head scores are l2-normalized within each layer (the paper); FFN scores across layers (the
released code). Domain-general score = mean over domains - lambda * population variance over
domains; the winning-ticket score is the expressive score of all training data pooled.

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
from dogetickets.models.units import Units
from dogetickets.progress import progress_bar


@dataclass
class DomainScores:
    """Raw sums of |gradient| per domain, so domains and pooled data can be combined exactly."""

    domains: list[str]
    head_sum: np.ndarray  # (D, L, H)
    ffn_sum: np.ndarray  # (D, L)
    count: np.ndarray  # (D,)
    head_sq: np.ndarray | None = None  # (D, L, H) sums of squares, for the sampling variance
    ffn_sq: np.ndarray | None = None  # (D, L)

    def expressive(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-domain means, (D, L, H) and (D, L)."""
        c = self.count.astype(np.float64)
        return self.head_sum / c[:, None, None], self.ffn_sum / c[:, None]

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """Expressive scores over all training data pooled, (L, H) and (L,)."""
        n = float(self.count.sum())
        return self.head_sum.sum(0) / n, self.ffn_sum.sum(0) / n

    def sampling_var(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Sampling variance of each domain mean (sample variance / n), (D, L, H) and (D, L); None
        without sums of squares."""
        if self.head_sq is None or self.ffn_sq is None:
            return None
        c = self.count.astype(np.float64)
        out = []
        for total, sq in ((self.head_sum, self.head_sq), (self.ffn_sum, self.ffn_sq)):
            n = c.reshape(-1, *([1] * (total.ndim - 1)))
            var = np.maximum(sq - total**2 / n, 0.0) / np.maximum(n - 1, 1)
            out.append(var / n)
        return out[0], out[1]


Autocast = Callable[[], AbstractContextManager]  # e.g. `Accelerator.autocast`


def per_example_gate_grads(
    model: nn.Module, units: Units, task: Task, batch: dict[str, torch.Tensor], autocast: Autocast | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """dL_i/dgate for each example i of the batch: (B, L, H) and (B, L) (fp32 gates, the forward under
    `autocast()` if given)."""
    B = batch["input_ids"].shape[0]
    device = batch["input_ids"].device
    heads = torch.ones(B, units.num_layers, units.num_heads, device=device, requires_grad=True)
    ffn = torch.ones(B, units.num_layers, device=device, requires_grad=True)
    with units.gated(heads, ffn), (autocast or nullcontext)():
        logits = model(**model_inputs(batch)).logits
        loss = task.per_example_loss(logits, batch["labels"]).sum()
    gh, gf = torch.autograd.grad(loss, (heads, ffn))
    return gh, gf


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
) -> DomainScores:
    """Accumulate |dL_i/dgate| per domain over `data` (eval mode: no dropout), the forward passes under
    `autocast()` if given (as training: pass the training accelerator's `autocast` when it runs in bf16).

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
    count = torch.zeros(D, dtype=torch.long)
    batches = batch_indices(data.lengths, batch_size, shuffle=False)
    try:
        with progress_bar("scoring", total=len(data), enabled=show_progress) as advance:
            for idx in batches:
                host = collate(data, idx, pad_id)
                gh, gf = per_example_gate_grads(model, units, task, to_device(host, device), autocast)
                dom = host["domain"]
                gh, gf = gh.abs().double().cpu(), gf.abs().double().cpu()
                head_sum.index_add_(0, dom, gh)
                ffn_sum.index_add_(0, dom, gf)
                head_sq.index_add_(0, dom, gh * gh)
                ffn_sq.index_add_(0, dom, gf * gf)
                count += torch.bincount(dom, minlength=D)
                advance(len(idx))
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in needs_grad:
            p.requires_grad_(flag)
    return DomainScores(list(data.domain_names), head_sum.numpy(), ffn_sum.numpy(), count.numpy(),
                        head_sq.numpy(), ffn_sq.numpy())


def normalize(head: np.ndarray, ffn: np.ndarray, heads: bool = True, ffns: bool = True) -> tuple:
    """l2-normalize head scores within each layer (last axis) and FFN scores across layers."""
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

    @classmethod
    def from_domain_scores(cls, s: DomainScores, norm_heads: bool = True, norm_ffn: bool = True) -> UnitScores:
        raw_h, raw_f = s.expressive()
        h, f = normalize(raw_h, raw_f, norm_heads, norm_ffn)
        ph, pf = normalize(*s.pooled(), norm_heads, norm_ffn)
        sv = s.sampling_var()
        vh = vf = None
        if sv is not None:  # the normalizer is a constant per (domain, layer): the variance scales by its square
            with np.errstate(divide="ignore", invalid="ignore"):
                sh = np.where(raw_h > 0, h / np.where(raw_h > 0, raw_h, 1), 1.0)
                sf = np.where(raw_f > 0, f / np.where(raw_f > 0, raw_f, 1), 1.0)
            vh, vf = sv[0] * sh**2, sv[1] * sf**2
        return cls(s.domains, h, f, ph, pf, s.count, vh, vf)

    @property
    def has_sampling_var(self) -> bool:
        return self.sampling_var_heads is not None and self.sampling_var_ffn is not None

    def doge(self, lam: float, variance: str = "paper") -> tuple[np.ndarray, np.ndarray]:
        """mean - lam * between-domain variance: the observed one ("paper") or noise-corrected ("corrected")."""
        if variance == "corrected":
            if not self.has_sampling_var:
                raise ValueError("these scores have no sampling variances (score again)")
            return (domain_general(self.per_domain_heads, lam, self.sampling_var_heads),
                    domain_general(self.per_domain_ffn, lam, self.sampling_var_ffn))
        return domain_general(self.per_domain_heads, lam), domain_general(self.per_domain_ffn, lam)

    def worst(self) -> tuple[np.ndarray, np.ndarray]:
        """Each unit's lowest score over the training domains."""
        return self.per_domain_heads.min(0), self.per_domain_ffn.min(0)

    def winning(self) -> tuple[np.ndarray, np.ndarray]:
        return self.pooled_heads, self.pooled_ffn

    def to_json(self, lambdas: list[float]) -> dict:
        D, L, H = self.per_domain_heads.shape
        extra = {}
        if self.has_sampling_var:
            extra["per_domain_sampling_var"] = {
                d: {"heads": self.sampling_var_heads[i].tolist(), "ffn": self.sampling_var_ffn[i].tolist()}
                for i, d in enumerate(self.domains)
            }
        return {
            "domains": self.domains,
            "num_layers": L,
            "num_heads": H,
            "counts": {d: int(c) for d, c in zip(self.domains, self.counts, strict=True)},
            "per_domain": {
                d: {"heads": self.per_domain_heads[i].tolist(), "ffn": self.per_domain_ffn[i].tolist()}
                for i, d in enumerate(self.domains)
            },
            "combined": {
                "winning": {"heads": self.pooled_heads.tolist(), "ffn": self.pooled_ffn.tolist()},
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
        return cls(
            doms,
            np.array([raw["per_domain"][d]["heads"] for d in doms]),
            np.array([raw["per_domain"][d]["ffn"] for d in doms]),
            np.array(raw["combined"]["winning"]["heads"]),
            np.array(raw["combined"]["winning"]["ffn"]),
            np.array([raw["counts"][d] for d in doms]),
            np.array([sv[d]["heads"] for d in doms]) if sv else None,
            np.array([sv[d]["ffn"] for d in doms]) if sv else None,
        )

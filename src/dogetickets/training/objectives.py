"""Training objectives behind one interface (as DomainBed's algorithms): ERM and IRMv1.

An objective decides how a step's examples are drawn and how their loss is formed; the training
loop does the rest. VREx or GroupDRO would be one more small class here.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dogetickets.config import IRMConfig
from dogetickets.data.batching import BUCKET_FACTOR, batch_indices, sort_within_chunks
from dogetickets.data.tasks import Encoded, Task


class Objective:
    name = ""

    def epoch_batches(self, data: Encoded, batch_size: int, seed: int, bucket: bool) -> list[np.ndarray]:
        return batch_indices(data.lengths, batch_size, shuffle=True, seed=seed, bucket=bucket)

    def steps_per_epoch(self, data: Encoded, batch_size: int) -> int:
        return math.ceil(len(data) / batch_size)

    def loss(self, task: Task, logits: torch.Tensor, batch: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        raise NotImplementedError

    def resets_optimizer(self, step: int) -> bool:
        return False


class ERM(Objective):
    """Empirical risk minimisation: the mean of the examples' losses over shuffled pooled batches."""

    name = "erm"

    def loss(self, task: Task, logits: torch.Tensor, batch: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        return task.per_example_loss(logits, batch["labels"]).mean()


class IRM(Objective):
    """IRMv1 (Arjovsky et al. 2019): each step holds a minibatch from every training domain.

    loss = mean_d risk_d + w * mean_d penalty_d, penalty_d = (d risk_d(scale * logits) / d scale)^2 at
    scale = 1; w = 1 before `anneal_steps`, then `penalty_weight`; when w > 1 the loss is divided by
    w, and the optimizer is reset at the switch, as in the reference implementation.
    """

    name = "irm"

    def __init__(self, cfg: IRMConfig) -> None:
        self.penalty_weight = cfg.penalty_weight
        self.anneal_steps = cfg.anneal_steps
        self.num_domains = 1  # set by epoch_batches

    def weight(self, step: int) -> float:
        return self.penalty_weight if step >= self.anneal_steps else 1.0

    def resets_optimizer(self, step: int) -> bool:
        return step == self.anneal_steps and self.anneal_steps > 0 and self.penalty_weight != 1.0

    def epoch_batches(self, data: Encoded, batch_size: int, seed: int, bucket: bool) -> list[np.ndarray]:
        """Zip per-domain batches (each batch_size / D) so every step sees every domain.

        Bucketed as ERM's batches are: each domain's shuffled stream is sorted by length within chunks
        of BUCKET_FACTOR steps, so the k-th step of a chunk takes examples of about the same length rank
        from every domain (little padding), and the steps are then shuffled."""
        D = self.num_domains = len(data.domain_names)
        per = max(1, batch_size // D)
        steps = self.steps_per_epoch(data, batch_size)
        rng = np.random.default_rng(seed)
        streams = []
        for d in range(D):
            idx = np.nonzero(data.domain == d)[0]
            need = steps * per
            reps = [rng.permutation(idx) for _ in range(math.ceil(need / max(len(idx), 1)))]
            stream = np.concatenate(reps)[:need]
            if bucket:
                stream = sort_within_chunks(stream, data.lengths, per * BUCKET_FACTOR)
            streams.append(stream.reshape(steps, per))
        order = rng.permutation(steps) if bucket else np.arange(steps)
        return [np.concatenate([s[k] for s in streams]) for k in order]

    @staticmethod
    def penalty(task: Task, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        scale = torch.ones((), device=logits.device, dtype=logits.dtype, requires_grad=True)
        risk = task.per_example_loss(logits * scale, labels).mean()
        (grad,) = torch.autograd.grad(risk, [scale], create_graph=True)
        return grad.pow(2)

    def loss(self, task: Task, logits: torch.Tensor, batch: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        # a batch of `epoch_batches` is one equal, contiguous block per domain, in domain order: split
        # it by position (no host sync, as grouping by the domain tensor's values would need)
        risks, penalties = [], []
        for lg, y in zip(logits.chunk(self.num_domains), batch["labels"].chunk(self.num_domains), strict=True):
            risks.append(task.per_example_loss(lg, y).mean())
            penalties.append(self.penalty(task, lg, y))
        w = self.weight(step)
        loss = torch.stack(risks).mean() + w * torch.stack(penalties).mean()
        return loss / w if w > 1.0 else loss


def make_objective(name: str, irm: IRMConfig) -> Objective:
    return IRM(irm) if name == "irm" else ERM()

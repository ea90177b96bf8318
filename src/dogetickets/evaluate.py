"""Predictions and per-domain metrics (accuracy or entity F1): each domain, their mean and the worst."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dogetickets.data.batching import batch_indices, collate, model_inputs, to_device
from dogetickets.data.tasks import Encoded, Task
from dogetickets.progress import progress_bar


@torch.inference_mode()
def predict(
    model: nn.Module,
    task: Task,
    data: Encoded,
    batch_size: int,
    pad_id: int,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
    description: str = "evaluate",
    autocast: Any = None,
) -> list:
    """Predictions in `data` order (length-sorted batches inside, order restored)."""
    was_training = model.training
    model.eval()
    preds: list = [None] * len(data)
    with progress_bar(description, total=len(data), enabled=show_progress) as advance:
        for idx in batch_indices(data.lengths, batch_size, shuffle=False):
            inputs = to_device(model_inputs(collate(data, idx, pad_id)), device)
            if autocast is not None:
                with autocast():
                    logits = model(**inputs).logits
            else:
                logits = model(**inputs).logits
            for i, p in zip(idx, task.predictions(logits.float(), idx, data), strict=True):
                preds[int(i)] = p
            advance(len(idx))
    model.train(was_training)
    return preds


def shard(n: int, index: int, count: int) -> np.ndarray:
    """The share of process `index` of `count` in n examples: every count-th one from `index`."""
    return np.arange(n)[index::count]


def unshard(parts: Sequence[list]) -> list:
    """What `shard` split, in example order again: `parts[k]` holds the values of process k's share."""
    out: list = [None] * sum(len(p) for p in parts)
    for k, part in enumerate(parts):
        out[k :: len(parts)] = part
    return out


def metrics(task: Task, data: Encoded, preds: list) -> dict[str, Any]:
    """{"per_domain": {...}, "mean": .., "worst": .., "score": mean} over the domains of `data`."""
    golds = task.golds(data, np.arange(len(data)))
    per = {}
    for d, name in enumerate(data.domain_names):
        sel = np.nonzero(data.domain == d)[0]
        per[name] = task.score([golds[i] for i in sel], [preds[i] for i in sel])
    values = list(per.values())
    mean = float(np.mean(values)) if values else float("nan")
    return {"per_domain": per, "mean": mean, "worst": float(min(values)) if values else float("nan"), "score": mean}


def prediction_rows(task: Task, data: Encoded, preds: list, split: str) -> list[dict[str, Any]]:
    """One row per example: split, domain, index within the domain, gold, predicted."""
    golds = task.golds(data, np.arange(len(data)))
    return [
        {
            "split": split,
            "domain": data.domain_names[int(data.domain[i])],
            "index": int(data.index[i]),
            "gold": task.readable(golds[i]),
            "pred": task.readable(preds[i]),
        }
        for i in range(len(data))
    ]

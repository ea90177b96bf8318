"""Length-bucketed batches with dynamic padding over tokenized data (tokenized once per run)."""

from __future__ import annotations

import time

import numpy as np
import torch

from dogetickets.data.tasks import IGNORE, Encoded

BUCKET_FACTOR = 50  # batches per length-sorted chunk: local sorting keeps randomness
COLLATE_SECONDS = [0.0]  # time spent building batches in this process (for the time report)


def batch_indices(
    lengths: np.ndarray,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    bucket: bool = True,
) -> list[np.ndarray]:
    """Index batches. Training: shuffle, sort by length within chunks, shuffle the batches.
    Evaluation (shuffle=False): sorted by length, so padding is minimal."""
    n = len(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable") if bucket else np.arange(n)
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    if bucket:
        order = sort_within_chunks(order, lengths, batch_size * BUCKET_FACTOR)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def sort_within_chunks(order: np.ndarray, lengths: np.ndarray, chunk: int) -> np.ndarray:
    """`order` with each consecutive chunk of `chunk` indices sorted by length (stable): length buckets that
    keep the shuffle's randomness between chunks."""
    parts = [order[s : s + chunk][np.argsort(lengths[order[s : s + chunk]], kind="stable")]
             for s in range(0, len(order), chunk)]
    return np.concatenate(parts) if parts else order


def collate(data: Encoded, idx: np.ndarray, pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Pad the batch to its longest member (or to `pad_to`); labels padded with IGNORE."""
    t0 = time.perf_counter()
    seqs = [data.input_ids[i] for i in idx]
    width = pad_to or max(len(s) for s in seqs)
    B = len(idx)
    ids = np.full((B, width), pad_id, dtype=np.int64)
    types = np.zeros((B, width), dtype=np.int64)
    mask = np.zeros((B, width), dtype=np.int64)
    tagging = isinstance(data.labels[idx[0]], np.ndarray)
    labels = np.full((B, width), IGNORE, dtype=np.int64) if tagging else np.empty(B, dtype=np.int64)
    for r, i in enumerate(idx):
        n = len(data.input_ids[i])
        ids[r, :n] = data.input_ids[i]
        types[r, :n] = data.token_type_ids[i]
        mask[r, :n] = 1
        if tagging:
            labels[r, :n] = data.labels[i]
        else:
            labels[r] = data.labels[i]
    batch = {
        "input_ids": torch.from_numpy(ids),
        "token_type_ids": torch.from_numpy(types),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(labels),
        "domain": torch.from_numpy(data.domain[idx].copy()),
    }
    COLLATE_SECONDS[0] += time.perf_counter() - t0
    return batch


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """The batch on `device`, copied without making the host wait: from pinned memory to a GPU (a small
    batch pins in microseconds), as is (no copy) on the CPU."""
    device = torch.device(device)
    pin = device.type == "cuda"
    return {k: (v.pin_memory() if pin else v).to(device, non_blocking=True) for k, v in batch.items()}


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the encoder takes (labels and domains stay with us: the loss is per example)."""
    return {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}

"""Many tickets of one model evaluated on the same data, each distinct prefix of layers computed once.

Tickets that remove the same units from layers 0..k-1 compute the same hidden states up to layer k. Taken in
the order of their per-layer patterns (lexicographic: a depth-first walk of the trie of those patterns), each
ticket shares the longest possible prefix with the one before it. Its first k layers then stand in for
themselves: each returns, batch by batch, the very object the same layer returned when the previous ticket
ran, and only layers k and on are computed, in the physically pruned model (`export_pruned`). The encoder's
own loop runs unchanged between the layers (attention masks, DeBERTa's convolution after its first layer,
...), the batches are the same (whole length-sorted batches), so the predictions are bit-identical to those
of each pruned model evaluated alone (tests/test_prefix.py checks it on every architecture).

What is kept: the outputs of the layers a later ticket will replay, over one pass of the data (in this order
a ticket shares with any later one at most what it shares with the next, so a ticket records the layers from
where it starts computing up to that). A lone ticket records nothing. Data whose recorded outputs would exceed
`max_cache_bytes` is evaluated in chunks of whole batches, each chunk walking all the tickets.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from dogetickets.data.batching import batch_indices
from dogetickets.data.tasks import Encoded
from dogetickets.models.export import encoder_layers, export_pruned
from dogetickets.tickets import Ticket

MAX_CACHE_BYTES = 2 * 1024**3
Pattern = tuple[bytes, ...]


def layer_patterns(ticket: Ticket) -> Pattern:
    """What the ticket removes from each layer (heads, FFN block, neurons), one comparable value per layer."""
    masks = ticket.masks()
    return tuple(b"".join(m[layer].numpy().astype(np.uint8).tobytes() for m in masks)
                 for layer in range(ticket.num_layers))


def shared_prefix(a: Pattern | None, b: Pattern) -> int:
    """How many leading layers two tickets' patterns share."""
    if a is None:
        return 0
    k = 0
    while k < len(b) and a[k] == b[k]:
        k += 1
    return k


def _chunks(data: Encoded, batch_size: int, hidden: int, layers: int, max_bytes: int) -> list[np.ndarray]:
    """Example indices in chunks of whole evaluation batches (length-sorted, as `predict` batches them), each
    chunk's recorded outputs of `layers` layers (fp32, padded) within `max_bytes`."""
    chunks: list[np.ndarray] = []
    current: list[np.ndarray] = []
    size = 0
    for idx in batch_indices(data.lengths, batch_size, shuffle=False):
        cost = len(idx) * int(data.lengths[idx].max()) * hidden * 4 * layers
        if current and size + cost > max_bytes:
            chunks.append(np.concatenate(current))
            current, size = [], 0
        current.append(idx)
        size += cost
    if current:
        chunks.append(np.concatenate(current))
    return chunks


class _Recorder:
    """Layer `i`'s forward replaced by a replay of `outputs[i]` for i < `start`, wrapped to record them for
    `start` <= i < `keep`; the layers from `keep` on run as they are."""

    def __init__(self, layers: Sequence[torch.nn.Module], outputs: list[list[Any]], start: int, keep: int) -> None:
        self.layers, self.outputs, self.start, self.keep = layers, outputs, start, keep
        self.calls = [0] * len(layers)

    def __enter__(self) -> _Recorder:
        for i, layer in enumerate(self.layers[: max(self.start, self.keep)]):
            if i < self.start:
                layer.forward = self._replay(i)  # type: ignore[method-assign]
            else:
                self.outputs[i] = []
                layer.forward = self._record(i, layer.forward)  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        for layer in self.layers[: max(self.start, self.keep)]:
            del layer.forward  # the class's forward again

    def _replay(self, i: int) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            out = self.outputs[i][self.calls[i]]
            self.calls[i] += 1
            return out
        return forward

    def _record(self, i: int, inner: Callable[..., Any]) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            out = inner(*args, **kwargs)
            self.outputs[i].append(out)
            return out
        return forward


def evaluate_tickets(
    model: torch.nn.Module,
    tickets: Sequence[Ticket],
    data: Encoded,
    batch_size: int,
    predict: Callable[[torch.nn.Module, Encoded], list],
    max_cache_bytes: int = MAX_CACHE_BYTES,
    advance: Callable[[int], Any] | None = None,
) -> list[list]:
    """Predictions on `data` (in data order) of `model` with each ticket's units removed, as
    `predict(pruned_model, data)` gives them; `model` is untouched. `batch_size` must be the one `predict`
    batches by (chunks hold whole batches). `advance(1)` after each ticket in the last chunk.

    A pruned copy of the model is built for every ticket in every chunk (chunks are rare: data whose recorded
    outputs fit in `max_cache_bytes` is one chunk)."""
    patterns = [layer_patterns(t) for t in tickets]
    order = sorted(range(len(tickets)), key=patterns.__getitem__)
    # where each ticket starts computing (what it shares with the one before) and up to where it records
    starts = [shared_prefix(patterns[a], patterns[b]) for a, b in zip(order, order[1:], strict=False)]
    start, keep = dict(zip(order, [0, *starts], strict=True)), dict(zip(order, [*starts, 0], strict=True))
    hidden = int(getattr(model.config, "hidden_size", 768))
    n_layers = len(encoder_layers(model))
    chunks = _chunks(data, batch_size, hidden, max(starts, default=0), max_cache_bytes)
    preds: list[list] = [[None] * len(data) for _ in tickets]
    for c, idx in enumerate(chunks):
        part = data.subset(idx)
        outputs: list[list[Any]] = [[] for _ in range(n_layers)]
        for i in order:
            t = tickets[i]
            pruned = export_pruned(copy.deepcopy(model), t) if t.pruned_params else model
            with _Recorder(encoder_layers(pruned), outputs, start[i], keep[i]):
                got = predict(pruned, part)
            for j, p in zip(idx, got, strict=True):
                preds[i][int(j)] = p
            if advance is not None and c == len(chunks) - 1:
                advance(1)
    return preds

"""Many tickets evaluated with their shared layers computed once: bit-identical logits to evaluating each
pruned model alone, on every architecture, in one chunk and in many; and the shared layers really skipped."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_architectures import ARCHS, H, L, make

from dogetickets.data.batching import batch_indices, collate
from dogetickets.data.tasks import Encoded
from dogetickets.models.export import encoder_layers, export_pruned
from dogetickets.models.units import Units
from dogetickets.prefix import evaluate_tickets, layer_patterns, shared_prefix
from dogetickets.tickets import Shape, Ticket, random_ticket, select

BATCH = 4


def data(n: int = 11, seed: int = 3) -> Encoded:
    rng = np.random.default_rng(seed)
    ids = [np.concatenate([[1], rng.integers(3, 100, int(k)), [2]]) for k in rng.integers(1, 8, n)]
    return Encoded(ids, [np.zeros_like(x) for x in ids], [int(x) for x in rng.integers(0, 3, n)],
                   np.zeros(n, dtype=np.int64), np.arange(n), ["a"])


def logits_of(model: torch.nn.Module, part: Encoded) -> list[torch.Tensor]:
    """Per-example logits, batched as `evaluate.predict` batches (length-sorted, BATCH at a time)."""
    out: list = [None] * len(part)
    with torch.inference_mode():
        for idx in batch_indices(part.lengths, BATCH, shuffle=False):
            b = collate(part, idx, 0)
            rows = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            for i, row in zip(idx, rows, strict=True):
                out[int(i)] = row.clone()
    return out


def tickets_for(model: torch.nn.Module) -> list[Ticket]:
    """Tickets that share prefixes: the lowest scores in the last layer, so small ones prune only there."""
    shape = Shape.of(Units(model))
    head = np.tile(np.arange(L, 0, -1.0)[:, None], (1, H)) + np.random.default_rng(0).random((L, H)) * 0.1
    ffn = np.arange(L, 0, -1.0) + 0.5
    chosen = [select(head, ffn, shape, s, "winning") for s in (0.0, 0.1, 0.2, 0.35, 0.6)]
    return chosen + [random_ticket(shape, 0.3, 1), random_ticket(shape, 0.5, 2)]


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_layers_give_bit_identical_logits(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make(arch)
    tickets = tickets_for(model)
    d = data()
    alone = [logits_of(export_pruned(copy.deepcopy(model), t) if t.pruned_params else model, d) for t in tickets]
    before = {k: v.clone() for k, v in model.state_dict().items()}

    layer_cls = type(encoder_layers(model)[0])
    computed = [0]
    inner = layer_cls.forward

    def counting(self: torch.nn.Module, *args: object, **kwargs: object) -> object:
        computed[0] += 1
        return inner(self, *args, **kwargs)

    monkeypatch.setattr(layer_cls, "forward", counting)
    for max_bytes in (2**30, 1):  # one chunk; one batch per chunk
        computed[0] = 0
        shared = evaluate_tickets(model, tickets, d, BATCH, logits_of, max_cache_bytes=max_bytes)
        for t, a, s in zip(tickets, alone, shared, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, s, strict=True)), (arch, t.sparsity, max_bytes)
        n_batches = len(batch_indices(d.lengths, BATCH, shuffle=False))
        order = sorted(layer_patterns(t) for t in tickets)
        skipped = sum(shared_prefix(a, b) for a, b in zip(order, order[1:], strict=False))
        assert skipped > 0
        assert computed[0] == (len(tickets) * L - skipped) * n_batches
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is untouched
    assert all("forward" not in vars(layer) for layer in encoder_layers(model))


def test_patterns() -> None:
    model = make("bert")
    shape = Shape.of(Units(model))
    a, b = random_ticket(shape, 0.0, 0), random_ticket(shape, 0.4, 0)
    assert shared_prefix(None, layer_patterns(a)) == 0
    assert shared_prefix(layer_patterns(a), layer_patterns(a)) == L
    assert layer_patterns(a) != layer_patterns(b)
    assert len(layer_patterns(b)) == L

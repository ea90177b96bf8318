"""Gates through hooks: exact per-example gradients, and masking equal to removing the unit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import random_batch

from dogetickets.data.batching import model_inputs
from dogetickets.data.tasks import Encoded, PairClassification, TokenTagging
from dogetickets.models.units import Units, apply_masks
from dogetickets.scoring import expressive_scores, per_example_gate_grads


def _single(batch: dict, b: int) -> dict:
    n = int(batch["attention_mask"][b].sum())
    return {k: (v[b : b + 1, :n] if v.dim() == 2 else v[b : b + 1]) for k, v in batch.items()}


@pytest.mark.parametrize("kind", ["pair", "tagging"])
def test_per_example_gradients_equal_single_example_passes(kind, tiny_cls, tiny_tag):
    model = tiny_tag if kind == "tagging" else tiny_cls
    task = TokenTagging(["O"] * 5) if kind == "tagging" else PairClassification(["a", "b", "c"])
    batch = random_batch(B=4, T=9, labels=5 if kind == "tagging" else 3, tagging=kind == "tagging")
    units = Units(model)
    for p in model.parameters():
        p.requires_grad_(False)
    gh, gf = per_example_gate_grads(model, units, task, batch)
    assert gh.shape == (4, 3, 4) and gf.shape == (4, 3)
    for b in range(4):
        sh, sf = per_example_gate_grads(model, units, task, _single(batch, b))
        torch.testing.assert_close(gh[b], sh[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(gf[b], sf[0], atol=1e-5, rtol=1e-4)
    assert gh.abs().sum() > 0 and gf.abs().sum() > 0


def test_gate_gradient_equals_finite_difference(tiny_cls):
    model = tiny_cls.double()
    task = PairClassification(["a", "b", "c"])
    batch = random_batch(B=3)
    units = Units(model)
    gh, gf = per_example_gate_grads(model, units, task, batch)

    def loss_at(layer: int, head: int | None, eps: float, b: int) -> float:
        heads = torch.ones(3, 3, 4, dtype=torch.double)
        ffn = torch.ones(3, 3, dtype=torch.double)
        if head is None:
            ffn[b, layer] += eps
        else:
            heads[b, layer, head] += eps
        with torch.no_grad(), units.gated(heads, ffn):
            logits = model(**model_inputs(batch)).logits
            return float(task.per_example_loss(logits, batch["labels"])[b])

    eps = 1e-6
    for b, layer, head in [(0, 0, 1), (1, 2, 3), (2, 1, 0)]:
        fd = (loss_at(layer, head, eps, b) - loss_at(layer, head, -eps, b)) / (2 * eps)
        assert abs(fd - float(gh[b, layer, head])) < 1e-6
        fd = (loss_at(layer, None, eps, b) - loss_at(layer, None, -eps, b)) / (2 * eps)
        assert abs(fd - float(gf[b, layer])) < 1e-6


def test_head_gate_zero_equals_removed_output_slice(tiny_cls):
    batch = random_batch()
    units = Units(tiny_cls)
    heads, ffn = torch.ones(3, 4), torch.ones(3)
    heads[1, 2] = 0.0
    with torch.no_grad(), units.gated(heads, ffn):
        gated = tiny_cls(**model_inputs(batch)).logits
    # Reference: the head's columns of the output projection cut out of the weight matrix.
    ref = copy.deepcopy(tiny_cls)
    dense = Units(ref).layer_module(1, "attn_out")
    keep = [c for c in range(32) if not 16 <= c < 24]
    cut = torch.nn.Linear(len(keep), 32)
    with torch.no_grad():
        cut.weight.copy_(dense.weight[:, keep])
        cut.bias.copy_(dense.bias)
    ref.bert.encoder.layer[1].attention.output.dense = _Select(cut, keep)
    with torch.no_grad():
        removed = ref(**model_inputs(batch)).logits
    torch.testing.assert_close(gated, removed, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        full = tiny_cls(**model_inputs(batch)).logits
    assert not torch.allclose(full, gated)


class _Select(torch.nn.Module):
    def __init__(self, lin: torch.nn.Linear, cols: list[int]) -> None:
        super().__init__()
        self.lin, self.cols = lin, cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x[..., self.cols])


class _NoFFN(torch.nn.Module):
    """A BERT output block without the FFN: LayerNorm(0 + residual)."""

    def __init__(self, out: torch.nn.Module) -> None:
        super().__init__()
        self.LayerNorm = out.LayerNorm

    def forward(self, hidden: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(input_tensor)


def test_ffn_gate_zero_equals_layer_without_ffn(tiny_cls):
    batch = random_batch()
    units = Units(tiny_cls)
    heads, ffn = torch.ones(3, 4), torch.ones(3)
    ffn[0] = 0.0
    with torch.no_grad(), units.gated(heads, ffn):
        gated = tiny_cls(**model_inputs(batch)).logits
    ref = copy.deepcopy(tiny_cls)
    ref.bert.encoder.layer[0].output = _NoFFN(ref.bert.encoder.layer[0].output)
    with torch.no_grad():
        removed = ref(**model_inputs(batch)).logits
    torch.testing.assert_close(gated, removed, atol=1e-6, rtol=1e-5)


def test_zeroed_weights_equal_gated_model(tiny_cls):
    """Holding a ticket's weights at zero computes exactly what its gates compute."""
    batch = random_batch()
    units = Units(tiny_cls)
    heads, ffn = torch.ones(3, 4), torch.ones(3)
    heads[0, :3] = 0.0
    heads[2, 1] = 0.0
    ffn[1] = 0.0
    with torch.no_grad(), units.gated(heads, ffn):
        gated = tiny_cls(**model_inputs(batch)).logits
    apply_masks(tiny_cls, units.weight_masks(heads, ffn))
    with torch.no_grad():
        zeroed = tiny_cls(**model_inputs(batch)).logits
    torch.testing.assert_close(gated, zeroed, atol=1e-6, rtol=1e-5)


def test_per_example_gates_act_per_example(tiny_cls):
    batch = random_batch(B=2, T=7)
    units = Units(tiny_cls)
    heads = torch.ones(2, 3, 4)
    ffn = torch.ones(2, 3)
    heads[1, 0, 0] = 0.0
    ffn[1, 2] = 0.0
    with torch.no_grad(), units.gated(heads, ffn):
        both = tiny_cls(**model_inputs(batch)).logits
    for b in range(2):
        with torch.no_grad(), units.gated(heads[b], ffn[b]):
            alone = tiny_cls(**model_inputs(_single(batch, b))).logits
        torch.testing.assert_close(both[b], alone[0], atol=1e-5, rtol=1e-4)


def test_hooks_are_removed(tiny_cls):
    batch = random_batch()
    with torch.no_grad():
        before = tiny_cls(**model_inputs(batch)).logits
        with Units(tiny_cls).gated(torch.zeros(3, 4), torch.zeros(3)):
            pass
        after = tiny_cls(**model_inputs(batch)).logits
    assert torch.equal(before, after)


def test_scoring_leaves_the_model_as_it_found_it(tiny_cls):
    """Train/eval mode of every submodule and requires_grad of every parameter come back unchanged."""
    model = tiny_cls.train()
    model.bert.embeddings.eval()  # a submodule in eval mode inside a model in train mode
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # frozen parameters
    model.bert.encoder.layer[1].attention.self.query.bias.requires_grad_(False)
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert set(modes.values()) == {True, False} and set(flags.values()) == {True, False}
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(4, 100, (int(n),), generator=g).numpy() for n in torch.randint(3, 9, (8,), generator=g)]
    data = Encoded(ids, [np.zeros_like(x) for x in ids], [int(x[0] % 3) for x in ids], np.arange(8) % 2,
                   np.arange(8) // 2, ["d0", "d1"])
    s = expressive_scores(model, Units(model), PairClassification(["a", "b", "c"]), data, batch_size=4, pad_id=0,
                          show_progress=False)
    assert s.count.tolist() == [4, 4] and s.head_sum.sum() > 0
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags

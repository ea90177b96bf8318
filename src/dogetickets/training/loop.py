"""The one training loop, for fine-tuning and rewinding alike, on Accelerate (CPU, CUDA, DDP unchanged).

AdamW (no weight decay on biases and LayerNorm), linear warm-up and decay, gradient clipping,
bf16/fp16 autocast ("auto": bf16 where the hardware computes it natively), in-domain dev evaluation
every N steps (sharded over the processes under DDP), early stopping with patience, and the best
checkpoint kept. With a ticket the pruned units are gated to zero through hooks and their weights held
at zero after every step.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object, set_seed
from torch import nn
from transformers import get_linear_schedule_with_warmup

from dogetickets.config import TrainConfig
from dogetickets.data.batching import collate, model_inputs, to_device
from dogetickets.data.tasks import Encoded, Task
from dogetickets.errors import DogeError, TrainingFailed
from dogetickets.evaluate import metrics, predict, shard, unshard
from dogetickets.machine import BF16_FLAGS, cpu_flags, precision_name
from dogetickets.models.units import Units, apply_masks
from dogetickets.progress import progress_bar
from dogetickets.training.objectives import Objective

_ACCELERATOR: dict[str, Accelerator] = {}  # at most one: {its mixed precision: it}


AUTO_PRECISION_ENV = "DOGE_AUTO_PRECISION"  # "no" / "bf16": what "auto" resolves to, whatever the hardware


def native_bf16() -> bool:
    """Whether training here computes bf16 natively: a CUDA GPU with bf16 (not emulated), else an x86 CPU
    with AVX512-BF16 or AMX."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool(cpu_flags() & set(BF16_FLAGS))


def _auto_override() -> str | None:
    """$DOGE_AUTO_PRECISION ("no" or "fp32", "bf16"), or None when unset; anything else is an error."""
    raw = os.environ.get(AUTO_PRECISION_ENV, "").strip().lower()
    if not raw:
        return None
    if raw in ("no", "fp32"):
        return "no"
    if raw == "bf16":
        return "bf16"
    raise DogeError(f"{AUTO_PRECISION_ENV}={raw!r}: expected 'no' (fp32) or 'bf16'")


def resolve_precision(mixed_precision: str) -> str:
    """The precision a `train.mixed_precision` value trains in: "auto" is $DOGE_AUTO_PRECISION where set
    (a way to run as on a machine without bf16, or to force it), else "bf16" where `native_bf16()`, else
    "no" (fp32); "no", "bf16" and "fp16" are themselves."""
    if mixed_precision == "auto":
        forced = _auto_override()
        if forced is not None:
            return forced
        return "bf16" if native_bf16() else "no"
    return mixed_precision


def precision_reason(mixed_precision: str) -> str:
    """Why `mixed_precision` trains in what `resolve_precision` says, in a few words: the setting, the
    environment variable, or the hardware feature that decided "auto"."""
    resolved = precision_name(resolve_precision(mixed_precision))
    if mixed_precision != "auto":
        return f"{resolved}: set by train.mixed_precision"
    if _auto_override() is not None:
        return f"{resolved}: 'auto' forced by {AUTO_PRECISION_ENV}={os.environ[AUTO_PRECISION_ENV].strip()}"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        has = "supports" if native_bf16() else "lacks native"
        return f"{resolved}: 'auto' on CUDA ({name} {has} bf16)"
    found = sorted(cpu_flags() & set(BF16_FLAGS))
    if found:
        return f"{resolved}: 'auto' on a CPU with {', '.join(found)}"
    return f"{resolved}: 'auto' on a CPU without {' or '.join(BF16_FLAGS)}"


def get_accelerator(mixed_precision: str = "no") -> Accelerator:
    """The process's Accelerator, with the requested mixed precision; CUDA when present, else CPU.

    "auto" is resolved first (`resolve_precision`): it gets the accelerator of what it resolves to.
    Accelerate keeps its state process-wide and refuses to change the precision of a live state. Asking
    for another precision than the current accelerator's therefore resets that state (not the device
    and process-group set-up, which Accelerate keeps apart in PartialState) and creates a new Accelerator;
    one obtained before the switch must not be used after it. fp16 autocast needs CUDA: on CPU,
    Accelerate would silently train in fp32, so it is refused.
    """
    mixed_precision = resolve_precision(mixed_precision)
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
    mixed_precision: str  # what the training ran in ("auto" resolved): no | bf16 | fp16
    precision_reason: str = ""  # why (precision_reason): the setting, or what decided "auto"
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
    ticket_masks: tuple[torch.Tensor, ...] | None = None,
    log_path: Path | None = None,
    show_progress: bool = True,
    description: str = "train",
    on_eval: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train `model` in place; on return it holds the best dev checkpoint's weights.

    The loss stays on the device: it is read (one host sync) every `cfg.log_every` steps and before every
    dev evaluation, on every device alike (one code path; on CPU the sync costs nothing either way). A NaN
    or infinite loss then stops the run (`TrainingFailed`) naming the exact step where it first appeared
    and that step's lr; the steps after it, up to the read, have already been applied to the weights,
    which does not matter since the run has failed and its model is dropped.

    `on_eval` is called after every dev evaluation with its log entry and the dev score of each domain
    (`dev_per_domain`): the experiment trackers' hook (`dogetickets.training.trackers`).
    """
    precision = resolve_precision(cfg.mixed_precision)
    acc = get_accelerator(precision)
    set_seed(seed)
    handles: list = []
    weight_masks: dict[str, torch.Tensor] = {}
    if ticket_masks is not None:
        units = Units(model)
        masks = tuple(m.to(acc.device) for m in ticket_masks)  # Ticket.masks(): heads, blocks[, neurons]
        model.to(acc.device)
        handles = units.install_gates(lambda: masks)
        weight_masks = units.weight_masks(*masks)
        apply_masks(model, weight_masks)

    per_epoch = math.ceil(objective.steps_per_epoch(train_data, cfg.batch_size) / acc.num_processes)
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * per_epoch))
    eval_every = cfg.eval_every if cfg.eval_every > 0 else per_epoch

    def make_optimizer() -> torch.optim.Optimizer:
        # fused: one kernel per parameter on CPU and CUDA (the default per-parameter loop on CPU took about a
        # third of a MiniLM step here; the same update up to rounding, ~3e-8 after 5 steps)
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, fused=True)

    optimizer = make_optimizer()
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    wrapped, optimizer = acc.prepare(model, optimizer)
    unwrapped = acc.unwrap_model(wrapped)
    dev_share = shard(len(dev_data), acc.process_index, acc.num_processes)
    dev_mine = dev_data if acc.num_processes == 1 else dev_data.subset(dev_share)

    def predict_dev() -> list:
        """Every process predicts its share of the dev set; all of them are gathered, in dev order."""
        mine = predict(unwrapped, task, dev_mine, cfg.eval_batch_size, pad_id, acc.device, autocast=acc.autocast)
        return mine if acc.num_processes == 1 else unshard(gather_object([mine]))

    best_dev, best_step, bad_evals = -math.inf, 0, 0
    best_state: dict[str, torch.Tensor] | None = None
    best_preds: list | None = None
    history: list[dict[str, Any]] = []
    log = log_path.open("a", encoding="utf-8") if log_path else None
    step, epoch, seen, stopped = 0, 0, 0, False
    window: list[torch.Tensor] = []  # the losses of the steps since the last read, on the device
    window_lrs: list[float] = []  # and the lr of each of those steps
    last_loss, info = math.nan, ""
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
                    batch = to_device(collate(train_data, idx, pad_id, pad_to), acc.device)
                    with acc.autocast():
                        logits = wrapped(**model_inputs(batch)).logits
                    loss = objective.loss(task, logits, batch, step)
                    window.append(loss.detach())
                    window_lrs.append(optimizer.param_groups[0]["lr"])
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
                    evaluating = step % eval_every == 0 or step == total
                    if evaluating or step % cfg.log_every == 0:
                        losses = _read_losses(acc, window, window_lrs, step, description)
                        window.clear()
                        window_lrs.clear()
                        last_loss = losses[-1]
                        info = f"loss {sum(losses) / len(losses):.3f}" + (f" dev {best_dev:.3f}" if history else "")
                    train_time += time.perf_counter() - ts
                    if objective.resets_optimizer(step):
                        optimizer = acc.prepare(make_optimizer())
                        scheduler = get_linear_schedule_with_warmup(optimizer, 0, total - step)
                    advance(1, info=info)
                    if evaluating:
                        dev_preds = predict_dev()
                        dev_metrics = metrics(task, dev_data, dev_preds)
                        dev = dev_metrics["score"]
                        entry = {"step": step, "epoch": epoch, "loss": last_loss, "dev": dev}
                        history.append(entry)
                        if log:
                            log.write(json.dumps(entry) + "\n")
                            log.flush()
                        if on_eval is not None:
                            on_eval({**entry, "dev_per_domain": dev_metrics["per_domain"]})
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
        mixed_precision=precision,
        precision_reason=precision_reason(cfg.mixed_precision),
        history=history,
        best_dev_predictions=best_preds,
    )


def _read_losses(acc: Accelerator, window: list[torch.Tensor], lrs: list[float], step: int, run: str) -> list[float]:
    """The losses of the last `len(window)` steps (up to `step`) on the host, in one sync.

    A NaN or infinite one stops the run, naming the first step where it appeared and that step's lr. Every
    process reads at the same steps and learns the first non-finite step of any process, so they all stop
    together (a process stopping alone would leave the others waiting in all-reduce)."""
    losses = torch.stack(window).float().tolist()
    first = next((i for i, x in enumerate(losses) if not math.isfinite(x)), len(losses))
    first_any = first
    if acc.num_processes > 1:
        first_any = int(acc.gather(torch.tensor([first], device=acc.device)).min())
    if first_any < len(losses):
        what = f"the training loss is {losses[first]}" if first == first_any else "another process's loss is not finite"
        at = step - len(losses) + first_any + 1
        raise TrainingFailed(
            f"{run}: {what} at step {at} (lr {lrs[first_any]:.3g} at that step); "
            "run stopped (lower train.lr, or check the data)"
        )
    return losses


def _max_len(data: Encoded) -> int:
    return int(data.lengths.max())

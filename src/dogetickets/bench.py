"""How much faster an exported ticket runs: throughput, latency, training speed, parameters and FLOPs.

The full model and the exported (physically pruned) tickets are timed in turns (round robin over the
repeats, so a busy spell of the machine hits every model alike); absolute numbers are medians over the
repeats, ratios against the full model are medians over the rounds of the per-round ratios.
FLOPs per token count the encoder's matmuls analytically from the structure: per layer
2·(3·d·k·dh + k·dh·d) for the Q, K, V and output projections of k kept heads, 2·2·seq·k·dh for the
attention scores and weighted values, and 2·2·d·di for a kept FFN block. The goal is a speed-up of at
least 0.9 x the FLOP reduction ("efficiency" ≥ 0.9).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import nn

from dogetickets.errors import DogeError
from dogetickets.io import write_json
from dogetickets.models.export import encoder_layers, export_pruned, is_pruned
from dogetickets.models.units import Units
from dogetickets.tickets import Shape, Ticket, no_ticket, random_ticket

DEFAULT_SPARSITIES = (0.0, 0.15, 0.3, 0.5)
GOAL = 0.9  # speed-up >= GOAL x FLOP reduction


def encoder_flops_per_token(
    heads: Sequence[int], ffn: Sequence[bool], hidden: int, head_dim: int, intermediate: int, seq_len: int
) -> int:
    """Matmul FLOPs per token of the encoder, for `heads[i]` kept heads and FFN kept `ffn[i]` per layer."""
    total = 0
    for k, keep_ffn in zip(heads, ffn, strict=True):
        a = k * head_dim
        total += 2 * (3 * hidden * a + a * hidden) + 2 * 2 * seq_len * a
        if keep_ffn:
            total += 2 * 2 * hidden * intermediate
    return total


def _kept(ticket: Ticket) -> tuple[list[int], list[bool]]:
    heads = [ticket.num_heads - len(set(ticket.pruned_heads.get(str(i), []))) for i in range(ticket.num_layers)]
    ffn = [i not in set(ticket.pruned_ffn) for i in range(ticket.num_layers)]
    return heads, ffn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _round_robin(fns: list[Callable[[], Any]], warmup: int, repeats: int, device: torch.device) -> list[list[float]]:
    """Seconds of every call of each fn, the fns timed in turns."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    _sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[i].append(time.perf_counter() - t0)
    return times


def _paired(base: list[float], times: list[float]) -> float:
    """Median of the per-round ratios base/times: a busy spell hits both sides of a ratio alike."""
    return statistics.median(b / t for b, t in zip(base, times, strict=True))


def bench_device(name: str | torch.device = "auto") -> torch.device:
    """The device to bench on: "auto" (CUDA when present, else the CPU), "cpu", "cuda" or "cuda:N"; one that
    is not here is a DogeError."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise DogeError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DogeError(f"device {name!r}: no CUDA GPU here")
        if dev.index is not None and dev.index >= count:
            raise DogeError(f"device {name!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return dev


def _load(model: str | Path | nn.Module, task: str) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    from transformers import AutoConfig

    from dogetickets.models.resolve import model_class, quiet_transformers, resolve_model

    quiet_transformers()
    path = resolve_model(str(model))
    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise DogeError(f"model '{model}': cannot load ({str(exc).splitlines()[0]})") from None
    torch.manual_seed(0)  # a task head is added if the folder has none; its values do not matter here
    return model_class(task).from_pretrained(path)


def run_bench(
    model: str | Path | nn.Module = "minilm",
    tickets: Sequence[Ticket] | None = None,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    batch_size: int = 32,
    seq_len: int = 128,
    train_batch_size: int = 16,
    repeats: int = 8,
    latency_repeats: int = 30,
    train_repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
    task: str = "text",
    device: str | torch.device = "auto",
    out: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time the full model and the exported tickets (random tickets at `sparsities` unless `tickets`).

    `model` is a model name or folder of an unpruned encoder (a task head is added if it has none) or a
    loaded model. `device` as `bench_device` takes it. Returns (and writes to `out` as JSON) one row per
    model with absolute numbers and ratios against the full model.
    """
    say = log or (lambda _msg: None)
    dev = bench_device(device)
    full = _load(model, task).eval()
    if is_pruned(full):
        raise DogeError(f"model '{model}' is already pruned: bench the unpruned model and tickets")
    units = Units(full)
    shape = Shape.of(units)
    if tickets is None:
        tickets = [random_ticket(shape, s, seed) for s in sparsities]
    models: list[tuple[str, Ticket | None, nn.Module]] = [("full", None, full)]
    for t in tickets:
        say(f"exporting {t.name} ({t.sparsity:.1%} of the encoder pruned)")
        models.append((t.name, t, export_pruned(copy.deepcopy(full), t)))
    for _, _, m in models:
        m.to(dev).eval()

    vocab = int(full.config.vocab_size)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch_size, seq_len), generator=gen).to(dev)
    ids1 = ids[:1]
    mask = torch.ones_like(ids)
    mask1 = mask[:1]

    def forward(m: nn.Module, x: torch.Tensor, a: torch.Tensor) -> Callable[[], Any]:
        return lambda: m(input_ids=x, attention_mask=a)

    say(f"inference: batch {batch_size} x {seq_len} tokens, {repeats} repeats per model")
    with torch.inference_mode():
        infer = _round_robin([forward(m, ids, mask) for _, _, m in models], warmup, repeats, dev)
        say(f"latency: batch 1 x {seq_len} tokens, {latency_repeats} repeats per model")
        latency = _round_robin([forward(m, ids1, mask1) for _, _, m in models], warmup, latency_repeats, dev)

    say(f"training: batch {train_batch_size}, forward + backward + AdamW, {train_repeats} steps per model")
    tids, tmask = ids[:train_batch_size], mask[:train_batch_size]
    num_labels = int(full.config.num_labels)
    shape_labels = (tids.shape[0], seq_len) if task == "tagging" else (tids.shape[0],)
    labels = torch.randint(0, num_labels, shape_labels, generator=gen).to(dev)

    def train_step(m: nn.Module) -> Callable[[], None]:
        opt = torch.optim.AdamW(m.parameters(), lr=1e-5)
        m.train()

        def step() -> None:
            loss = m(input_ids=tids, attention_mask=tmask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    train = _round_robin([train_step(m) for _, _, m in models], warmup, train_repeats, dev)

    hidden, head_dim, inter = units.hidden_size, units.head_dim, units.intermediate_size
    rows: list[dict[str, Any]] = []
    med = statistics.median
    for (name, ticket, m), t_inf, t_lat, t_train in zip(models, infer, latency, train, strict=True):
        heads, ffn = _kept(ticket or no_ticket(shape))
        rows.append(
            {
                "name": name,
                "method": ticket.method if ticket else "full",
                "target_sparsity": ticket.target_sparsity if ticket else 0.0,
                "sparsity": ticket.sparsity if ticket else 0.0,
                "heads": sum(heads),
                "ffn_blocks": sum(ffn),
                "params": sum(p.numel() for p in m.parameters()),
                "encoder_params": sum(p.numel() for layer in encoder_layers(m) for p in layer.parameters()),
                "flops_per_token": encoder_flops_per_token(heads, ffn, hidden, head_dim, inter, seq_len),
                "infer_examples_per_s": batch_size / med(t_inf),
                "latency_ms": 1000 * med(t_lat),
                "train_examples_per_s": train_batch_size / med(t_train),
                "best": {  # the fastest repeat, less sensitive to a busy machine than the median
                    "infer_examples_per_s": batch_size / min(t_inf),
                    "latency_ms": 1000 * min(t_lat),
                    "train_examples_per_s": train_batch_size / min(t_train),
                },
            }
        )
    base = rows[0]
    for i, r in enumerate(rows):
        r["flop_reduction"] = base["flops_per_token"] / r["flops_per_token"]
        r["param_ratio"] = r["params"] / base["params"]
        # ratios: median over the rounds of (full model's time / this model's time) in the same round
        r["speedup"] = _paired(infer[0], infer[i])
        r["latency_speedup"] = _paired(latency[0], latency[i])
        r["train_speedup"] = _paired(train[0], train[i])
        r["efficiency"] = r["speedup"] / r["flop_reduction"]
        r["meets_goal"] = r["efficiency"] >= GOAL
    result = {
        "model": str(model) if not isinstance(model, nn.Module) else type(model).__name__,
        "task": task,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "train_batch_size": train_batch_size,
        "repeats": repeats,
        "latency_repeats": latency_repeats,
        "train_repeats": train_repeats,
        "goal": f"speedup >= {GOAL} x flop_reduction",
        "rows": rows,
    }
    if out is not None:
        write_json(Path(out), result)
    return result


_COLUMNS = (
    ("model", "left"),
    ("sparsity", "right"),
    ("heads", "right"),
    ("FFN", "right"),
    ("params", "right"),
    ("MFLOP/tok", "right"),
    ("FLOP red.", "right"),
    ("ex/s", "right"),
    ("speed-up", "right"),
    ("eff.", "right"),
    ("b1 ms", "right"),
    ("b1 ×", "right"),
    ("train ex/s", "right"),
    ("train ×", "right"),
)


def _cells(r: dict[str, Any]) -> list[str]:
    return [
        r["name"],
        f"{r['sparsity']:.1%}",
        str(r["heads"]),
        str(r["ffn_blocks"]),
        f"{r['params'] / 1e6:.2f}M",
        f"{r['flops_per_token'] / 1e6:.2f}",
        f"{r['flop_reduction']:.2f}×",
        f"{r['infer_examples_per_s']:.1f}",
        f"{r['speedup']:.2f}×",
        f"{r['efficiency']:.2f}" + ("" if r["meets_goal"] else " !"),
        f"{r['latency_ms']:.1f}",
        f"{r['latency_speedup']:.2f}×",
        f"{r['train_examples_per_s']:.1f}",
        f"{r['train_speedup']:.2f}×",
    ]


def _title(result: dict[str, Any]) -> str:
    return (
        f"{result['model']} on {result['device']} ({result['threads']} threads): inference batch "
        f"{result['batch_size']} x {result['seq_len']} tokens, training batch {result['train_batch_size']}"
    )


def format_bench(result: dict[str, Any]) -> Table:
    """A rich table of a `run_bench` result; eff. = speed-up / FLOP reduction (goal ≥ 0.9, '!' if not)."""
    table = Table(title=_title(result))
    for name, justify in _COLUMNS:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in result["rows"]:
        table.add_row(*_cells(r))
    return table


def bench_markdown(result: dict[str, Any]) -> str:
    """The same table as markdown."""
    lines = [f"**{_title(result)}**", ""]
    lines.append("| " + " | ".join(name for name, _ in _COLUMNS) + " |")
    lines.append("|" + "|".join("---" if j == "left" else "---:" for _, j in _COLUMNS) + "|")
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in result["rows"]]
    return "\n".join(lines) + "\n"

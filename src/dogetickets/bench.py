"""How much faster an exported ticket runs: throughput, latency, training speed, parameters and FLOPs.

The full model and the exported (physically pruned) tickets are timed in turns (round robin over the
repeats, so a busy spell of the machine hits every model alike); absolute numbers are medians over the
repeats, ratios against the full model are medians over the rounds of the per-round ratios.

FLOPs per token count the encoder's matmuls (2 per multiply-add) from the modules of each model, so an
exported model's per-layer head counts, removed FFN blocks and per-layer intermediate sizes (neuron-level
tickets) are all counted as they are: per layer, 2·in·out for every head projection (Q, K and V, or one
fused QKV) and the attention output projection, 2·2·seq·a for the attention scores and weighted values
(a = kept heads x head size), and 2·in·out for the FFN input and output projections of a kept block. With
d the hidden size and n a layer's intermediate size, that is 2·2·d·n for a BERT-style FFN and 2·3·d·n for
a GLU (ModernBERT's ``Wi`` is 2n wide: input and gate halves). Not counted: norms, activations, softmax,
embeddings, the task head, and DeBERTa's relative-position terms; attention is counted over the whole
sequence, as eager and SDPA attention compute it (ModernBERT's local layers mask the scores outside their
window). The goal is a speed-up of at least 0.9 x the FLOP reduction ("efficiency" ≥ 0.9).

`run_bench` takes an unpruned model and tickets (exported here), or an exported model (a `doge export`
folder, or a rewind run's ``model/``): that one is timed against its architecture at full size (rebuilt
from its config with random weights: timing and counts only, no accuracy).

Runtimes: ``torch`` (eager PyTorch: inference, batch-1 latency and training steps) or ``onnxruntime``
(every model, the full one too, exported the same way by `dogetickets.models.onnx.export_onnx` and run by
ONNX Runtime on the CPU with torch's thread count: inference and batch-1 latency; nothing to train).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import nn

from dogetickets.errors import DogeError
from dogetickets.io import write_json
from dogetickets.models.export import encoder_layers, export_pruned, is_pruned, register_auto_classes
from dogetickets.models.units import Units, find_module, get_module, layer_list, structure_for
from dogetickets.tickets import Shape, Ticket, random_ticket, ticket_name

DEFAULT_SPARSITIES = (0.0, 0.15, 0.3, 0.5)
RUNTIMES = ("torch", "onnxruntime")
GOAL = 0.9  # speed-up >= GOAL x FLOP reduction


def encoder_flops_per_token(
    heads: Sequence[int],
    ffn: Sequence[bool],
    hidden: int,
    head_dim: int,
    intermediate: int | Sequence[int],
    seq_len: int,
    *,
    glu: bool = False,
) -> int:
    """Matmul FLOPs per token of the encoder, for `heads[i]` kept heads and FFN kept `ffn[i]` per layer.

    `intermediate` is the FFN's intermediate size, one for all layers or one per layer (an exported
    neuron-level ticket); `glu`: the FFN is gated (its input projection is twice the intermediate size).
    """
    sizes = [intermediate] * len(heads) if isinstance(intermediate, int) else list(intermediate)
    ffn_mats = 3 if glu else 2
    total = 0
    for k, keep_ffn, n in zip(heads, ffn, sizes, strict=True):
        a = k * head_dim
        total += 2 * (3 * hidden * a + a * hidden) + 2 * 2 * seq_len * a
        if keep_ffn:
            total += 2 * ffn_mats * hidden * n
    return total


def _linear_flops(lin: nn.Module) -> int:
    return 2 * lin.in_features * lin.out_features if isinstance(lin, nn.Linear) else 0


def layer_sizes(model: nn.Module) -> list[dict[str, int]]:
    """What each encoder layer of `model` (stock or exported) keeps, read from its modules: ``heads``,
    ``ffn`` (1 if the FFN block is there, else 0), ``intermediate`` (its FFN neurons, 0 without a block),
    ``attn_width`` (kept heads x head size) and ``flops_per_token_fixed`` / ``flops_per_token_per_seq``
    (the matmul FLOPs per token: the part independent of the sequence length, and the factor of it)."""
    config = model.config
    base = getattr(config, "doge_base_model_type", None) or config.model_type
    s = structure_for(base.removeprefix("doge-"))
    num_heads = int(getattr(config, s.heads_attr))
    kept_heads = getattr(config, "doge_heads", None)
    sizes = getattr(config, "doge_intermediate_sizes", None)
    out = []
    for i, layer in enumerate(layer_list(model, s)):
        attn_out = get_module(layer, s.attn_out)
        ffn_in, ffn_out = find_module(layer, s.ffn_in), find_module(layer, s.ffn_out)
        kept_ffn = isinstance(ffn_in, nn.Linear) and isinstance(ffn_out, nn.Linear)
        inter = ffn_out.in_features if kept_ffn else 0  # type: ignore[union-attr]
        if sizes is not None and inter != sizes[i]:
            raise DogeError(f"layer {i} has {inter} FFN neurons, its config says {sizes[i]}")
        fixed = sum(_linear_flops(get_module(layer, p)) for p in s.head_in) + _linear_flops(attn_out)
        if kept_ffn:
            fixed += _linear_flops(ffn_in) + _linear_flops(ffn_out)  # a GLU's Wi is 2n wide: 3 matrices in all
        out.append(
            {
                "heads": len(kept_heads[i]) if kept_heads is not None else num_heads,
                "ffn": int(kept_ffn),
                "intermediate": inter,
                "attn_width": attn_out.in_features,
                "flops_per_token_fixed": fixed,
                "flops_per_token_per_seq": 2 * 2 * attn_out.in_features,
            }
        )
    return out


def model_flops_per_token(model: nn.Module, seq_len: int) -> int:
    """Matmul FLOPs per token of the encoder of `model` (stock or exported) at `seq_len` tokens, counted from
    its modules (the module docstring says what is counted)."""
    return sum(r["flops_per_token_fixed"] + seq_len * r["flops_per_token_per_seq"] for r in layer_sizes(model))


def full_size(model: nn.Module) -> nn.Module:
    """An exported model's architecture at full size (every head, FFN block and neuron), randomly initialized:
    its stock class built from its config without the pruned structure. For timing and counting only."""
    config = copy.deepcopy(model.config)
    for key in [k for k in vars(config) if k.startswith("doge_")]:
        delattr(config, key)
    config.__class__ = next(c for c in type(config).__mro__[1:] if not c.__name__.startswith("Doge"))
    stock = next(c for c in type(model).__mro__[1:] if not c.__name__.startswith("Doge"))
    torch.manual_seed(0)
    return stock(config)


def _about(ticket: Ticket | None) -> dict[str, Any]:
    if ticket is None:
        return {"method": "full", "target_sparsity": 0.0, "sparsity": 0.0, "granularity": None}
    return {
        "method": ticket.method,
        "target_sparsity": ticket.target_sparsity,
        "sparsity": ticket.sparsity,
        "granularity": ticket.granularity,
    }


def _row_name(name: str, granularity: str | None) -> str:
    """A ticket's name, marked "-neuron" for a neuron-level one (the two granularities share ticket names)."""
    return f"{name}-neuron" if granularity == "neuron" else name


def _about_export(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """A row name and ticket fields for an exported model, from the ticket summary in its config."""
    info = dict(getattr(model.config, "doge_ticket", None) or {})
    method = info.get("method", "exported")
    name = ticket_name(method, info["target_sparsity"], info.get("lam")) if "target_sparsity" in info else method
    return name, {
        "method": method,
        "target_sparsity": info.get("target_sparsity", 0.0),
        "sparsity": info.get("sparsity", 0.0),
        "granularity": info.get("granularity", "block"),
    }


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
    register_auto_classes()  # an exported model's doge-<base> type
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
    runtime: str = "torch",
) -> dict[str, Any]:
    """Time the full model and the exported tickets (random tickets at `sparsities` unless `tickets`).

    `model` is a model name or folder of an unpruned encoder (a task head is added if it has none) or a
    loaded model. It may also be an exported model (a `doge export` folder, a physically pruned rewind's
    ``model/``): then it is timed against its architecture at full size (`full_size`: random weights),
    `sparsities` is ignored, and `tickets`, if any, are exported from that full-size model and timed too.
    Tickets of either granularity. `device` as `bench_device` takes it. `runtime` is one of `RUNTIMES`
    (the module docstring says what each times; ``onnxruntime`` runs on the CPU only, and its rows have no
    training numbers). Returns (and writes to `out` as JSON) one row per model with absolute numbers and
    ratios against the full model.
    """
    say = log or (lambda _msg: None)
    if runtime not in RUNTIMES:
        raise DogeError(f"runtime {runtime!r}: expected {' or '.join(RUNTIMES)}")
    dev = bench_device(device)
    if runtime == "onnxruntime" and dev.type != "cpu":
        raise DogeError(f"device {str(dev)!r}: the onnxruntime runtime times on the CPU only (use --device cpu)")
    models, full = _models_to_time(model, tickets, sparsities, seed, task, say)
    for _, _, m in models:
        m.to(dev).eval()
    if runtime == "onnxruntime":
        infer, latency = _time_onnx(models, full, batch_size, seq_len, repeats, latency_repeats, warmup, seed, say)
        train: list[list[float] | None] = [None] * len(models)
    else:
        infer, latency, train = _time_models([m for _, _, m in models], full, batch_size, seq_len, train_batch_size,
                                             repeats, latency_repeats, train_repeats, warmup, seed, task, dev, say)
    rows = [_row(name, about, m, t_inf, t_lat, t_train, batch_size, seq_len, train_batch_size)
            for (name, about, m), t_inf, t_lat, t_train in zip(models, infer, latency, train, strict=True)]
    _add_ratios(rows, infer, latency, train)
    torch_only = runtime == "torch"
    result = {
        "model": str(model) if not isinstance(model, nn.Module) else type(model).__name__,
        "task": task,
        "runtime": runtime,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **({} if torch_only else {"onnxruntime": _onnxruntime_version()}),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "train_batch_size": train_batch_size if torch_only else None,
        "repeats": repeats,
        "latency_repeats": latency_repeats,
        "train_repeats": train_repeats if torch_only else 0,
        "goal": f"speedup >= {GOAL} x flop_reduction",
        "rows": rows,
    }
    if out is not None:
        write_json(Path(out), result)
    return result


def _add_ratios(rows: list[dict[str, Any]], infer: list[list[float]], latency: list[list[float]],
                train: Sequence[list[float] | None]) -> None:
    """FLOP reduction, parameter ratio, speed-ups and efficiency of every row against the first (the full
    model); a speed-up is the median over the rounds of (full model's time / this model's time) in the same
    round. No training times (ONNX Runtime): no training speed-up."""
    base = rows[0]
    for i, r in enumerate(rows):
        r["flop_reduction"] = base["flops_per_token"] / r["flops_per_token"]
        r["param_ratio"] = r["params"] / base["params"]
        r["speedup"] = _paired(infer[0], infer[i])
        r["latency_speedup"] = _paired(latency[0], latency[i])
        t0, ti = train[0], train[i]
        r["train_speedup"] = _paired(t0, ti) if t0 is not None and ti is not None else None
        r["efficiency"] = r["speedup"] / r["flop_reduction"]
        r["meets_goal"] = r["efficiency"] >= GOAL


def _onnxruntime_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _models_to_time(model: str | Path | nn.Module, tickets: Sequence[Ticket] | None, sparsities: Sequence[float],
                    seed: int, task: str, say: Callable[[str], None],
                    ) -> tuple[list[tuple[str, dict[str, Any], nn.Module]], nn.Module]:
    """(row name, about, model) of the full model and of each exported ticket, and the full model."""
    loaded = _load(model, task).eval()
    models: list[tuple[str, dict[str, Any], nn.Module]] = []
    if is_pruned(loaded):
        say("an exported model: timed against its architecture at full size (random weights)")
        full = full_size(loaded).eval()
        name, about = _about_export(loaded)
        models += [("full", _about(None), full), (_row_name(name, about["granularity"]), about, loaded)]
        tickets = list(tickets or [])
    else:
        full = loaded
        models.append(("full", _about(None), full))
        if tickets is None:
            shape = Shape.of(Units(full))
            tickets = [random_ticket(shape, s, seed) for s in sparsities]
    for t in tickets:
        say(f"exporting {t.name} ({t.sparsity:.1%} of the encoder pruned, {t.granularity} granularity)")
        models.append((_row_name(t.name, t.granularity), _about(t), export_pruned(copy.deepcopy(full), t)))
    return models, full


def _time_models(models: list[nn.Module], full: nn.Module, batch_size: int, seq_len: int, train_batch_size: int,
                 repeats: int, latency_repeats: int, train_repeats: int, warmup: int, seed: int, task: str,
                 dev: torch.device, say: Callable[[str], None]) -> tuple[list, list, list]:
    """Seconds of every repeat, in rounds over the models: inference, latency (batch 1), training steps."""
    vocab = int(full.config.vocab_size)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch_size, seq_len), generator=gen).to(dev)
    mask = torch.ones_like(ids)

    def forward(m: nn.Module, x: torch.Tensor, a: torch.Tensor) -> Callable[[], Any]:
        return lambda: m(input_ids=x, attention_mask=a)

    say(f"inference: batch {batch_size} x {seq_len} tokens, {repeats} repeats per model")
    with torch.inference_mode():
        infer = _round_robin([forward(m, ids, mask) for m in models], warmup, repeats, dev)
        say(f"latency: batch 1 x {seq_len} tokens, {latency_repeats} repeats per model")
        latency = _round_robin([forward(m, ids[:1], mask[:1]) for m in models], warmup, latency_repeats, dev)

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

    train = _round_robin([train_step(m) for m in models], warmup, train_repeats, dev)
    return infer, latency, train


def _time_onnx(models: list[tuple[str, dict[str, Any], nn.Module]], full: nn.Module, batch_size: int, seq_len: int,
               repeats: int, latency_repeats: int, warmup: int, seed: int, say: Callable[[str], None],
               ) -> tuple[list[list[float]], list[list[float]]]:
    """Seconds of every repeat, in rounds over the models exported to ONNX and run by ONNX Runtime on the
    CPU: inference (`batch_size`) and latency (batch 1); the same token ids as the torch runtime's."""
    from dogetickets.models.onnx import export_onnx, onnx_feeds, onnx_session, require

    require("onnx", "onnxscript", "onnxruntime")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, int(full.config.vocab_size), (batch_size, seq_len), generator=gen)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    one = {k: v[:1] for k, v in inputs.items()}
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="doge-bench-onnx-") as tmp:
        sessions = []
        for i, (name, _, m) in enumerate(models):
            say(f"exporting {name} to ONNX")
            sessions.append(onnx_session(export_onnx(m, Path(tmp) / f"{i}.onnx")))
        threads = torch.get_num_threads()
        say(f"ONNX Runtime, {threads} threads: batch {batch_size} x {seq_len} tokens, {repeats} repeats per model")

        def run(session: Any, x: dict[str, torch.Tensor]) -> Callable[[], Any]:
            feeds = onnx_feeds(session, x)
            return lambda: session.run(None, feeds)

        infer = _round_robin([run(s, inputs) for s in sessions], warmup, repeats, cpu)
        say(f"ONNX Runtime latency: batch 1 x {seq_len} tokens, {latency_repeats} repeats per model")
        latency = _round_robin([run(s, one) for s in sessions], warmup, latency_repeats, cpu)
    return infer, latency


def _row(name: str, about: dict[str, Any], m: nn.Module, t_inf: list[float], t_lat: list[float],
         t_train: list[float] | None, batch_size: int, seq_len: int, train_batch_size: int) -> dict[str, Any]:
    """One model's row: its structure, FLOPs and speeds (median and best of its repeats; no training numbers
    without `t_train`)."""
    sizes = layer_sizes(m)
    med = statistics.median
    return {
        "name": name,
        **about,
        "heads": sum(r["heads"] for r in sizes),
        "ffn_blocks": sum(r["ffn"] for r in sizes),
        "ffn_neurons": sum(r["intermediate"] for r in sizes),
        "intermediate_sizes": [r["intermediate"] for r in sizes],
        "params": sum(p.numel() for p in m.parameters()),
        "encoder_params": sum(p.numel() for layer in encoder_layers(m) for p in layer.parameters()),
        "flops_per_token": model_flops_per_token(m, seq_len),
        "infer_examples_per_s": batch_size / med(t_inf),
        "latency_ms": 1000 * med(t_lat),
        "train_examples_per_s": train_batch_size / med(t_train) if t_train else None,
        "seconds": {"infer": t_inf, "latency": t_lat, "train": t_train},  # every repeat, in rounds
        "best": {  # the fastest repeat, less sensitive to a busy machine than the median
            "infer_examples_per_s": batch_size / min(t_inf),
            "latency_ms": 1000 * min(t_lat),
            "train_examples_per_s": train_batch_size / min(t_train) if t_train else None,
        },
    }


_COLUMNS = (
    ("model", "left"),
    ("sparsity", "right"),
    ("heads", "right"),
    ("FFN", "right"),
    ("neurons", "right"),
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
        str(r.get("ffn_neurons", "")),
        f"{r['params'] / 1e6:.2f}M",
        f"{r['flops_per_token'] / 1e6:.2f}",
        f"{r['flop_reduction']:.2f}×",
        f"{r['infer_examples_per_s']:.1f}",
        f"{r['speedup']:.2f}×",
        f"{r['efficiency']:.2f}" + ("" if r["meets_goal"] else " !"),
        f"{r['latency_ms']:.1f}",
        f"{r['latency_speedup']:.2f}×",
        "–" if r.get("train_examples_per_s") is None else f"{r['train_examples_per_s']:.1f}",
        "–" if r.get("train_speedup") is None else f"{r['train_speedup']:.2f}×",
    ]


def _title(result: dict[str, Any]) -> str:
    if result.get("runtime", "torch") == "onnxruntime":
        return (
            f"{result['model']} on ONNX Runtime {result['onnxruntime']}, {result['device']} ({result['threads']} "
            f"threads): inference batch {result['batch_size']} x {result['seq_len']} tokens, no training"
        )
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

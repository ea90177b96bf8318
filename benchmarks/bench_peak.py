"""Speed against this machine's own limit: its dense matmul peak, and the share of it that training,
scoring and evaluation achieve on the quickstart data (prints; asserts nothing).

    .venv/bin/python benchmarks/bench_peak.py [--precision auto|no|bf16|both] [--candidates]

Peak: the best median FLOP/s of `torch.nn.functional.linear` (what every encoder matmul is) over the
encoder's own shapes (tokens x hidden -> hidden, hidden -> FFN, FFN -> hidden, for a batch of 16 x 64
tokens), in fp32 and, where the CPU computes it natively, bf16.

Achieved: the quickstart's training data (Amazon A, 4 domains x 100 reviews, 128-token cap, batch 16,
length-bucketed), trained one epoch with the real training loop (`training.loop.train`, after a short
warm-up), scored (exact per-example gate gradients) and evaluated (dev + test). FLOPs are counted from
each example's real token count (padding is waste, not work), for the encoder's matmuls
(`bench.layer_sizes`: projections, FFN, attention scores and weighted values over the example's own
length): forward F = sum over examples of L * (fixed + L * per_seq); training 3F (forward, gradients of
activations and of weights), scoring 2F (no weight gradients), evaluation F. Embeddings, norms, softmax
and the task head are not counted: what they cost counts against the share.

With --candidates, each candidate is timed against today's training step back to back (same data, same
precision, alternating rounds), as its throughput over today's: AdamW's per-parameter loop (the default
before fused AdamW), coarser length buckets (whole-epoch sorting), and `torch.compile` (dynamic shapes;
its first epoch, compile time included, reported apart).

The last line is for scripts: ``training_share_of_peak=0.NN`` (in the precision 'auto' picks here).
Run it alone: two cores are shared by everything that runs.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dogetickets.bench import layer_sizes
from dogetickets.config import load_config
from dogetickets.data.batching import batch_indices
from dogetickets.data.sources import load_splits
from dogetickets.data.tasks import Encoded, make_task
from dogetickets.evaluate import predict
from dogetickets.machine import describe
from dogetickets.models.resolve import load_model, load_tokenizer
from dogetickets.models.units import Units
from dogetickets.scoring import expressive_scores
from dogetickets.training.loop import get_accelerator, resolve_precision, train
from dogetickets.training.objectives import ERM

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"no": "fp32", "bf16": "bf16"}


def matmul_peak(precision: str, hidden: int, ffn: int, tokens: int = 16 * 64, seconds: float = 1.0) -> dict:
    """Median FLOP/s of F.linear for each encoder shape (x: tokens x in, w: out x in), and their best."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    shapes = {"h->h": (hidden, hidden), "h->ffn": (hidden, ffn), "ffn->h": (ffn, hidden), "h->3h": (hidden, 3 * hidden)}
    out = {}
    for name, (k, n) in shapes.items():
        x = torch.randn(tokens, k, dtype=dtype)
        w = torch.randn(n, k, dtype=dtype)
        for _ in range(5):
            F.linear(x, w)
        rates = []
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            for _ in range(10):
                F.linear(x, w)
            rates.append(10 * 2 * tokens * k * n / (time.perf_counter() - t0))
        out[name] = statistics.median(rates)
    out["peak"] = max(out.values())
    return out


def forward_flops(model: torch.nn.Module, data: Encoded) -> float:
    """Encoder matmul FLOPs of one forward pass over `data`, from each example's real length."""
    rows = layer_sizes(model)
    fixed = sum(r["flops_per_token_fixed"] for r in rows)
    per_seq = sum(r["flops_per_token_per_seq"] for r in rows)
    lengths = data.lengths.astype(np.float64)
    return float(np.sum(lengths * (fixed + lengths * per_seq)))


def padding_share(data: Encoded, batch_size: int, seed: int = 0) -> float:
    """Share of the tokens in the training batches (bucketed as in training) that are padding."""
    batches = batch_indices(data.lengths, batch_size, shuffle=True, seed=seed, bucket=True)
    real = sum(int(data.lengths[b].sum()) for b in batches)
    padded = sum(len(b) * int(data.lengths[b].max()) for b in batches)
    return 1 - real / padded


def train_seconds(model: torch.nn.Module, task, data: Encoded, dev: Encoded, tc, pad: int) -> float:
    """Seconds of training steps (evaluation excluded) for one epoch over `data`."""
    r = train(model, task, data, dev, tc, ERM(), 0, pad, show_progress=False)
    return len(data) * tc.epochs / r.train_examples_per_s


def measure(precision: str, rewind_point, task, data: Encoded, dev: Encoded, evald: tuple[Encoded, ...], tc,
            pad: int) -> dict:
    tc = tc.model_copy(update={"mixed_precision": precision})
    warm = tc.model_copy(update={"max_steps": 4})
    train(copy.deepcopy(rewind_point), task, data, dev, warm, ERM(), 0, pad, show_progress=False)
    fwd = forward_flops(rewind_point, data)
    secs = train_seconds(copy.deepcopy(rewind_point), task, data, dev, tc, pad)
    model = copy.deepcopy(rewind_point)
    autocast = get_accelerator(precision).autocast if precision != "no" else None
    t0 = time.perf_counter()
    expressive_scores(model, Units(model), task, data, 32, pad, show_progress=False, autocast=autocast)
    score_secs = time.perf_counter() - t0
    t0 = time.perf_counter()
    for part in evald:
        predict(model, task, part, tc.eval_batch_size, pad, autocast=autocast)
    eval_secs = time.perf_counter() - t0
    eval_flops, eval_n = sum(forward_flops(rewind_point, p) for p in evald), sum(len(p) for p in evald)
    return {
        "training": 3 * fwd / secs, "training_ex_s": len(data) / secs,
        "scoring": 2 * fwd / score_secs, "scoring_ex_s": len(data) / score_secs,
        "evaluation": eval_flops / eval_secs, "evaluation_ex_s": eval_n / eval_secs,
    }


def candidates(precision: str, rewind_point, task, data: Encoded, dev: Encoded, tc, pad: int, rounds: int) -> None:
    """Each candidate's training throughput over today's step, alternating, back to back."""
    import dogetickets.data.batching as batching

    tc = tc.model_copy(update={"mixed_precision": precision})
    base_adamw = torch.optim.AdamW

    def unfused_adamw(*a, **k):
        return base_adamw(*a, **{**k, "fused": False})

    def run(variant: str) -> float:
        model = copy.deepcopy(rewind_point)
        saved_factor = batching.BUCKET_FACTOR
        try:
            if variant == "AdamW unfused (before)":
                torch.optim.AdamW = unfused_adamw  # type: ignore[misc]
            if variant == "one length bucket per epoch":
                batching.BUCKET_FACTOR = 10**9
            if variant == "torch.compile":
                compiled = torch.compile(model, dynamic=True)
                t0 = time.perf_counter()
                r = train(compiled, task, data, dev, tc, ERM(), 0, pad, show_progress=False)
                wall = time.perf_counter() - t0
                print(f"    (torch.compile: first epoch {wall:.0f}s wall, {r.train_examples_per_s:.1f} ex/s)")
                return train_seconds(compiled, task, data, dev, tc, pad)
            return train_seconds(model, task, data, dev, tc, pad)
        finally:
            torch.optim.AdamW = base_adamw  # type: ignore[misc]
            batching.BUCKET_FACTOR = saved_factor

    for variant in ("AdamW unfused (before)", "one length bucket per epoch", "torch.compile"):
        ratios = []
        for _ in range(rounds):
            base = run("current")
            other = run(variant)
            ratios.append(base / other)
        print(f"  {NAMES[precision]} {variant}: {statistics.median(ratios):.2f}x today's training throughput "
              f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", default="both", choices=["auto", "no", "bf16", "both"])
    ap.add_argument("--candidates", action="store_true", help="time each candidate speed-up against today's step")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    auto = resolve_precision("auto")
    native = auto == "bf16"
    if args.precision == "both":
        precisions = ["no", "bf16"] if native else ["no"]
    else:
        precisions = [resolve_precision(args.precision)]
    m = describe()
    print(f"machine: {m['cpu'] or platform.machine()}, {m['logical_cores']} logical cores "
          f"({', '.join(m['cpu_features'])}), torch {m['torch']}, {m['torch_threads']} threads; "
          f"'auto' precision here = {NAMES[auto]}")

    cfg = load_config(ROOT / "configs" / "quickstart.toml", overrides={"data.dir": os.environ.get(
        "DOGE_DATA_DIR", str(ROOT.parent / "shared" / "data" / "dogetickets"))})
    splits = load_splits(cfg)
    task = make_task(cfg.data.task, splits.labels)
    tok = load_tokenizer(cfg.model.name)
    data = task.encode(tok, splits.train, cfg.model.max_length)
    dev = task.encode(tok, splits.dev, cfg.model.max_length)
    test = task.encode(tok, splits.test, cfg.model.max_length)
    pad = int(tok.pad_token_id or 0)
    tc = cfg.train.model_copy(update={"epochs": 1, "patience": 0})
    rewind_point = load_model(cfg.model.name, cfg.data.task, splits.labels, 0)
    units = Units(rewind_point)
    print(f"data: quickstart, {len(data)} training examples, mean {data.lengths.mean():.0f} tokens (cap "
          f"{cfg.model.max_length}), batch {tc.batch_size}; padding {padding_share(data, tc.batch_size):.0%} of the "
          f"training batches' tokens; evaluation {len(dev) + len(test)} examples")
    print(f"model: {cfg.model.name} ({units.num_layers} layers, hidden {units.hidden_size}, FFN "
          f"{units.intermediate_size})\n")

    shares = {}
    for precision in precisions:
        peak = matmul_peak(precision, units.hidden_size, units.intermediate_size)
        got = measure(precision, rewind_point, task, data, dev, (dev, test), tc, pad)
        name = NAMES[precision]
        print(f"{name} matmul peak: {peak['peak'] / 1e9:.1f} GFLOP/s  (per shape: "
              + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peak.items() if k != "peak") + ")")
        for what in ("training", "scoring", "evaluation"):
            print(f"  {what:<10} {got[what] / 1e9:6.1f} GFLOP/s = {got[what] / peak['peak']:.0%} of peak "
                  f"({got[what + '_ex_s']:.1f} examples/s)")
        shares[precision] = got["training"] / peak["peak"]
        if args.candidates:
            candidates(precision, rewind_point, task, data, dev, tc, pad, args.rounds)
        print()
    for precision, share in shares.items():
        print(f"training_share_of_peak_{NAMES[precision]}={share:.2f}")
    print(f"training_share_of_peak={shares.get(auto, next(iter(shares.values()))):.2f}")


if __name__ == "__main__":
    main()

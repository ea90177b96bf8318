"""What makes a sweep cheaper, as ratios measured back to back in one process (prints; asserts nothing).

    .venv/bin/python benchmarks/bench_sweep.py [--examples 256] [--quickstart]

* rewind training throughput, physically pruned / gated full-size, at 10%, 30% and 50% sparsity
  (random tickets), beside the FLOP reduction (goal: at least 0.9 x the FLOP reduction);
* bf16 / fp32 training and scoring throughput (bf16 autocast, as `mixed_precision = "auto"` picks
  on hardware with native bf16);
* with --quickstart: `doge run configs/quickstart.toml` with "auto" resolved to fp32 and to bf16
  ($DOGE_AUTO_PRECISION), back to back, then `doge preview` on the run in the precision "auto" picks here
  against the mean wall time of one of its rewinds.
Run it alone: two cores are shared by everything that runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dogetickets.bench import encoder_flops_per_token
from dogetickets.config import config_from_dict
from dogetickets.data.sources import load_splits
from dogetickets.data.tasks import make_task
from dogetickets.models.export import export_pruned, kept_units
from dogetickets.models.resolve import load_model, load_tokenizer
from dogetickets.models.units import Units
from dogetickets.scoring import expressive_scores
from dogetickets.tickets import Shape, random_ticket
from dogetickets.training.loop import get_accelerator, resolve_precision, train
from dogetickets.training.objectives import ERM

ROOT = Path(__file__).resolve().parents[1]
GOAL = 0.9


def _doge(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dogetickets.cli", *args, "-q"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=256, help="training examples (a quarter per Amazon A domain)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--quickstart", action="store_true", help="also time the quickstart before/after and preview")
    args = ap.parse_args()
    data_dir = os.environ.get("DOGE_DATA_DIR", str(ROOT.parent / "shared" / "data" / "dogetickets"))
    cfg = config_from_dict({
        "data": {"dir": data_dir, "train_domains": ["All_Beauty", "Automotive", "Digital_Music", "Gift_Cards"],
                 "test_domains": ["Software"], "max_train_per_domain": args.examples // 4, "max_eval_per_domain": 1},
        "train": {"batch_size": 16, "epochs": 1, "patience": 0, "mixed_precision": "no"},
    })
    print(f"machine: {platform.machine()} {platform.processor()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); 'auto' precision here = {resolve_precision('auto')}")
    splits = load_splits(cfg)
    task = make_task("text", splits.labels)
    tok = load_tokenizer("minilm")
    data = task.encode(tok, splits.train, args.max_length)
    dev = task.encode(tok, splits.dev, args.max_length).subset(range(1))
    pad = int(tok.pad_token_id or 0)
    seq = float(data.lengths.mean())
    print(f"data: {len(data)} Amazon A training reviews, mean {seq:.0f} tokens (cap {args.max_length})\n")
    rewind_point = load_model("minilm", "text", splits.labels, 0)
    units = Units(rewind_point)
    shape = Shape.of(units)
    full_flops = encoder_flops_per_token([units.num_heads] * units.num_layers, [True] * units.num_layers,
                                         units.hidden_size, units.head_dim, units.intermediate_size, round(seq))

    def throughput(model: torch.nn.Module, masks: tuple | None = None, precision: str = "no") -> float:
        tc = cfg.train.model_copy(update={"mixed_precision": precision})
        return train(model, task, data, dev, tc, ERM(), 0, pad, ticket_masks=masks,
                     show_progress=False).train_examples_per_s

    print("rewind training, physically pruned vs gated full-size (random tickets):")
    for sparsity in (0.1, 0.3, 0.5):
        ticket = random_ticket(shape, sparsity, seed=0)
        heads, ffn = kept_units(ticket, shape.num_layers, shape.num_heads)
        flops = encoder_flops_per_token([len(h) for h in heads], ffn, units.hidden_size, units.head_dim,
                                        units.intermediate_size, round(seq))
        gated = throughput(copy.deepcopy(rewind_point), ticket.masks())
        physical = throughput(export_pruned(copy.deepcopy(rewind_point), ticket))
        reduction = full_flops / flops
        print(f"  {ticket.sparsity:5.1%}: gated {gated:5.1f} ex/s, physical {physical:5.1f} ex/s, "
              f"physical / gated {physical / gated:.2f}, FLOP reduction {reduction:.2f} "
              f"(goal >= {GOAL * reduction:.2f}: {'met' if physical / gated >= GOAL * reduction else 'NOT met'})")

    fp32 = throughput(copy.deepcopy(rewind_point))
    bf16 = throughput(copy.deepcopy(rewind_point), precision="bf16")
    print(f"\ntraining: fp32 {fp32:.1f} ex/s, bf16 {bf16:.1f} ex/s, bf16 / fp32 {bf16 / fp32:.2f}")
    scoring = {}
    for precision in ("no", "bf16"):
        model = copy.deepcopy(rewind_point)
        autocast = get_accelerator(precision).autocast if precision != "no" else None
        t0 = time.perf_counter()
        expressive_scores(model, Units(model), task, data, cfg.tickets.score_batch_size, pad, show_progress=False,
                          autocast=autocast)
        scoring[precision] = len(data) / (time.perf_counter() - t0)
    print(f"scoring: fp32 {scoring['no']:.1f} ex/s, bf16 {scoring['bf16']:.1f} ex/s, "
          f"bf16 / fp32 {scoring['bf16'] / scoring['no']:.2f}")

    if args.quickstart:
        config = str(ROOT / "configs" / "quickstart.toml")
        with tempfile.TemporaryDirectory() as tmp:
            times = {}
            for name, precision in (("fp32", "no"), ("bf16", "bf16")):
                os.environ["DOGE_AUTO_PRECISION"] = precision  # what "auto" (the quickstart's setting) resolves to
                try:
                    times[name] = _doge("run", config, "--out", f"{tmp}/{name}")
                finally:
                    os.environ.pop("DOGE_AUTO_PRECISION")
            auto = "bf16" if resolve_precision("auto") == "bf16" else "fp32"
            os.environ["DOGE_AUTO_PRECISION"] = "no" if auto == "fp32" else "bf16"
            try:
                preview = _doge("preview", config, "--out", f"{tmp}/{auto}")
            finally:
                os.environ.pop("DOGE_AUTO_PRECISION")
            rewinds = [json.loads(p.read_text())["seconds"]
                       for p in Path(tmp, auto).glob("seed*/rewind/*/timing.json")]
            one = statistics.mean(rewinds)
            table = Path(tmp, auto, "results.md").read_text()
        print(f"\nthe quickstart's table ({auto}):\n{table}")
        print(f"\nquickstart: fp32 {times['fp32']:.0f}s (goal <= 180 s), bf16 {times['bf16']:.0f}s (goal <= 120 s"
              f"{'' if auto == 'bf16' else '; bf16 emulated on this CPU'})")
        print(f"preview ({auto}): {preview:.0f}s; one rewind: {one:.0f}s (mean of {len(rewinds)}); preview / rewind "
              f"{preview / one:.2f} (goal <= 2)")

if __name__ == "__main__":
    main()

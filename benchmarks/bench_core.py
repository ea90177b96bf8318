"""Core throughput ratios on the packaged MiniLM and the real Amazon data (prints ratios; asserts nothing).

    .venv/bin/python benchmarks/bench_core.py [--examples 256] [--quickstart]

* scoring throughput / training throughput (exact per-example gate gradients vs a training step);
* length-bucketed / padded-to-max training throughput;
* the share of time spent outside the model (tokenizing, batching) in a training pass;
* with --quickstart, the wall time of `doge run configs/quickstart.toml` in a fresh run directory.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dogetickets.config import config_from_dict
from dogetickets.data.batching import batch_indices, collate
from dogetickets.data.sources import load_splits
from dogetickets.data.tasks import make_task
from dogetickets.models.resolve import load_model, load_tokenizer
from dogetickets.models.units import Units
from dogetickets.scoring import expressive_scores
from dogetickets.training.loop import train
from dogetickets.training.objectives import ERM

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=256, help="training examples (64 per domain)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--quickstart", action="store_true")
    args = ap.parse_args()
    data_dir = os.environ.get("DOGE_DATA_DIR", str(ROOT.parent / "shared" / "data" / "dogetickets"))
    per = args.examples // 4
    cfg = config_from_dict({
        "data": {"dir": data_dir, "train_domains": ["All_Beauty", "Automotive", "Digital_Music", "Gift_Cards"],
                 "test_domains": ["Software"], "max_train_per_domain": per, "max_eval_per_domain": 1},
        "train": {"batch_size": 16, "epochs": 1, "patience": 0},
    })
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    splits = load_splits(cfg)
    task = make_task("text", splits.labels)
    tok = load_tokenizer("minilm")
    t0 = time.perf_counter()
    train_data = task.encode(tok, splits.train, args.max_length)
    t_tok = time.perf_counter() - t0
    dev = task.encode(tok, splits.dev, args.max_length).subset(np.array([0]))
    n = len(train_data)
    lengths = train_data.lengths
    print(f"data: {n} Amazon A training examples, mean length {lengths.mean():.0f} tokens "
          f"(max {lengths.max()}), tokenized in {t_tok:.2f}s ({n / t_tok:.0f} examples/s)")

    results = {}
    for bucket in (True, False):
        model = load_model("minilm", "text", splits.labels, 0)
        cfg.train.bucket = bucket
        r = train(model, task, train_data, dev, cfg.train, ERM(), 0, tok.pad_token_id, show_progress=False)
        results["bucketed" if bucket else "padded"] = r.train_examples_per_s
        print(f"training ({'length-bucketed' if bucket else 'padded to max'}): {r.train_examples_per_s:.1f} examples/s")

    model = load_model("minilm", "text", splits.labels, 0)
    t0 = time.perf_counter()
    expressive_scores(model, Units(model), task, train_data, cfg.tickets.score_batch_size, tok.pad_token_id,
                      show_progress=False)
    t_score = time.perf_counter() - t0
    scoring = n / t_score
    print(f"scoring (exact per-example gate gradients): {scoring:.1f} examples/s")

    # time outside the model in one training epoch: batching (tokenization is once per run)
    t0 = time.perf_counter()
    for idx in batch_indices(lengths, 16, shuffle=True, seed=0):
        collate(train_data, idx, tok.pad_token_id)
    t_collate = time.perf_counter() - t0
    t_train = n / results["bucketed"]
    outside = (t_collate + t_tok) / (t_train + t_collate + t_tok)
    print()
    print(f"scoring / training throughput:        {scoring / results['bucketed']:.2f}   (goal >= 1.8)")
    print(f"bucketed / padded training throughput: {results['bucketed'] / results['padded']:.2f}   (goal >= 2)")
    print(f"share of a training epoch outside the model (tokenize + batch): {outside:.1%}   (goal < 10%)")

    if args.quickstart:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dogetickets.cli", "run", str(ROOT / "configs/quickstart.toml"),
                            "--out", tmp, "-q"], check=True, cwd=ROOT)
            print(f"quickstart wall time: {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()

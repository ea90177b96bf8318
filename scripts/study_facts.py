"""The README's numbers about the published Amazon study, computed from its committed CSVs (docs/issue10/study/).

The study's run directories (with every prediction) are not kept in the repository, so `doge report`'s
two-level bootstrap cannot be recomputed from what is committed. What the CSVs do hold is each seed's
dev-selected test mean per method, which is enough for the seed level: the per-seed differences, the
t-interval over them and its p (dogetickets.report.stats.two_level with no test-example replicates: the
seed level alone), and the smallest difference such a design detects with 80% power. These miss the
test-set noise every seed shares (the same test reviews for all seeds), so the intervals are, if
anything, too narrow and the detectable difference too small. Also printed: doge - random from the
unrounded means, the units the tickets prune at 30% per allocation, the `global` tickets at 20-30% that
keep almost no attention, and the recorded process time.

    .venv/bin/python scripts/study_facts.py [docs/issue10/study]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dogetickets.report.stats import ONE_POINT, Design, detectable_difference, seeds_needed, two_level

COMPARISONS = [("doge-balanced", "erm"), ("doge-nc-balanced", "erm"), ("doge-balanced", "winning-balanced"),
               ("doge-nc-balanced", "winning-balanced"), ("doge-balanced", "random-balanced")]
HEADS = 72  # MiniLM: 6 layers x 12 heads


def seed_level(runs: pd.DataFrame, a: str, b: str) -> None:
    chosen = runs[runs["dev_selected"]]
    table = chosen.pivot_table(index=["dataset", "seed"], columns="method", values="test_mean")
    diffs = {ds: (table.loc[ds, a] - table.loc[ds, b]).to_numpy() for ds in table.index.unique("dataset")}
    print(f"{a} - {b}: per-seed differences of the dev-selected test mean (points)")
    for ds, d in diffs.items():
        _line(ds, [d])
    _line("mean over datasets", list(diffs.values()))


def _line(name: str, obs: list[np.ndarray]) -> None:
    boot = [np.stack([d, d]) for d in obs]  # no test-example replicates: the seed level alone
    r = {k: float(v) for k, v in two_level(obs, boot, n_examples=1e9).items()}
    per_seed = ", ".join(f"{100 * x:+.1f}" for d in obs for x in d)
    design = Design(seed=r["var_seed_level"], shared=0.0, interaction=0.0, n_seeds=len(obs[0]),
                    n_examples=1e9, n_splits=len(obs))
    mdd = detectable_difference(design)
    need = seeds_needed(design, ONE_POINT)
    print(f"  {name}: {100 * r['diff']:+.2f} [{100 * r['t_ci_low']:+.2f}, {100 * r['t_ci_high']:+.2f}] "
          f"p = {r['t_p_value']:.3f} (t over {sum(len(d) for d in obs)} seeds, df {r['seed_df']:.1f}); "
          f"per seed {per_seed}; detectable with 80% power: {100 * mdd:.1f} points; "
          f"seeds per split for 1 point: {need if need is not None else '> 10,000'}")


def main(folder: Path) -> None:
    runs = pd.read_csv(folder / "runs.csv")
    runs["dev_selected"] = runs["dev_selected"].astype(str) == "True"
    for a, b in COMPARISONS:
        seed_level(runs, a, b)
    long = pd.read_csv(folder / "table2_long.csv")
    dev = long[long["selection"] == "dev"].pivot_table(index="dataset", columns="method", values="test_mean")
    d = dev["doge-balanced"].mean() - dev["random-balanced"].mean()
    print(f"doge - random, Table 2 means over the three splits (unrounded): {100 * d:+.2f} points")
    units = []
    for f in sorted(folder.glob("diagnostics-*-overlap.csv")):
        o = pd.read_csv(f)
        o["dataset"] = re.sub(r"^diagnostics-|-overlap\.csv$", "", f.name)
        units.append(o)
    o = pd.concat(units)
    at30 = o[o["target_sparsity"] == 0.3]
    for alloc, g in at30.groupby("allocation"):
        counts = sorted({(int(h), int(f)) for h, f in zip(g["heads_a"], g["ffn_a"], strict=True)})
        print(f"30% {alloc}: (pruned heads, pruned FFN blocks) of doge/doge-nc/random tickets: {counts}")
    glob = o[(o["allocation"] == "global") & o["target_sparsity"].isin([0.2, 0.3])]
    tickets = {(r.dataset, r.seed, r.method, r.target_sparsity): r.heads_a for r in glob.itertuples()}
    tickets |= {(r.dataset, r.seed, "winning-global", r.target_sparsity): r.heads_winning for r in glob.itertuples()}
    bare = {k: h for k, h in tickets.items() if h >= 0.8 * HEADS}
    print(f"global tickets at 20-30%: {len(tickets)}; pruning >= 80% of the {HEADS} heads: {len(bare)} {bare}")
    study = (folder.parent / "study.md").read_text(encoding="utf-8")
    totals = [float(x) for x in re.findall(r"^\| amazon_\w \| (\d+) s \(", study, flags=re.M)]
    hours = sum(totals) / 3600
    print(f"recorded `doge run` process time: {sum(totals):.0f} s = {hours:.1f} h over {len(totals)} splits")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "docs" / "issue10" / "study")

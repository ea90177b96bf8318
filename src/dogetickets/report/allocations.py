"""Ticket allocations compared: how the split of the pruned parameters between heads and FFN blocks
(`tickets.allocation`: global, proportional, balanced) changes a method's tickets, on dev and on test.

A run directory compares allocations when one ticket method (say doge) has runs under two or more of
them (`doge-global`, `doge-balanced`, ... in `tickets.methods`). Each (method, target sparsity, seed)
cell is the run with the best dev score among its lambdas (the report's selection rule, per sparsity);
the comparison averages each allocation over the cells every compared allocation has, so no allocation
is helped by a sparsity or seed the others lack. Dev is what a choice may read; test is shown beside it.
"""

from __future__ import annotations

import math

import pandas as pd

from dogetickets import methods as registry
from dogetickets.report.select import select_dev, with_test

CELL = ("dataset", "base", "target_sparsity", "seed")


def cells(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, base method, target sparsity, seed, allocation) of the ticket methods that
    have runs under two or more allocations: the dev-best run of the cell (over lambdas), with its test
    numbers attached afterwards. Columns: dataset, base, allocation, target_sparsity, seed, dev_score,
    test_mean, uses_scores. Empty when no method is run under two allocations."""
    cols = ["dataset", "base", "allocation", "target_sparsity", "seed", "dev_score", "test_mean", "uses_scores"]
    if "allocation" not in runs.columns:
        return pd.DataFrame(columns=cols)
    ticket = runs["method"].map(lambda m: registry.is_known(m) and registry.get(m).is_ticket)
    t = runs[ticket & (runs["allocation"].astype(str) != "")]
    if t.empty:
        return pd.DataFrame(columns=cols)
    t = t.assign(base=t["method"].map(registry.base))
    several = t.groupby(["dataset", "base"])["allocation"].transform("nunique") > 1
    t = t[several]
    if t.empty:
        return pd.DataFrame(columns=cols)
    chosen = with_test(select_dev(t, keys=("dataset", "method", "seed", "target_sparsity")), t)
    chosen = chosen.assign(uses_scores=chosen["base"].map(lambda b: registry.get(b).uses_scores))
    return chosen[cols].reset_index(drop=True)


def _common(c: pd.DataFrame) -> pd.DataFrame:
    """The cells (dataset, base, sparsity, seed) that every allocation compared in their dataset has."""
    n_alloc = c.groupby("dataset")["allocation"].transform("nunique")
    n_here = c.groupby(list(CELL))["allocation"].transform("nunique")
    return c[n_here == n_alloc]


def table(c: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds, per (dataset, method, target sparsity) and allocation: 'dev / test' in %, and a
    row per method averaging its sparsities (the cells every allocation has)."""
    if c.empty:
        return pd.DataFrame()
    allocs = [a for a in registry.ALLOCATIONS if a in set(c["allocation"])]
    rows = []
    for (dataset, base), g in c.groupby(["dataset", "base"], sort=False):
        common = _common(g)
        for sp, gs in [*g.groupby("target_sparsity"), ("all", common)]:
            row = {"dataset": dataset, "method": registry.label(base),
                   "sparsity": f"{sp:.0%}" if sp != "all" else "all (common cells)",
                   "seeds": str(gs["seed"].nunique())}
            for a in allocs:
                ga = gs[gs["allocation"] == a]
                row[a] = (f"{ga['dev_score'].mean():.1%} / {_pct(ga['test_mean'].mean())}" if len(ga) else "")
            rows.append(row)
    out = pd.DataFrame(rows)
    order = {registry.label(b): registry.order_key(b) for b in c["base"].unique()}
    return out.sort_values(["dataset", "method"], key=lambda s: s.map(order) if s.name == "method" else s,
                           kind="mergesort").reset_index(drop=True)


def _pct(x: float) -> str:
    return "-" if isinstance(x, float) and math.isnan(x) else f"{x:.1%}"


def summary(c: pd.DataFrame) -> list[str]:
    """Per dataset: each allocation's mean dev and test score over the cells of the score-ranked ticket
    methods (winning, doge, ...) that every allocation has, and which allocation is best on dev."""
    lines = []
    scored = c[c["uses_scores"].astype(bool)] if not c.empty else c
    for dataset, g in scored.groupby("dataset", sort=False):
        common = _common(g)
        if common.empty:
            continue
        means = common.groupby("allocation")[["dev_score", "test_mean"]].mean()
        allocs = [a for a in registry.ALLOCATIONS if a in means.index]
        best_dev = max(allocs, key=lambda a: means.loc[a, "dev_score"])
        tested = [a for a in allocs if not math.isnan(means.loc[a, "test_mean"])]
        best_test = max(tested, key=lambda a: means.loc[a, "test_mean"]) if len(tested) == len(allocs) else None
        bases = ", ".join(registry.label(b) for b in registry.ordered(common["base"]))
        sparsities = "/".join(f"{s:.0%}" for s in sorted(common["target_sparsity"].unique()))
        per = ", ".join(f"{a} {means.loc[a, 'dev_score']:.1%} / {_pct(means.loc[a, 'test_mean'])}" for a in allocs)
        lines.append(
            f"{dataset}: {bases} at {sparsities}, {_n(common['seed'].nunique(), 'seed')}, {len(common) // len(allocs)} "
            f"cells per allocation; mean dev / test: {per}. Best on dev: {best_dev}"
            + ("." if best_test is None else f" (on test: {best_test})." if best_test != best_dev
               else " (on test too).")
        )
    return lines


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"

"""Table 4 of the paper: does the gain depend on how many training domains there are?

A run directory is a *domain-count variant* of another when their resolved configs (config.toml) agree on the
model, the training settings and the data (dataset, task, test domains, sizes: everything but
``data.train_domains`` and ``data.notes``) and its training domains are a strict subset of the other's (MNLI
trained on 5, 4 and 3 genres, tested on the same unseen genres). Such a family is the paper's Table 4 at
this scale: its members other than the one with the most training domains are left out of Table 2 and of
every mean over datasets (they would count the same test set twice) and reported here instead.

Per family: each method's dev-selected test mean per number of training domains (the methods every member
ran); each ticket method minus ERM per member, with the two-level bootstrap (``stats.bootstrap_table``); and
the change of that difference from the most to the fewest training domains (``stats.bootstrap_change``: the
seeds of the two designs resampled independently, their common test examples drawn once for both).
table4.csv holds every number.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dogetickets import methods
from dogetickets.io import atomic_write_text
from dogetickets.report import paper
from dogetickets.report.collect import metric_label
from dogetickets.report.document import Document
from dogetickets.report.select import select_dev_in_order, with_test
from dogetickets.report.stats import bootstrap_change, bootstrap_table
from dogetickets.report.tables import fmt_mean_std, mean_std, p_is, paper_table, points
from dogetickets.run.layout import run_config

_IGNORED_DATA_KEYS = ("train_domains", "notes")  # what a domain-count variant may change in [data]
_SHARED_SECTIONS = ("model", "train")  # what it must share besides the rest of [data]
BASELINE = "erm"


@dataclass(frozen=True)
class Family:
    """Run directories (indices into the report's list) that differ only in their training domains, the one
    with the most first; `domains[k]` are member k's training domains."""

    members: tuple[int, ...]
    domains: tuple[tuple[str, ...], ...]


def _read(run_dir: Path) -> tuple[str, tuple[str, ...]] | None:
    """(what a variant must share, as a key; the training domains) of a run directory, None without a
    readable config."""
    raw = run_config(run_dir)
    if raw is None:
        return None
    try:
        data = dict(raw["data"])
        train = tuple(str(d) for d in data["train_domains"])
    except (KeyError, TypeError):
        return None
    shared = {"data": {k: v for k, v in data.items() if k not in _IGNORED_DATA_KEYS},
              **{s: raw.get(s, {}) for s in _SHARED_SECTIONS}}
    return json.dumps(shared, sort_keys=True, default=str), train


def families(run_dirs: list[Path]) -> list[Family]:
    """The domain-count families among `run_dirs`: run directories sharing everything but their training
    domains, with nested training domains of different counts (two or more members each)."""
    read = {i: r for i, d in enumerate(run_dirs) if (r := _read(Path(d))) is not None}
    groups: dict[str, list[int]] = {}
    for i, (key, _) in read.items():
        groups.setdefault(key, []).append(i)
    out = []
    for idx in groups.values():
        idx = sorted(idx, key=lambda i: (-len(read[i][1]), i))
        domains = [frozenset(read[i][1]) for i in idx]
        nested = all(b < a for a, b in zip(domains, domains[1:], strict=False))  # strict subsets, one chain
        if len(idx) > 1 and nested:
            out.append(Family(tuple(idx), tuple(read[i][1] for i in idx)))
    return out


def _columns(names: list[str], family: Family) -> list[str]:
    return [f"{len(d)} domains ({names[i]})" for i, d in zip(family.members, family.domains, strict=True)]


def _shared_methods(frame: pd.DataFrame, members: list[str]) -> set[str]:
    """The methods every member (dataset name) of `frame` ran."""
    return set.intersection(*(set(frame.loc[frame["dataset"] == m, "method"]) for m in members))


def table(names: list[str], family: Family, runs: pd.DataFrame) -> pd.DataFrame:
    """Model x number of training domains: the dev-selected test mean ± std over seeds, for the methods every
    member ran (registry order)."""
    members = [names[i] for i in family.members]
    sub = runs[runs["dataset"].isin(members)]
    chosen = with_test(select_dev_in_order(sub), sub)
    common = _shared_methods(chosen, members)
    rows = []
    for method in methods.ordered(common):
        row = {"Model": methods.label(method)}
        for col, m in zip(_columns(names, family), members, strict=True):
            g = chosen[(chosen["dataset"] == m) & (chosen["method"] == method)]
            mean, std, _ = mean_std(g["test_mean"].to_numpy(float))
            row[col] = fmt_mean_std(mean, std)
        rows.append(row)
    return pd.DataFrame(rows, columns=["Model", *_columns(names, family)])


def comparisons(names: list[str], family: Family, runs: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """One row per ticket method and member (its method - ERM, two-level bootstrap) and per ticket method the
    change from the first member (most domains) to the last (fewest): columns method, member, train_domains,
    diff, ci_low, ci_high, p_value, ex_ci_low, ex_ci_high, n_seeds (member "change": n_seeds empty)."""
    members = [names[i] for i in family.members]
    sub = runs[runs["dataset"].isin(members)]
    sel = select_dev_in_order(sub)
    tickets = [m for m in methods.ordered(set(sel["method"])) if m != BASELINE
               and methods.is_known(m) and methods.get(m).is_ticket]
    wanted = tuple((m, BASELINE) for m in tickets)
    # one member at a time: bootstrap_table over all of them would also bootstrap their mean, meaningless here
    boot = pd.concat([bootstrap_table(sel[sel["dataset"] == m], comparisons=wanted, n_boot=n_boot, seed=seed)
                      for m in members], ignore_index=True)
    boot = boot[boot["seed"].astype(str) == "mean"]
    rows: list[dict[str, Any]] = []
    keys = ("diff", "ci_low", "ci_high", "p_value", "ex_ci_low", "ex_ci_high")
    for method in tickets:
        for m, domains in zip(members, family.domains, strict=True):
            r = boot[(boot["dataset"] == m) & (boot["comparison"] == f"{method} - {BASELINE}")]
            if not r.empty:
                rows.append({"method": method, "member": m, "train_domains": len(domains),
                             **{k: float(r.iloc[0][k]) for k in keys}, "n_seeds": float(r.iloc[0]["n_seeds"])})
        pairs = [_pairs(sel, m, method) for m in (members[0], members[-1])]
        if all(pairs):
            metric = str(sel["metric"].iloc[0])
            res = bootstrap_change(pairs[0], pairs[1], metric, n_boot, seed)
            rows.append({"method": method, "member": "change",
                         "train_domains": f"{len(family.domains[0])} - {len(family.domains[-1])}",
                         **{k: res[k] for k in keys}, "n_seeds": math.nan})
    return pd.DataFrame(rows, columns=["method", "member", "train_domains", *keys, "n_seeds"])


def _pairs(sel: pd.DataFrame, dataset: str, method: str) -> list[tuple[Path, Path]]:
    """(method, ERM) run paths of one member, per seed both have."""
    mine = sel[sel["dataset"] == dataset]
    a = mine[mine["method"] == method].set_index("seed")["path"]
    b = mine[mine["method"] == BASELINE].set_index("seed")["path"]
    return [(Path(a[s]), Path(b[s])) for s in sorted(set(a.index) & set(b.index))]


def _cell(r: pd.Series) -> str:
    if math.isnan(r["ci_low"]):
        noise = f"[{points(r['ex_ci_low'])}, {points(r['ex_ci_high'])}]"
        return f"{points(r['diff'])} (one seed: test-set noise only {noise})"
    return f"{points(r['diff'])} [{points(r['ci_low'])}, {points(r['ci_high'])}], {p_is(r['p_value'])}"


def _trend(method: str, cmp: pd.DataFrame, family: Family) -> str | None:
    change = cmp[(cmp["method"] == method) & (cmp["member"] == "change")]
    if change.empty:
        return None
    r = change.iloc[0]
    most, fewest = len(family.domains[0]), len(family.domains[-1])
    way = "larger" if r["diff"] > 0 else "smaller" if r["diff"] < 0 else "the same"
    sure = (f"two-level 95% CI [{points(r['ci_low'])}, {points(r['ci_high'])}], {p_is(r['p_value'])}"
            if not math.isnan(r["ci_low"]) else "one seed: no two-level interval")
    excludes = not math.isnan(r["ci_low"]) and (r["ci_low"] > 0 or r["ci_high"] < 0)
    verdict = "the interval excludes no change" if excludes else "the interval includes no change"
    return (f"{methods.label(method)} - {methods.label(BASELINE)} is {way} with {most} training domains than with "
            f"{fewest}: a change of {points(r['diff'])} points ({sure}; {verdict}).")


def _beside_the_paper(doc: Document, names: list[str], family: Family, run_dirs: list[Path],
                      runs: pd.DataFrame) -> None:
    """The paper's Table 4 beside ours, when the family's largest member is the paper's MNLI."""
    base = paper.identify(Path(run_dirs[family.members[0]]))
    if base is None or base.key != "mnli":
        return
    members = [names[i] for i in family.members]
    sub = runs[runs["dataset"].isin(members)]
    sub = sub[sub["method"].isin(_shared_methods(sub, members))]
    columns = {m: (f"{m} ({len(d)} genres)", paper.table4_column(len(d)))
               for m, d in zip(members, family.domains, strict=True)}
    doc.p(
        "The paper's Table 4 beside ours (optimistic protocol, as for Table 2): BERT-base with the sparsity chosen "
        "on test, one number per cell; its 4 and 3 training genres were drawn at random and are not named. Ours "
        "under that protocol is the 'oracle (test-selected)' column (per seed the configuration with the best "
        "test mean); the dev-selected column is our result."
    )
    doc.table(paper_table(sub, columns))


def section(doc: Document, names: list[str], fams: list[Family], runs: pd.DataFrame, out: Path,
            n_boot: int, seed: int, run_dirs: list[Path]) -> None:
    """The Table 4 section for each of `fams` (:func:`families` of the report's run directories `run_dirs`,
    whose names are `names`; nothing without one), with the paper's Table 4 beside it where the family is
    the paper's MNLI; table4.csv into `out`."""
    if not fams:
        return
    frames = []
    for family in fams:
        base = names[family.members[0]]
        others = [names[i] for i in family.members[1:]]
        metric = metric_label(str(runs.loc[runs["dataset"] == base, "metric"].iloc[0]))
        doc.h(2, f"Table 4: the number of training domains ({base}, {metric})")
        dropped = [", ".join(sorted(set(family.domains[0]) - set(d))) for d in family.domains[1:]]
        doc.p(
            f"{' and '.join(others)} train on {' and '.join(str(len(d)) for d in family.domains[1:])} of {base}'s "
            f"{len(family.domains[0])} training domains (without {'; without '.join(dropped)}), with every other "
            "data, model and training setting the same and the same unseen test domains: the paper's Table 4 at "
            "this scale. They are left out of Table 2 and of every mean over datasets above (the same test set "
            "would count twice). Cells: test mean ± sample std over seeds of each method's dev-selected "
            "configuration, for the methods every member ran."
        )
        doc.table(table(names, family, runs))
        _beside_the_paper(doc, names, family, run_dirs, runs)
        cmp = comparisons(names, family, runs, n_boot, seed)
        frames.append(cmp.assign(family=base))
        if cmp.empty:
            continue
        shown = []
        for method in dict.fromkeys(cmp["method"]):
            row = {"Comparison": f"{methods.label(method)} - {methods.label(BASELINE)}"}
            for col, m in zip(_columns(names, family), [names[i] for i in family.members], strict=True):
                r = cmp[(cmp["method"] == method) & (cmp["member"] == m)]
                row[col] = _cell(r.iloc[0]) if not r.empty else "-"
            r = cmp[(cmp["method"] == method) & (cmp["member"] == "change")]
            change = f"{len(family.domains[0])} - {len(family.domains[-1])} domains"
            row[change] = _cell(r.iloc[0]) if not r.empty else "-"
            shown.append(row)
        doc.p(
            "Each ticket method minus ERM with each number of training domains, in points, with the two-level "
            "95% CI and p (seeds and test examples; see 'Paired bootstrap'), and how that difference changes "
            f"from {len(family.domains[0])} to {len(family.domains[-1])} training domains: (A - ERM with "
            f"{len(family.domains[0])}) - (A - ERM with {len(family.domains[-1])}), the two designs' seeds "
            "resampled independently and their common test examples drawn once for both (report.stats."
            "bootstrap_change). A positive change: the gain grows with more training domains."
        )
        doc.table(pd.DataFrame(shown))
        doc.items([t for m in dict.fromkeys(cmp["method"]) if (t := _trend(m, cmp, family))])
    atomic_write_text(out / "table4.csv", pd.concat(frames, ignore_index=True).to_csv(index=False))

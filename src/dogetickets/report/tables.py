"""Table 2 of the paper (main comparison) and the per-run table, as DataFrames, markdown and CSV.

Table 2 cells are mean ± sample std (ddof=1) over seeds of the test mean (in %, one decimal) of the
dev-selected configuration; the std is omitted with one seed. "Average score" is the mean over datasets
of the per-dataset means, "Average sparsity" the mean over datasets and seeds of the achieved sparsity of
the dev-selected tickets. The "oracle (test-selected)" columns use the best-test configuration instead
and are upper bounds, not results.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dogetickets import methods as registry
from dogetickets.io import atomic_write_text
from dogetickets.report.collect import metric_label
from dogetickets.report.select import select_dev, select_oracle, with_test

ORACLE = "oracle (test-selected)"


def pct(x: float, digits: int = 1) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def points(x: float | None, digits: int = 1, signed: bool = True) -> str:
    """A difference or a bound `x` (a fraction of the metric) in points, signed, with `digits` decimals; one
    that would round to zero but is not zero keeps its side: as many decimals as its first significant
    digit needs (-0.0002 -> "-0.02", not "+0.0"). Zero (within 1e-12 of the metric, float noise) -> "0.0";
    NaN or None -> ""."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    v = 100 * float(x)
    if abs(v) < 1e-10:
        return f"{0.0:.{digits}f}"
    d = digits
    while float(f"{v:.{d}f}") == 0:
        d += 1
    return f"{v:+.{d}f}" if signed else f"{v:.{d}f}"


def percent(x: float | None, signed: bool = False) -> str:
    """A fraction in %, one decimal, as the report's tables and sentences show it ("0.0", never "-0.0"; "" for
    None or NaN); `signed` (differences, bounds): :func:`points`, which keeps the side of zero of a value that
    would round to 0.0 (-0.0002 -> "-0.02")."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if signed:
        return points(x)
    text = f"{100 * x:.1f}"
    return "0.0" if text.lstrip("+-") == "0.0" else text


def p_value(p: float | None) -> str:
    """A p-value: three decimals, "< 0.001" below."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    return "< 0.001" if p < 0.0005 else f"{p:.3f}"


def p_is(p: float | None) -> str:
    """A p-value in a sentence or cell: "p = 0.003", "p < 0.001"; "" for None or NaN."""
    text = p_value(p)
    return "" if not text else f"p {text}" if text.startswith("<") else f"p = {text}"


def mean_std(values: list[float] | np.ndarray) -> tuple[float, float, int]:
    """Mean, sample std (NaN with fewer than two values) and count of the non-NaN values."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)


def fmt_mean_std(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return pct(mean) if math.isnan(std) else f"{pct(mean)} ± {pct(std)}"


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Long table behind Table 2: one row per (dataset, method, selection) with the numbers over seeds.

    selection is "dev" (the reported one) or "oracle" (test-selected).
    """
    rows: list[dict[str, Any]] = []
    for selection, chosen in (("dev", with_test(select_dev(runs), runs)), ("oracle", select_oracle(runs))):
        for (dataset, method), g in chosen.groupby(["dataset", "method"], sort=False):
            m, s, n = mean_std(g["test_mean"].to_numpy(float))
            dm, ds, _ = mean_std(g["dev_score"].to_numpy(float))
            rows.append(
                {
                    "dataset": dataset,
                    "method": method,
                    "selection": selection,
                    "metric": g["metric"].iloc[0],
                    "n_seeds": len(g),
                    "test_mean": m,
                    "test_std": s,
                    "n_test": n,
                    "dev_mean": dm,
                    "dev_std": ds,
                    "sparsity_mean": float(g["sparsity"].mean()),
                    "names": ",".join(f"seed{sd}:{nm}" for sd, nm in zip(g["seed"], g["name"], strict=True)),
                }
            )
    return pd.DataFrame(rows)


def table2(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 2 in the paper's form: row 0 names each dataset's metric (Acc / F1), then one row per method."""
    summary = summarize(runs)
    datasets = list(dict.fromkeys(runs["dataset"]))
    metrics = {d: str(runs.loc[runs["dataset"] == d, "metric"].iloc[0]) for d in datasets}
    methods = registry.ordered(runs["method"])
    oracle_cols = [f"{d} {ORACLE}" if len(datasets) > 1 else ORACLE for d in datasets]
    if len(datasets) > 1:
        oracle_cols.append(f"Average {ORACLE}")
    header = {"Model": "", **{d: metric_label(metrics[d]) for d in datasets}}
    header.update({"Average score": "-", "Average sparsity": "-"})
    header.update({c: "-" for c in oracle_cols})
    header.update({c: metric_label(metrics[d]) for c, d in zip(oracle_cols, datasets, strict=False)})
    out = [header]
    for method in methods:
        row: dict[str, str] = {"Model": registry.label(method)}
        means, sparsities, omeans = [], [], []
        for d in datasets:
            sel = summary[(summary.dataset == d) & (summary.method == method)]
            dev = sel[sel.selection == "dev"]
            if dev.empty:
                row[d] = "-"
                continue
            r = dev.iloc[0]
            row[d] = fmt_mean_std(r.test_mean, r.test_std)
            means.append(r.test_mean)
            sparsities.append(r.sparsity_mean)
        # averages only over every dataset: a method run on some of them is not averaged beside the others
        whole = len(means) == len(datasets)
        row["Average score"] = (
            pct(float(np.mean(means))) if whole and not any(map(math.isnan, means)) else "-"
        )
        row["Average sparsity"] = f"{pct(float(np.mean(sparsities)))}%" if whole else "-"
        for col, d in zip(oracle_cols, datasets, strict=False):
            o = summary[(summary.dataset == d) & (summary.method == method) & (summary.selection == "oracle")]
            if o.empty:
                row[col] = "-"
                continue
            row[col] = fmt_mean_std(o.iloc[0].test_mean, o.iloc[0].test_std)
            omeans.append(o.iloc[0].test_mean)
        if len(datasets) > 1:
            ok = len(omeans) == len(datasets) and not any(map(math.isnan, omeans))
            row[oracle_cols[-1]] = pct(float(np.mean(omeans))) if ok else "-"
        out.append(row)
    return pd.DataFrame(out, columns=list(header))


def _cell(means: dict[tuple[str, str], float], method: str, selection: str) -> float:
    return means.get((method, selection), math.nan)


def paper_table(runs: pd.DataFrame, datasets: dict[str, tuple[str, dict[str, float]]]) -> pd.DataFrame:
    """A table of the paper beside ours (its Table 2, or its Table 4), for the run directories it has.

    `datasets`: our dataset name -> (its name in the table, the paper's score in % by method base name: the
    ``report.paper`` column it matches). One row per (dataset, method), then one per (dataset, method - ERM):
    the paper's number, ours test-selected (the paper's protocol: per seed the configuration with the best test
    mean, then the mean over seeds) and ours dev-selected (the reported result). Differences are differences of
    those means, in points."""
    summary = summarize(runs)
    rows: list[dict[str, str]] = []
    for name, (shown, scores) in datasets.items():
        sub = summary[summary["dataset"] == name]
        methods = registry.ordered(sub["method"])
        means = {
            (m, sel): float(g["test_mean"].iloc[0])
            for (m, sel), g in sub.groupby(["method", "selection"], sort=False)
        }
        cell = functools.partial(_cell, means)
        for m in methods:
            ps = scores.get(registry.base(m))
            rows.append({
                "dataset": shown,
                "model": registry.label(m),
                "paper (test-selected)": "-" if ps is None else f"{ps:.1f}",
                f"ours, {ORACLE}": pct(cell(m, "oracle")) or "-",
                "ours, dev-selected": pct(cell(m, "dev")) or "-",
            })
        if "erm" not in methods:
            continue
        for m in methods:
            if m == "erm":
                continue
            ps, pe = scores.get(registry.base(m)), scores.get("erm")
            rows.append({
                "dataset": shown,
                "model": f"{registry.label(m)} - {registry.label('erm')}",
                "paper (test-selected)": "-" if ps is None or pe is None else points((ps - pe) / 100),
                f"ours, {ORACLE}": points(cell(m, "oracle") - cell("erm", "oracle")) or "-",
                "ours, dev-selected": points(cell(m, "dev") - cell("erm", "dev")) or "-",
            })
    cols = ["dataset", "model", "paper (test-selected)", f"ours, {ORACLE}", "ours, dev-selected"]
    return pd.DataFrame(rows, columns=cols)


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run with every number, plus whether it was the dev-selected (and the oracle) configuration."""
    dev_paths = set(select_dev(runs)["path"])
    oracle_paths = set(select_oracle(runs)["path"]) if runs["test_mean"].notna().any() else set()
    df = runs.copy()
    df.insert(4, "dev_selected", df["path"].isin(dev_paths))
    df.insert(5, "oracle_selected", df["path"].isin(oracle_paths))
    return df


def runs_display(runs: pd.DataFrame) -> pd.DataFrame:
    """The per-run table for reading: scores and sparsities in %, one decimal."""
    df = runs_table(runs).drop(columns=["path"])
    for c in df.columns:
        if c in ("dev_score", "test_mean", "test_worst", "sparsity", "target_sparsity") or ":" in c:
            df[c] = df[c].map(lambda x: pct(float(x)) if x is not None else "")
    df["lambda"] = df["lambda"].map(lambda x: "" if math.isnan(x) else f"{x:g}")
    df["dev_selected"] = df["dev_selected"].map(lambda x: "yes" if x else "")
    df["oracle_selected"] = df["oracle_selected"].map(lambda x: "oracle" if x else "")
    return df


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub markdown table (no extra dependency)."""

    def cell(x: Any) -> str:
        s = "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)
        return s.replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cell(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for rec in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(x) for x in rec) + " |")
    return "\n".join(lines) + "\n"


def write_tables(runs: pd.DataFrame, out: Path) -> dict[str, Path]:
    """table2.{md,csv}, table2_long.csv (the numbers), runs.csv and runs.md in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t2 = table2(runs)
    paths = {
        "table2.csv": out / "table2.csv",
        "table2.md": out / "table2.md",
        "table2_long.csv": out / "table2_long.csv",
        "runs.csv": out / "runs.csv",
        "runs.md": out / "runs.md",
    }
    atomic_write_text(paths["table2.csv"], t2.to_csv(index=False))
    atomic_write_text(paths["table2.md"], to_markdown(t2))
    atomic_write_text(paths["table2_long.csv"], summarize(runs).to_csv(index=False))
    atomic_write_text(paths["runs.csv"], runs_table(runs).to_csv(index=False))
    atomic_write_text(paths["runs.md"], to_markdown(runs_display(runs)))
    return paths

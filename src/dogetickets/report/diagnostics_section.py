"""The report's "Diagnostics" section: the tables and prose around ``report.diagnostics`` (the computation)
and ``report.diagnostics_figure`` (the figure), per dataset; CSVs and the figure are written beside the
report as diagnostics-<dataset>-*.csv / diagnostics-<dataset>.png."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dogetickets import methods
from dogetickets.io import atomic_write_text
from dogetickets.report import diagnostics as dx
from dogetickets.report.diagnostics_figure import plot_diagnostics
from dogetickets.report.document import Document

__all__ = ["dataset_section", "overlap_summary", "section"]


def _f(x: Any, digits: int = 2) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _g(x: Any) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write_text(path, df.to_csv(index=False))


# ------------------------------------------------------------------------------------------- the tables


def overlap_summary(overlap: pd.DataFrame) -> pd.DataFrame:
    """The report's compact overlap table: one row per method (x lambda x allocation), one column per target
    sparsity (%), cells = mean Jaccard over seeds with the winning ticket (two decimals)."""
    if overlap.empty:
        return pd.DataFrame()
    df = overlap.assign(_l=overlap["lambda"].fillna(-math.inf))
    sparsities = sorted(df["target_sparsity"].unique())
    show_alloc = df["allocation"].nunique() > 1
    rows = []
    for (method, _, alloc), g in sorted(df.groupby(["method", "_l", "allocation"], sort=False),
                                        key=lambda kv: (methods.order_key(kv[0][0]), kv[0][1], kv[0][2])):
        label = dx.curve_label(method, float(g["lambda"].iloc[0]), alloc, show_alloc)
        row = {"method": label, "seeds": g["seed"].nunique()}
        means = g.groupby("target_sparsity")["jaccard"].mean()
        for ts in sparsities:
            row[f"{100 * ts:g}%"] = _f(means.get(ts, math.nan))
        rows.append(row)
    return pd.DataFrame(rows)


def _overlap_lines(overlap: pd.DataFrame) -> list[str]:
    lines = []
    show_alloc = overlap["allocation"].nunique() > 1
    for (method, _, alloc), g in overlap.assign(_l=overlap["lambda"].fillna(-math.inf)).groupby(
            ["method", "_l", "allocation"], sort=False):
        label = dx.curve_label(method, float(g["lambda"].iloc[0]), alloc, show_alloc)
        lines.append(f"{label}: mean Jaccard {_f(g['jaccard'].mean())}, range {_f(g['jaccard'].min())} to "
                     f"{_f(g['jaccard'].max())} over {len(g)} tickets")
    return lines


def _variance_display(vs: pd.DataFrame) -> pd.DataFrame:
    g = vs.groupby("lambda", sort=True)
    mean = g.mean(numeric_only=True)
    out = pd.DataFrame({"λ": [f"{x:g}" for x in mean.index], "seeds": g["seed"].nunique().to_numpy()})
    p = f"p{dx.PERCENTILE}"
    cols = {
        "mean_std": "spread of mean",
        "pen_median": "penalty median",
        "pen_p90": f"penalty {p}",
        "median_ratio": "median / spread",
        "p90_ratio": f"{p} / spread",
        "spearman_mean": "ρ(mean, doge)",
        "spearman_winning": "ρ(winning, doge)",
    }
    if vs["nc_pen_median"].notna().any():
        cols.update({
            "nc_pen_median": "nc penalty median",
            "nc_p90_ratio": f"nc {p} / spread",
            "nc_spearman_mean": "nc ρ(mean, doge-nc)",
            "nc_spearman_winning": "nc ρ(winning, doge-nc)",
            "noise_share": "noise share",
        })
    for col, name in cols.items():
        out[name] = [_g(x) for x in mean[col].to_numpy()]
    return out


def _preview_display(gap: pd.DataFrame) -> pd.DataFrame:
    df = gap.assign(_l=gap["lambda"].fillna(-math.inf))
    sparsities = sorted(df["target_sparsity"].unique())
    rows = []
    for (method, _), g in sorted(df.groupby(["method", "_l"], sort=False),
                                 key=lambda kv: (methods.order_key(kv[0][0]), kv[0][1])):
        row = {"method": dx.curve_label(method, float(g["lambda"].iloc[0]), "", False),
               "seeds": g["seed"].nunique()}
        means = g.groupby("target_sparsity")["dev_gap"].mean()
        for ts in sparsities:
            v = means.get(ts, math.nan)
            row[f"{100 * ts:g}%"] = "" if math.isnan(v) else f"{100 * v:+.1f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _lambda_display(choice: pd.DataFrame) -> pd.DataFrame:
    dev_cols = [c for c in choice.columns if str(c).startswith("dev λ=")]
    shown = choice.groupby(["method", "target_sparsity"], sort=False).agg(
        {**{c: "mean" for c in dev_cols}, "chosen": lambda x: " ".join(f"{v:g}" for v in x)}).reset_index()
    shown["target_sparsity"] = shown["target_sparsity"].map(lambda x: f"{100 * x:g}%")
    for c in dev_cols:
        shown[c] = shown[c].map(lambda x: _f(100 * x, 1))
    return shown.rename(columns={"chosen": "chosen (per seed)"})


# ------------------------------------------------------------------------------------------ the parts


def _overlap_part(doc: Document, stem: str, overlap: pd.DataFrame, gap: pd.DataFrame, out: Path) -> None:
    doc.h(4, "Overlap with winning tickets")
    if overlap.empty:
        doc.p("No ticket has a winning ticket of the same seed, target sparsity and allocation to compare with.")
    else:
        _write_csv(out / f"{stem}-overlap.csv", overlap)
        doc.p(
            "Jaccard index of the pruned units (heads and FFN blocks) of each ticket with the winning ticket of "
            "the same seed, target sparsity and allocation, mean over seeds: identical tickets score highest, "
            "disjoint ones lowest, random tickets give the chance level. Pruned head and FFN counts per ticket "
            f"are in {stem}-overlap.csv."
        )
        doc.table(overlap_summary(overlap))
        doc.items(_overlap_lines(overlap))
    if not gap.empty:
        _write_csv(out / f"{stem}-preview_gap.csv", gap)
        doc.p(
            "From doge preview (fine-tuned model with the units masked, no retraining): in-domain dev score "
            "minus the winning ticket's at the same seed and target sparsity, mean over seeds, in points. "
            "Dev only; the test numbers are left out here."
        )
        doc.table(_preview_display(gap))


def _agreement_part(doc: Document, stem: str, rankcorr: pd.DataFrame, out: Path) -> None:
    doc.h(4, "Do the training domains agree?")
    if rankcorr.empty:
        doc.p("No seed has a readable scores.json, so the domains' scores cannot be compared.")
        return
    _write_csv(out / f"{stem}-rankcorr.csv", rankcorr)
    doc.p(
        "Spearman rank correlation over units between the expressive scores of two training domains, over "
        f"every pair of domains and every seed ({stem}-rankcorr.csv). High values: the domains rank units "
        "alike, so the variance across domains is small and the doge score mostly follows the mean."
    )
    lines = []
    for col, what in (("spearman_all", "heads and FFN blocks"), ("spearman_heads", "heads only"),
                      ("spearman_ffn", "FFN blocks only")):
        v = rankcorr[col].dropna()
        if v.empty:
            lines.append(f"{what}: undefined (constant scores or too few units)")
            continue
        worst = rankcorr.loc[v.idxmin()]
        lines.append(f"{what}: mean {_f(v.mean())}, min {_f(v.min())} ({worst['domain_a']} vs "
                     f"{worst['domain_b']}, seed {int(worst['seed'])}) over {len(v)} pairs")
    doc.items(lines)


def _penalty_part(doc: Document, stem: str, rankcorr: pd.DataFrame, variance: pd.DataFrame, out: Path) -> None:
    doc.h(4, "Size of the variance penalty")
    if rankcorr.empty:
        doc.p("No scores: the variance penalty cannot be sized.")
        return
    if variance.empty:
        doc.p("No lambda in the scores or tickets: the variance penalty cannot be sized.")
        return
    _write_csv(out / f"{stem}-variance.csv", variance)
    doc.p(
        "Per lambda, mean over seeds: the spread (std over units) of the mean score over training domains "
        f"against the penalty lambda × variance over domains (its median and {dx.PERCENTILE}th percentile over "
        "units, and each divided by the spread). A penalty small next to the spread hardly reorders the "
        "units: ρ(mean, doge), the Spearman correlation over units of the mean with the doge score, then "
        "stays near its maximum, and ρ(winning, doge) compares the doge ranking with the winning tickets' "
        f"pooled score ({stem}-variance.csv)."
    )
    if variance["nc_pen_median"].notna().any():
        doc.p(
            "nc columns: the same with the noise-corrected variance of doge-nc (observed variance minus "
            "the expected sampling noise of the domain means, never negative); noise share: the mean over "
            "units of that expected noise divided by the observed variance."
        )
    doc.table(_variance_display(variance))


def _lambda_part(doc: Document, stem: str, choice: pd.DataFrame, out: Path) -> None:
    if choice.empty:
        return
    _write_csv(out / f"{stem}-lambda_choice.csv", choice)
    doc.h(4, "Lambda chosen on dev (the preview values)")
    doc.p(
        "For each ticket whose lambda was chosen on in-domain dev: the dev score of the fine-tuned model "
        "with each candidate lambda's ticket removed, no retraining (%), mean over seeds, and the lambdas "
        f"chosen ({stem}-lambda_choice.csv)."
    )
    doc.table(_lambda_display(choice))


def _figure_part(doc: Document, stem: str, name: str, overlap: pd.DataFrame, units: pd.DataFrame,
                 out: Path) -> None:
    png = plot_diagnostics(overlap, units, out / f"{stem}.png")
    if png is None:
        return
    doc.p(
        f"Left: Jaccard with the winning ticket vs target sparsity ({stem}-overlap.csv). Right: every unit's "
        "mean vs variance across training domains for the first scored seed, heads as dots and FFN blocks "
        "as triangles, coloured by which of the highlighted ticket and its winning ticket prune it "
        f"({stem}-units.csv)."
    )
    doc.image(png, f"diagnostics {name}")


# ------------------------------------------------------------------------------------------ the section


def dataset_section(doc: Document, name: str, run_dir: Path, out: Path, seeds: Iterable[int] | None = None) -> None:
    """The diagnostics of one run directory (of the `seeds`; None: all), under "Diagnostics: <name>"."""
    seeds = None if seeds is None else list(seeds)
    stem = f"diagnostics-{name.replace('/', '_')}"
    doc.h(3, f"Diagnostics: {name}")
    overlap = dx.ticket_overlap(run_dir, seeds)
    rankcorr = dx.domain_rank_correlation(run_dir, seeds)
    variance = dx.variance_scale(run_dir, dx.run_lambdas(run_dir, seeds), seeds)
    gap = dx.preview_gap(run_dir)
    if overlap.empty and rankcorr.empty and gap.empty:
        doc.p(f"No tickets, scores or preview to diagnose in {run_dir}.")
        return
    _overlap_part(doc, stem, overlap, gap, out)
    _agreement_part(doc, stem, rankcorr, out)
    _penalty_part(doc, stem, rankcorr, variance, out)
    _lambda_part(doc, stem, dx.lambda_choice(run_dir, seeds), out)
    _figure_part(doc, stem, name, overlap, dx.unit_table(run_dir, seeds), out)


def section(doc: Document, names: Sequence[str], run_dirs: Sequence[Path | str], out: Path | str,
            seeds: Iterable[int] | None = None) -> None:
    """Add the "Diagnostics" section to the report `doc`: per dataset (names[i] for run_dirs[i]; the `seeds`
    of each, None: all) the overlap table, the domains' rank correlation, the variance-scale table and the
    figure; CSVs and the figure are written into `out` as diagnostics-<dataset>-*.csv /
    diagnostics-<dataset>.png ("/" in names as "_"). Missing inputs are said in one sentence, never an error."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc.h(2, "Diagnostics")
    doc.p(
        "Do doge tickets prune other units than winning tickets, and why? Read from the tickets and "
        "scores.json of every seed, no retraining: the overlap of the pruned units, the agreement of the "
        "training domains on which units matter, and the size of the variance penalty next to the spread "
        "of the mean score."
    )
    if len(names) != len(run_dirs):
        raise ValueError(f"section: {len(names)} names for {len(run_dirs)} run directories")
    if not run_dirs:
        doc.p("No run directory given: nothing to diagnose.")
        return
    seeds = None if seeds is None else list(seeds)
    for name, run_dir in zip(names, run_dirs, strict=True):
        dataset_section(doc, str(name), Path(run_dir), out, seeds)

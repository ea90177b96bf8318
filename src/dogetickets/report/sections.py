"""The report's sections, one function each (in report order): what was read, the selection rule, Table 2,
the paper's Table 2 beside ours, the dev-selected configurations, the ticket allocations compared, the
figures and every run. Each adds its blocks to a :class:`Document` and writes its CSVs and figures into the
report's folder; the paired comparisons are in ``report.comparisons``, wall time and the commands in
``report.provenance``, the diagnostics in ``report.diagnostics_section``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from dogetickets.io import atomic_write_text
from dogetickets.report import allocations, figures, paper, tables
from dogetickets.report.collect import load_scores, metric_label, setup_notes
from dogetickets.report.document import Document
from dogetickets.report.select import SELECTION_RULE
from dogetickets.report.tables import percent

__all__ = [
    "all_runs",
    "allocations_compared",
    "dev_selected",
    "figures_section",
    "inputs",
    "paper_beside_ours",
    "selection_rule",
    "table2",
]


def inputs(doc: Document, title: str, names: list[str], run_dirs: list[Path], runs: pd.DataFrame,
           seeds: list[int] | None) -> None:
    """The title, then each run directory read: its finished runs per method, its seeds and what its data
    set-up tells a reader (its config's data.notes, domains trained on another split or with a carved dev)."""
    doc.h(1, title)
    lines = []
    for name, d in zip(names, run_dirs, strict=True):
        sub = runs[runs["dataset"] == name]
        per = ", ".join(f"{m} {n}" for m, n in sub.groupby("method", sort=False).size().items())
        metric = metric_label(str(sub["metric"].iloc[0]))
        notes = setup_notes(d)
        lines.append(
            f"{name} ({metric}): {d} — {len(sub)} finished runs ({per}); seeds {sorted(set(sub['seed']))}"
            + (f". Data: {'; '.join(notes)}" if notes else "")
        )
    doc.items(lines)
    if seeds is not None:
        doc.p(f"Seeds reported: {', '.join(map(str, sorted(set(seeds))))} (`--seeds`); the other seeds' runs are "
              "left out of every table, figure and diagnostic, not of the wall time (the directories' whole).")
    if runs["test_mean"].isna().all():
        doc.p("No run has test numbers: test columns, figures over test and the bootstrap are empty.")


def selection_rule(doc: Document) -> None:
    doc.h(2, "Selection rule")
    doc.p(SELECTION_RULE)


def table2(doc: Document, runs: pd.DataFrame, out: Path) -> None:
    """Table 2 (dev-selected, with the oracle columns); table2.csv, runs.csv and their markdown into `out`."""
    tables.write_tables(runs, out)
    doc.h(2, "Table 2: main comparison (OOD test mean, %)")
    doc.table(tables.table2(runs))
    doc.p(
        "Cells: mean ± sample std over seeds of the dev-selected configuration (std omitted with one seed); "
        "the first row names each dataset's metric. Average score = mean over datasets; Average sparsity = "
        f"mean achieved sparsity of the dev-selected tickets. Columns marked '{tables.ORACLE}' pick the best "
        "test configuration instead: an upper bound that peeks at test, not a result."
    )


def paper_beside_ours(doc: Document, names: list[str], run_dirs: list[Path], runs: pd.DataFrame) -> None:
    """The paper's Table 2 beside our test-selected numbers (its protocol), for the datasets it has."""
    found = {n: paper.identify(d) for n, d in zip(names, run_dirs, strict=True)}
    known = {n: pd_ for n, pd_ in found.items() if pd_ is not None}
    doc.h(2, "The paper's Table 2 beside ours (optimistic protocol)")
    if not known:
        doc.p("None of these run directories is one of the paper's datasets (by the training and test domains of "
              "its config.toml): nothing to compare with the paper's Table 2.")
        return
    doc.p(
        "The paper reports each ticket at the sparsity with the best out-of-domain test score (its Table 2: 'the "
        "sparsity to achieve best out-of-domain generalization'), one number per cell, BERT-base, no seeds or "
        f"intervals. Ours under that protocol is the '{tables.ORACLE}' column: per seed, the configuration "
        "(sparsity, lambda) with the best test mean, then the mean over seeds. It is optimistic: choosing on "
        "test flatters every method with something to choose (tickets) against one without (ERM). Compare the "
        "paper's numbers with that column only; the dev-selected column is our result. Differences: of the "
        "means, in points."
    )
    doc.table(tables.paper_table(runs, {n: (f"{n} ({pd_.label})", paper.table2_column(pd_.key))
                                        for n, pd_ in known.items()}))
    notes = []
    for n, pd_ in known.items():
        diffs = paper.differences(run_dirs[names.index(n)], pd_)
        notes.append(f"{n} is the paper's {pd_.label}" + (f"; setup differs: {'; '.join(diffs)}" if diffs else ""))
    missing = [n for n, pd_ in found.items() if pd_ is None]
    if missing:
        notes.append(f"Not in the paper's Table 2: {', '.join(missing)} (domains match none of its datasets).")
    doc.items(notes)


def dev_selected(doc: Document, sel: pd.DataFrame) -> None:
    """The dev-selected configurations (``select.select_dev_in_order``), one row per dataset, method, seed."""
    chosen = pd.DataFrame(
        {
            "dataset": sel["dataset"],
            "method": sel["method"],
            "seed": sel["seed"],
            "run": sel["name"],
            "sparsity": sel["sparsity"].map(percent),
            "lambda": sel["lambda"].map(lambda x: "" if math.isnan(x) else f"{x:g}"),
            "dev score": sel["dev_score"].map(percent),
        }
    )
    doc.h(2, "Dev-selected configurations")
    doc.table(chosen)


def allocations_compared(doc: Document, runs: pd.DataFrame, out: Path) -> None:
    """The ticket allocations compared (report.allocations), where a method has runs under several."""
    cells = allocations.cells(runs)
    if cells.empty:
        return
    atomic_write_text(out / "allocations.csv", cells.to_csv(index=False))
    doc.h(2, "Ticket allocations compared")
    doc.p(
        "How the pruned parameters are split between heads and FFN blocks (tickets.allocation: global = one "
        "ranked list, a unit that would overshoot skipped; proportional = each kind loses the target share of "
        "its parameters; balanced = half from heads, half from FFN blocks). Each cell: the dev-best run of a "
        "method, target sparsity and seed (over lambdas), 'in-domain dev / unseen test mean', mean over "
        "seeds; 'all' averages the cells every allocation has (allocations.csv). Dev is what a choice of "
        "allocation may read; test is beside it."
    )
    doc.table(allocations.table(cells))
    lines = allocations.summary(cells)
    if lines:
        doc.items(lines)


# ------------------------------------------------------------------------------------------ the figures


def _transitions(doc: Document, runs: pd.DataFrame, out: Path) -> None:
    png = figures.plot_transitions(runs, out)
    doc.h(3, "Transitions with sparsity (Fig. 5)")
    if png:
        doc.p(
            "OOD test mean vs target sparsity, mean line and ±std band over seeds; ERM (and IRM) as "
            "horizontal lines. Doge uses, at each sparsity and seed, the lambda chosen on dev."
        )
        doc.image(png, "transitions")
    else:
        doc.p("Not drawn: no run has test numbers.")


def _lambda(doc: Document, runs: pd.DataFrame, out: Path) -> None:
    doc.h(3, "Doge tickets vs lambda (Fig. 3)")
    png = figures.plot_lambda(runs, out)
    doge = figures.doge_tested(runs)
    unswept = [str(d) for d in dict.fromkeys(doge["dataset"]) if str(d) not in figures.lambda_swept(runs)]
    why = ("no seed and sparsity has test numbers for more than one lambda (with tickets.lambda_choice = "
           "\"preview\" each trains only the lambda chosen on in-domain dev; the dev score of every candidate "
           "lambda is under Diagnostics, 'Lambda chosen on dev'; \"rewind\" trains every lambda)")
    if png:
        doc.p("OOD test mean vs lambda, one line per sparsity (mean ± std over seeds); evenly spaced λ axis."
              + (f" Not drawn for {', '.join(unswept)}: {why}." if unswept else ""))
        doc.image(png, "lambda")
    elif doge["lambda"].nunique() > 1:
        doc.p(f"Not drawn: {why}.")
    else:
        doc.p("Skipped: only one lambda (or no doge run with test numbers), so lambda.png is not written.")


def _scores(doc: Document, names: list[str], run_dirs: list[Path], out: Path, seeds: list[int] | None) -> None:
    doc.h(3, "Expressive scores across domains (Fig. 4)")
    scored = [(n, d, load_scores(d, seeds)) for n, d in zip(names, run_dirs, strict=True)]
    scored = [(n, d, s) for n, d, s in scored if s is not None]
    if not scored:
        doc.p("No seed*/scores/scores.json found: scores.png not drawn.")
        return
    name, _, (sseed, scores) = scored[0]
    png, counts = figures.plot_scores(scores, out)
    doc.p(
        f"{name}, seed {sseed}: one pie per head / FFN block, radius ∝ mean normalized expressive score "
        "over training domains, slices = each domain's share. Units split at the medians "
        "(over all units) of the mean and of the variance across domains (scores_classes.csv):"
    )
    doc.items([f"{c}: {counts[c]}" for c in figures.CLASSES])
    doc.image(png, "scores")


def _pilot(doc: Document, out: Path) -> None:
    if (out / "pilot.png").is_file():
        doc.h(3, "Pilot study (Fig. 1/6)")
        doc.p(
            "Activation frequency of the first FFN neurons at [CLS], per layer, grouped by domain "
            "(pilot.csv)."
        )
        doc.image(out / "pilot.png", "pilot")


def _previews(doc: Document, names: list[str], run_dirs: list[Path], runs: pd.DataFrame, out: Path) -> None:
    previews = [(n, d) for n, d in zip(names, run_dirs, strict=True) if (d / "preview.csv").is_file()]
    if not previews:
        return
    doc.h(3, "Preview (no retraining)")
    doc.p(
        "`doge preview`: the fine-tuned ERM model evaluated with each method's units masked (no rewinding, "
        "no retraining) over a dense sparsity grid, one line per method (doge: per lambda). The in-domain "
        "dev score is the one to read and choose by; the OOD test mean (`doge preview --test`) is shown apart, "
        "in its own panel, and never used to choose (numbers: preview.csv)."
    )
    for name, d in previews:
        png = d / "preview.png"
        if d.resolve() != out.resolve() or not png.is_file():  # drawn again from its CSV, into `out`
            stem = "preview" if d.resolve() == out.resolve() else f"preview-{name.replace('/', '_')}"
            metric = str(runs.loc[runs["dataset"] == name, "metric"].iloc[0])
            png = figures.plot_preview(pd.read_csv(d / "preview.csv"), out / f"{stem}.png", metric=metric)
        doc.image(png, f"preview {name}")


def figures_section(doc: Document, names: list[str], run_dirs: list[Path], runs: pd.DataFrame, out: Path,
                    seeds: Iterable[int] | None = None) -> None:
    """Transitions, lambda, expressive scores (of the first directory and seed with scores, of `seeds`), the
    pilot study when `out` has one, and each directory's `doge preview` (drawn again into `out`)."""
    doc.h(2, "Figures")
    _transitions(doc, runs, out)
    _lambda(doc, runs, out)
    _scores(doc, names, run_dirs, out, None if seeds is None else list(seeds))
    _pilot(doc, out)
    _previews(doc, names, run_dirs, runs, out)


def all_runs(doc: Document, runs: pd.DataFrame) -> None:
    doc.h(2, "All runs")
    doc.p("Every finished run; scores and sparsities in %. 'dev_selected' marks the reported configurations.")
    doc.table(tables.runs_display(runs))

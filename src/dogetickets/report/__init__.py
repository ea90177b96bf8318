"""Reports of finished runs: tables, paired bootstrap and figures. Reads run directories; never trains.

``write_report([run_dir, ...])`` writes report.md, a self-contained report.html, the CSVs (table2.csv,
runs.csv, bootstrap.csv, one per figure) and the figures, into the first run directory by default.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["write_report"]


@dataclass
class _Doc:
    """A report as a list of blocks, rendered both to markdown and to self-contained HTML."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, lines: list[str]) -> None:
        self.blocks.append(("ul", lines))

    def table(self, df: Any) -> None:
        self.blocks.append(("table", df))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", (Path(path), alt)))

    def markdown(self) -> str:
        from dogetickets.report.tables import to_markdown

        out = []
        for kind, x in self.blocks:
            if kind == "h":
                out.append("#" * x[0] + " " + x[1] + "\n")
            elif kind == "p":
                out.append(x + "\n")
            elif kind == "ul":
                out.append("\n".join(f"- {line}" for line in x) + "\n")
            elif kind == "table":
                out.append(to_markdown(x))
            elif kind == "img":
                out.append(f"![{x[1]}]({x[0].name})\n")
        return "\n".join(out)

    def html(self, title: str) -> str:
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
            "th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}"
            "th{background:#f3f3f3}img{max-width:100%}</style>",
            "</head><body>",
        ]
        for kind, x in self.blocks:
            if kind == "h":
                parts.append(f"<h{x[0]}>{html.escape(x[1])}</h{x[0]}>")
            elif kind == "p":
                parts.append(f"<p>{html.escape(x)}</p>")
            elif kind == "ul":
                parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in x) + "</ul>")
            elif kind == "table":
                parts.append(x.to_html(index=False, escape=True, na_rep="", border=0))
            elif kind == "img":
                data = base64.b64encode(x[0].read_bytes()).decode("ascii")
                parts.append(f'<p><img alt="{html.escape(x[1])}" src="data:image/png;base64,{data}"></p>')
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"


def _pct(x: float, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def write_report(run_dirs: list[Path], out: Path | None = None, n_boot: int = 1000, seed: int = 0) -> Path:
    """Write report.md, report.html, CSVs and figures for the given run directories (one per dataset).

    `out` defaults to the first run directory. Returns the path of report.md. A DogeError (one line)
    when a directory is missing or has no finished run.
    """
    import pandas as pd

    from dogetickets.errors import DogeError
    from dogetickets.io import atomic_write_text
    from dogetickets.report import figures, tables
    from dogetickets.report.collect import METHOD_ORDER, dataset_names, load_all, load_scores, metric_label
    from dogetickets.report.select import SELECTION_RULE, select_dev
    from dogetickets.report.stats import BOOTSTRAP_METHOD, bootstrap_table

    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise DogeError("no run directory given")
    out = Path(out) if out is not None else run_dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    runs = load_all(run_dirs)
    names = dataset_names(run_dirs)

    doc = _Doc()
    doc.h(1, "Doge tickets report")
    inputs = []
    for name, d in zip(names, run_dirs, strict=True):
        sub = runs[runs["dataset"] == name]
        per = ", ".join(f"{m} {n}" for m, n in sub.groupby("method", sort=False).size().items())
        metric = metric_label(str(sub["metric"].iloc[0]))
        inputs.append(
            f"{name} ({metric}): {d} — {len(sub)} finished runs ({per}); seeds {sorted(set(sub['seed']))}"
        )
    doc.items(inputs)
    if runs["test_mean"].isna().all():
        doc.p("No run has test numbers: test columns, figures over test and the bootstrap are empty.")

    doc.h(2, "Selection rule")
    doc.p(SELECTION_RULE)

    tables.write_tables(runs, out)
    t2 = tables.table2(runs)
    doc.h(2, "Table 2: main comparison (OOD test mean, %)")
    doc.table(t2)
    doc.p(
        "Cells: mean ± sample std over seeds of the dev-selected configuration (std omitted with one seed); "
        "the first row names each dataset's metric. Average score = mean over datasets; Average sparsity = "
        f"mean achieved sparsity of the dev-selected tickets. Columns marked '{tables.ORACLE}' pick the best "
        "test configuration instead: an upper bound that peeks at test, not a result."
    )

    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    sel = select_dev(runs)
    sel = sel.assign(_o=sel["method"].map(lambda m: order.get(m, len(order))))
    sel = sel.sort_values(["dataset", "_o", "seed"], kind="mergesort").drop(columns="_o")
    chosen = pd.DataFrame(
        {
            "dataset": sel["dataset"],
            "method": sel["method"],
            "seed": sel["seed"],
            "run": sel["name"],
            "sparsity": sel["sparsity"].map(_pct),
            "lambda": sel["lambda"].map(lambda x: "" if math.isnan(x) else f"{x:g}"),
            "dev score": sel["dev_score"].map(_pct),
        }
    )
    doc.h(2, "Dev-selected configurations")
    doc.table(chosen)

    boot = bootstrap_table(sel, n_boot=n_boot, seed=seed)
    atomic_write_text(out / "bootstrap.csv", boot.to_csv(index=False))
    doc.h(2, "Paired bootstrap")
    doc.p(BOOTSTRAP_METHOD.format(n_boot=n_boot, seed=seed))
    if boot.empty:
        doc.p("No comparison could be bootstrapped (missing methods or test predictions).")
    else:
        shown = pd.DataFrame(
            {
                "dataset": boot["dataset"],
                "comparison": boot["comparison"],
                "seed": boot["seed"],
                "A (%)": boot["a"].map(_pct),
                "B (%)": boot["b"].map(_pct),
                "A - B": boot["diff"].map(lambda x: _pct(x, True)),
                "95% CI": [
                    f"[{_pct(lo, True)}, {_pct(hi, True)}]"
                    for lo, hi in zip(boot.ci_low, boot.ci_high, strict=True)
                ],
                "p": boot["p_value"].map(lambda x: f"{x:.3f}"),
                "examples": boot["n_examples"],
            }
        )
        doc.table(shown)

    doc.h(2, "Figures")
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
    doc.h(3, "Doge tickets vs lambda (Fig. 3)")
    png = figures.plot_lambda(runs, out)
    if png:
        doc.p("OOD test mean vs lambda, one line per sparsity (mean ± std over seeds); evenly spaced λ axis.")
        doc.image(png, "lambda")
    else:
        doc.p("Skipped: only one lambda (or no doge run with test numbers), so lambda.png is not written.")
    doc.h(3, "Expressive scores across domains (Fig. 4)")
    scored = [(n, d, load_scores(d)) for n, d in zip(names, run_dirs, strict=True)]
    scored = [(n, d, s) for n, d, s in scored if s is not None]
    if scored:
        name, _, (sseed, scores) = scored[0]
        png, counts = figures.plot_scores(scores, out)
        doc.p(
            f"{name}, seed {sseed}: one pie per head / FFN block, radius ∝ mean normalized expressive score "
            "over training domains, slices = each domain's share. Units split at the medians "
            "(over all units) of the mean and of the variance across domains (scores_classes.csv):"
        )
        doc.items([f"{c}: {counts[c]}" for c in figures.CLASSES])
        doc.image(png, "scores")
    else:
        doc.p("No seed*/scores/scores.json found: scores.png not drawn.")
    if (out / "pilot.png").is_file():
        doc.h(3, "Pilot study (Fig. 1/6)")
        doc.p(
            "Activation frequency of the first FFN neurons at [CLS], per layer, grouped by domain "
            "(pilot.csv)."
        )
        doc.image(out / "pilot.png", "pilot")
    previews = [(n, d) for n, d in zip(names, run_dirs, strict=True) if (d / "preview.csv").is_file()]
    if previews:
        doc.h(3, "Preview (no retraining)")
        doc.p(
            "`doge preview`: the fine-tuned ERM model evaluated with each method's units masked (no rewinding, "
            "no retraining) over a dense sparsity grid, one line per method (doge: per lambda). The in-domain "
            "dev score is the one to read and choose by; the OOD test mean is shown apart, in its own panel, "
            "and never used to choose (numbers: preview.csv)."
        )
        for name, d in previews:
            png = d / "preview.png"
            if d.resolve() != out.resolve() or not png.is_file():  # drawn again from its CSV, into `out`
                stem = "preview" if d.resolve() == out.resolve() else f"preview-{name.replace('/', '_')}"
                metric = str(runs.loc[runs["dataset"] == name, "metric"].iloc[0])
                png = figures.plot_preview(pd.read_csv(d / "preview.csv"), out / f"{stem}.png", metric=metric)
            doc.image(png, f"preview {name}")

    doc.h(2, "All runs")
    doc.p("Every finished run; scores and sparsities in %. 'dev_selected' marks the reported configurations.")
    doc.table(tables.runs_display(runs))

    md = out / "report.md"
    atomic_write_text(md, doc.markdown())
    atomic_write_text(out / "report.html", doc.html("Doge tickets report"))
    return md

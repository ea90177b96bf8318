"""`doge preview`: each method's tickets over a dense sparsity grid, without retraining.

The fine-tuned ERM model of a seed is evaluated with each ticket's units removed, for every configured
method (doge at every lambda) and every target sparsity of the grid, on in-domain dev: one pass per distinct
ticket (tickets that prune the same units, e.g. all of them at sparsity 0, are evaluated once), the layers
that tickets share (the same units removed from layers 0..k-1) computed once for all of them
(`run.runs.masked_scores_many`). The model evaluated is the physically pruned copy (`export_pruned`), which
computes what the masked model computes and is faster the more it prunes. The in-domain dev score is the
number to read and to choose by; with `test=True` (`doge preview --test`) the test domains are evaluated
too, in columns kept apart (``test_*``, ``test:<domain>``) and never used to choose.

Written into the run directory: preview.csv (one row per seed x method (x lambda) x sparsity),
preview.png (report/figures.plot_preview) and, last, preview.json (the settings that made them: a
second call under the same settings reuses them, any change recomputes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from rich.table import Table

from dogetickets import methods as registry
from dogetickets.errors import DogeError
from dogetickets.io import read_json_or_none, write_json
from dogetickets.prefix import layer_patterns
from dogetickets.run import runs, settings
from dogetickets.tickets import TicketSpec

if TYPE_CHECKING:
    import torch

    from dogetickets.run.sweep import Sweep
    from dogetickets.tickets import Ticket

DEFAULT_GRID = "0:0.6:0.05"
GRID_HELP = ("Target sparsities: START:STOP:STEP (STOP included) or a comma list, each in [0, 1); "
             f"default {DEFAULT_GRID} (13 levels)")
FILES = ("preview.csv", "preview.png", "preview.json")


@dataclass
class Preview:
    """The rows of preview.csv and where the files are; `reused` when nothing was recomputed."""

    rows: pd.DataFrame
    csv: Path
    png: Path
    settings: Path
    reused: bool


def parse_grid(text: str) -> list[float]:
    """'0:0.6:0.05' (stop included) or '0,0.1,0.3' -> sorted distinct sparsities in [0, 1)."""
    text = text.strip()
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0:
                raise ValueError
            n = math.floor((stop - start) / step + 1e-9) + 1
            values = [start + i * step for i in range(max(n, 0))]
        else:
            values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DogeError(f"--grid {text!r}: expected START:STOP:STEP (e.g. {DEFAULT_GRID}) or a comma list "
                        "(e.g. 0,0.1,0.3)") from None
    grid = sorted({round(v, 6) for v in values})
    if not grid or not all(0 <= v < 1 for v in grid):
        raise DogeError(f"--grid {text!r}: needs at least one sparsity, each in [0, 1)")
    return grid


def _specs(sweep: Sweep) -> list[tuple[str, float | None]]:
    """(method, lambda) of every configured method, once per lambda for a method that takes one."""
    t = sweep.cfg.tickets
    return [(m, lam) for m in t.methods for lam in (t.lambdas if registry.get(m).uses_lambda else [None])]


def preview_settings(sweep: Sweep, seeds: list[int], grid: list[float], test: bool = False) -> dict[str, Any]:
    """What a preview depends on: the grid, the methods, the fine-tuned model and scores, the evaluation data
    (and whether the test domains were evaluated)."""
    return {
        "test": test,
        "grid": grid,
        "methods": list(sweep.cfg.tickets.methods),
        "lambdas": (list(sweep.cfg.tickets.lambdas)
                    if any(registry.get(m).uses_lambda for m in sweep.cfg.tickets.methods) else []),
        "seeds": seeds,
        "allocation": sweep.cfg.tickets.allocation,
        "scores": {str(s): settings.scores(sweep.cfg, s, sweep.ctx.labels, sweep.ctx.finetuned_settings)
                   for s in seeds},
        "eval": settings.evaluation(sweep.cfg),
    }


def evaluate_ticket(sweep: Sweep, model: torch.nn.Module, ticket: Ticket) -> tuple[dict, dict]:
    """Dev and test metrics of `model` with the ticket's units removed (a pruned copy; `model` is untouched)."""
    dev, test = runs.masked_scores(sweep.ctx, model, ticket, ("dev", "test"))
    return dev, test


def _seed_rows(sweep: Sweep, seed: int, grid: list[float], test: bool, advance: Any) -> list[dict[str, Any]]:
    """One row per method (x lambda) x sparsity of one seed's fine-tuned model: every distinct ticket (by the
    units it removes) evaluated once, on dev (and on the test domains with `test`)."""
    sweep.stages.init.ensure(seed)
    model = sweep.stages.finetuned_model(seed)
    chosen = [(method, lam, target, sweep.stages.ticket.choose(seed, TicketSpec(method, target, lam)))
              for method, lam in _specs(sweep) for target in grid]
    distinct: dict[tuple, int] = {}  # pruned units -> index in `tickets`
    tickets: list[Ticket] = []
    for *_, ticket in chosen:
        key = layer_patterns(ticket)
        if key not in distinct:
            distinct[key] = len(tickets)
            tickets.append(ticket)
    advance(len(chosen) - len(tickets))
    scores = runs.masked_scores_many(sweep.ctx, model, tickets, ("dev", "test") if test else ("dev",), advance)
    rows = []
    for method, lam, target, ticket in chosen:
        dev, *rest = scores[distinct[layer_patterns(ticket)]]
        row = {"seed": seed, "method": method, "lambda": lam, "target_sparsity": target,
               "sparsity": ticket.sparsity, "dev_score": dev["score"],
               **{f"dev:{k}": v for k, v in dev["per_domain"].items()}}
        if rest:
            row |= {"test_mean": rest[0]["mean"], "test_worst": rest[0]["worst"],
                    **{f"test:{k}": v for k, v in rest[0]["per_domain"].items()}}
        rows.append(row)
    return rows


def run_preview(sweep: Sweep, seeds: list[int] | None = None, grid: list[float] | None = None,
                test: bool = False) -> Preview:
    """Evaluate every method's tickets over `grid` (default 0-60% in 5% steps) for `seeds` (default: the
    config's) on in-domain dev, and with `test` on the test domains too; fine-tunes and scores first if need
    be. Reuses the files when their settings are unchanged."""
    from dogetickets.progress import sweep_progress
    from dogetickets.report.figures import plot_preview

    seeds = list(seeds or sweep.cfg.run.seeds)
    grid = list(grid or parse_grid(DEFAULT_GRID))
    sweep.open()
    csv, png, js = (sweep.out / f for f in FILES)
    settings = preview_settings(sweep, seeds, grid, test)
    if read_json_or_none(js) == _as_json(settings) and csv.is_file() and png.is_file():
        try:
            return Preview(pd.read_csv(csv), csv, png, js, reused=True)
        except (ValueError, OSError):
            pass  # damaged: computed again
    js.unlink(missing_ok=True)
    total = len(seeds) * len(_specs(sweep)) * len(grid)
    with sweep_progress(f"preview ({total} tickets)", total, sweep.ctx.show_progress) as advance:
        rows = pd.DataFrame([r for seed in seeds for r in _seed_rows(sweep, seed, grid, test, advance)])
    plot_preview(rows, png, metric=sweep.ctx.data.task.metric)  # writes preview.csv beside it
    write_json(js, settings)
    return Preview(rows, csv, png, js, reused=False)


def _as_json(obj: Any) -> Any:
    """`obj` as it reads back from JSON (tuples become lists), to compare with a recorded one."""
    import json

    return json.loads(json.dumps(obj))


def dev_table(rows: pd.DataFrame) -> Table:
    """Dev score (%, mean over seeds) by target sparsity x method; achieved sparsity of the first method."""
    rows = rows.assign(label=[registry.with_lambda(m, lam)
                              for m, lam in zip(rows["method"], rows["lambda"], strict=True)])
    labels = list(dict.fromkeys(rows["label"]))
    mean = rows.groupby(["target_sparsity", "label"], sort=True)["dev_score"].mean().unstack()
    achieved = rows.groupby("target_sparsity", sort=True)["sparsity"].mean()
    n_seeds = rows["seed"].nunique()
    table = Table(title=f"in-domain dev score (%) of the masked fine-tuned model, no retraining"
                        f"{f' (mean over {n_seeds} seeds)' if n_seeds > 1 else ''}",
                  caption=("test numbers: the test_* columns of preview.csv (never used to choose)"
                           if "test_mean" in rows.columns else "dev only (doge preview --test adds the test domains)"))
    for col in ("target", "achieved", *labels):
        table.add_column(col, justify="right")
    for target, row in mean.iterrows():
        table.add_row(f"{target:.0%}", f"{achieved[target]:.1%}", *(f"{100 * row[lab]:.1f}" for lab in labels))
    return table


def print_preview(result: Preview) -> None:
    """The dev table (stdout), then the paths."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(dev_table(result.rows))
    note = " (reused: settings unchanged)" if result.reused else ""
    console.print(f"preview: {result.csv}, {result.png}, {result.settings}{note}", soft_wrap=True,
                  highlight=False)

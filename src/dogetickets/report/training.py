"""How the baselines trained: did fine-tuning converge, and which penalty weight IRM was given.

- Convergence: ERM's in-domain dev score at each evaluation (train.eval_every; each epoch's end by default),
  read from every seed's ``erm/log.jsonl``, with the checkpoint kept (the best dev score) and whether early
  stopping ended the training (its metrics.json).
- IRM's penalty weight: the grid (irm.penalty_weights) and each weight's dev score on the seed it was chosen
  on, as the IRM runs recorded their choice (``penalty_choice`` in their metrics.json).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from dogetickets.io import is_done, read_json_or_none
from dogetickets.report.document import Document
from dogetickets.run.layout import RunLayout

CONVERGENCE_COLUMNS = ["dataset", "seed", "evaluation", "epoch", "step", "dev", "kept", "stopped_early"]


def convergence(names: list[str], run_dirs: list[Path], seeds: Iterable[int] | None = None) -> pd.DataFrame:
    """One row per dev evaluation of every finished ERM run: its epoch (1 = the first), step, dev score, and
    whether it is the checkpoint kept; `stopped_early` when early stopping ended the training."""
    rows = []
    for name, run_dir in zip(names, run_dirs, strict=True):
        layout = RunLayout(Path(run_dir))
        for seed, _ in layout.seed_folders(seeds):
            folder = layout.baseline(seed, "erm")
            train = (read_json_or_none(folder / "metrics.json") or {}).get("train") or {}
            if not is_done(folder) or not (folder / "log.jsonl").is_file():
                continue
            evals = [r for r in map(json.loads, (folder / "log.jsonl").read_text().splitlines()) if "dev" in r]
            for i, r in enumerate(evals):
                rows.append({"dataset": name, "seed": seed, "evaluation": i + 1, "epoch": int(r["epoch"]) + 1,
                             "step": int(r["step"]), "dev": float(r["dev"]),
                             "kept": int(r["step"]) == train.get("best_step"),
                             "stopped_early": bool(train.get("stopped_early"))})
    return pd.DataFrame(rows, columns=CONVERGENCE_COLUMNS)


def irm_grid(names: list[str], run_dirs: list[Path]) -> pd.DataFrame:
    """One row per dataset and penalty weight of IRM's grid: the dev score on the choice seed, and the choice."""
    rows = []
    for name, run_dir in zip(names, run_dirs, strict=True):
        choice = _penalty_choice(RunLayout(Path(run_dir)))
        for w, score in (choice or {}).get("dev_score", {}).items():
            rows.append({"dataset": name, "seed": choice["seed"], "penalty_weight": float(w), "dev": score,
                         "chosen": float(w) == float(choice["chosen"])})
    return pd.DataFrame(rows, columns=["dataset", "seed", "penalty_weight", "dev", "chosen"])


def _penalty_choice(layout: RunLayout) -> dict | None:
    """The choice of IRM's penalty weight that the run directory's IRM runs recorded (the same for every seed)."""
    for seed, _ in layout.seed_folders():
        run = (read_json_or_none(layout.baseline(seed, "irm") / "metrics.json") or {}).get("run") or {}
        if run.get("penalty_choice"):
            return run["penalty_choice"]
    return None


def section(doc: Document, names: list[str], run_dirs: list[Path], out: Path,
            seeds: Iterable[int] | None = None) -> None:
    """The section: the convergence figure (convergence.png, .csv) and the IRM grid, where there are any."""
    from dogetickets.report.figures import plot_convergence

    curves = convergence(names, run_dirs, seeds)
    grid = irm_grid(names, run_dirs)
    if curves.empty and grid.empty:
        return
    doc.h(2, "Training: convergence and IRM's penalty")
    if not curves.empty:
        runs = curves.groupby(["dataset", "seed"])
        stopped = sum(bool(g["stopped_early"].iloc[0]) for _, g in runs)
        doc.p(f"ERM's in-domain dev score at each evaluation, per dataset and seed; the ringed point is the "
              f"checkpoint kept (the best dev score). Early stopping ended {stopped} of {runs.ngroups} trainings; "
              "the others ran every epoch of train.epochs.")
        doc.image(plot_convergence(curves, out / "convergence.png"), "convergence")
    if not grid.empty:
        shown = grid.assign(dev=grid["dev"].map(lambda x: f"{100 * x:.2f}"),
                            chosen=grid["chosen"].map(lambda c: "chosen" if c else ""))
        doc.p("IRM's penalty weight, chosen on the in-domain dev score of one seed (the grid's IRM trainings) and "
              "used for every seed (ties: the smallest weight):")
        doc.table(shown)

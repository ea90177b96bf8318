"""The run's results table: rows ERM, IRM, then method x sparsity; columns each test domain, mean, worst.

Every number is read from the runs' metrics.json files (mean over seeds when there are several);
the table is printed and written as results.json and results.md. The fuller, publishable report
(dev-based selection, bootstrap, figures) is `doge report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from dogetickets import methods as registry
from dogetickets.errors import DogeError
from dogetickets.io import atomic_write_text, read_json, write_json
from dogetickets.machine import precision_name

METRIC_NAMES = {"accuracy": "accuracy", "entity_f1": "entity F1"}


def precisions(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the runs trained in and why, from each metrics.json's "train" record: one entry per (precision,
    reason), with its count of runs, most runs first. Runs written before the reason was recorded say so."""
    counts: dict[tuple[str, str], int] = {}
    for r in runs:
        train = r.get("train") if isinstance(r.get("train"), dict) else {}
        precision = str(train.get("mixed_precision") or "not recorded")
        precision = precision_name(precision)
        reason = str(train.get("precision_reason") or "")
        counts[(precision, reason)] = counts.get((precision, reason), 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [{"precision": p, "reason": why, "runs": n} for (p, why), n in ordered]


def precision_text(entries: list[dict[str, Any]]) -> str:
    """`precisions` as words: 'bf16 ('auto' on a CPU with avx512_bf16; all 7 runs)', entries joined by '; '."""
    parts = []
    total = sum(e["runs"] for e in entries)
    for e in entries:
        why = e["reason"].partition(": ")[2] if e["reason"] else "reason not recorded"
        share = f"all {e['runs']} runs" if e["runs"] == total and total > 1 else f"{e['runs']} of {total} runs"
        unknown = e["precision"] == "not recorded"
        parts.append(f"not recorded ({share})" if unknown else f"{e['precision']} ({why}; {share})")
    return "; ".join(parts) if parts else "an unrecorded precision"


def precision_line(results: dict[str, Any]) -> str:
    """One sentence: the precision(s) the table's runs trained in, why, and the CPU that wrote the table."""
    text = "Trained in " + precision_text(results.get("precision") or []) + "."
    m = results.get("machine") or {}
    if m:
        features = ", ".join(m.get("cpu_features") or []) or "none of avx2, avx512f, avx512_bf16, amx_bf16"
        gpus = m.get("cuda_devices") or []
        text += (f" Machine: {m.get('cpu') or 'unknown CPU'} (features: {features}), "
                 f"{m.get('logical_cores') or '?'} logical cores"
                 + (f", CUDA: {', '.join(gpus)}" if gpus else ", no GPU")
                 + f"; torch {m.get('torch') or '?'}.")
    return text


def collect_results(out: Path, folders: list[Path], notes: list[str] | None = None,
                    machine: dict[str, Any] | None = None) -> dict[str, Any]:
    """The table of the runs in `folders` (finished, and all evaluated on the same test domains).

    `machine` (``dogetickets.machine.describe()`` of the process writing the table) is summarized beside the
    precision the runs recorded, so a table says what produced it."""
    runs = [read_json(folder / "metrics.json") for folder in folders]
    if not runs:
        raise DogeError(f"{out}: no finished runs")
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        info = r["run"]
        # seeds whose lambda was chosen on dev (a ticket named without it) share a row whatever they chose
        lam = None if info.get("lambda_chosen_on_dev") else info.get("lambda")
        key = (info["method"], info["objective"], info["target_sparsity"], lam)
        groups.setdefault(key, []).append(r)
    domains = list(runs[0]["test"]["per_domain"])
    rows = []
    for key in sorted(groups, key=lambda k: (registry.order_key(k[0]), k[2], k[3] or 0.0, k[1])):
        rs = groups[key]
        method, objective, target, lam = key

        def avg(values: list[float]) -> float:
            return float(np.mean(values))

        is_ticket = registry.is_known(method) and registry.get(method).is_ticket
        label = f"{method} {target:.0%}" if is_ticket else method.upper()
        if lam is not None:
            label += f" (λ={lam:g})"
        elif registry.is_known(method) and registry.get(method).uses_lambda:
            chosen = sorted({r["run"].get("lambda") for r in rs} - {None})
            label += f" (dev-chosen λ: {', '.join(f'{x:g}' for x in chosen)})"
        if objective != "erm" and is_ticket:
            label += f" + {objective.upper()}"
        rows.append({
            "row": label,
            "method": method,
            "objective": objective,
            "target_sparsity": target,
            "lambda": lam,
            "sparsity": avg([r["run"]["sparsity"] for r in rs]),
            "seeds": sorted(r["run"]["seed"] for r in rs),
            "dev": avg([r["dev"]["score"] for r in rs]),
            "test": {d: avg([r["test"]["per_domain"][d] for r in rs]) for d in domains},
            "mean": avg([r["test"]["mean"] for r in rs]),
            "worst": avg([r["test"]["worst"] for r in rs]),
        })
    keep = ("cpu", "cpu_features", "logical_cores", "cuda_devices", "torch")
    return {"metric": runs[0]["metric"], "test_domains": domains, "rows": rows, "notes": notes or [],
            "precision": precisions(runs), "machine": {k: machine.get(k) for k in keep} if machine else {}}


def markdown(results: dict[str, Any]) -> str:
    doms = results["test_domains"]
    metric = METRIC_NAMES.get(results["metric"], results["metric"])
    head = ["", "sparsity", *doms, "mean", "worst", "dev (in-domain)"]
    lines = [
        f"Test {metric} (%) on each unseen domain; mean over seeds where several.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in results["rows"]:
        cells = [r["row"], f"{r['sparsity']:.1%}", *(f"{100 * r['test'][d]:.1f}" for d in doms),
                 f"{100 * r['mean']:.1f}", f"{100 * r['worst']:.1f}", f"{100 * r['dev']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", precision_line(results)]
    if results["notes"]:
        lines += ["", *(f"Note: {n}" for n in results["notes"])]
    return "\n".join(lines) + "\n"


def rich_table(results: dict[str, Any]) -> Table:
    doms = results["test_domains"]
    metric = METRIC_NAMES.get(results["metric"], results["metric"])
    caption = "\n".join([precision_line(results), *results["notes"]])
    table = Table(title=f"test {metric} (%) by unseen domain", caption=caption)
    for col in ["", "sparsity", *doms, "mean", "worst", "dev"]:
        table.add_column(col, justify="left" if not col else "right")
    for r in results["rows"]:
        table.add_row(r["row"], f"{r['sparsity']:.1%}", *(f"{100 * r['test'][d]:.1f}" for d in doms),
                      f"{100 * r['mean']:.1f}", f"{100 * r['worst']:.1f}", f"{100 * r['dev']:.1f}")
    return table


def write_results(out: Path, results: dict[str, Any]) -> None:
    write_json(Path(out) / "results.json", results)
    atomic_write_text(Path(out) / "results.md", markdown(results))


def print_results(results: dict[str, Any]) -> None:
    from dogetickets.io import is_writer

    if not is_writer():
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(rich_table(results))

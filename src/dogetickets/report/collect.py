"""Load the finished runs of a run directory into one tidy table (one row per run).

Layout read (only folders holding a ``DONE`` marker count; the paths are :class:`RunLayout`'s)::

    <out>/seed<k>/erm/            baseline fine-tuning
    <out>/seed<k>/irm/            baseline IRM (optional)
    <out>/seed<k>/rewind/<name>/  random / winning / doge tickets
    <out>/seed<k>/scores/scores.json

Every reader takes ``seeds``: the seeds to read (None: all), e.g. those a running study has finished
(``doge report --seeds``).

Column conventions of the table: every column holding a test-set number starts with ``test`` (``test_mean``,
``test_worst``, ``test:<domain>``), so the selection code can drop them all by prefix; dev numbers are
``dev_score`` and ``dev:<domain>``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from dogetickets import methods as registry
from dogetickets.config import config_from_dict
from dogetickets.errors import DogeError
from dogetickets.io import is_done, read_json
from dogetickets.run.layout import BASELINE_FOLDERS, RunLayout, run_config

METRIC_LABELS = {"accuracy": "Acc", "entity_f1": "F1"}

ID_COLUMNS = [
    "dataset",
    "seed",
    "method",
    "name",
    "objective",
    "target_sparsity",
    "sparsity",
    "lambda",
    "allocation",
    "metric",
    "dev_score",
    "test_mean",
    "test_worst",
    "path",
]


def is_test_column(column: str) -> bool:
    """True for every column that carries a test-set number (the selection never looks at these)."""
    return column.startswith("test")


def dataset_names(run_dirs: list[Path]) -> list[str]:
    """The column name of each run directory: its folder name (parent/name when two share a name)."""
    paths = [Path(d).resolve() for d in run_dirs]
    names = [p.name for p in paths]
    out = []
    for p, n in zip(paths, names, strict=True):
        out.append(f"{p.parent.name}/{n}" if names.count(n) > 1 else n)
    if len(set(out)) != len(out):
        raise DogeError(f"two run directories have the same name: {', '.join(str(p) for p in paths)}")
    return out


def finished_run_dirs(run_dir: Path, seeds: Iterable[int] | None = None) -> Iterator[tuple[int, Path]]:
    """(seed, folder) of every finished run (baselines and rewound tickets) of the `seeds` (None: all) whose
    test numbers are on the test domains of the run directory's config.toml (a run evaluated on others is
    left out)."""
    wanted = _test_domains(run_dir)
    layout = RunLayout(Path(run_dir))
    for seed, _ in layout.seed_folders(seeds):
        for folder in layout.run_folders(seed):
            if is_done(folder) and (folder / "metrics.json").is_file() and _on_domains(folder, wanted):
                yield seed, folder


def setup_notes(run_dir: Path) -> list[str]:
    """What the run directory's data set-up tells a reader of its tables (`DataConfig.setup_notes`: the
    config's notes, domains trained on another split or with a carved dev set); none without a valid config."""
    raw = run_config(run_dir)
    try:
        return config_from_dict(raw).data.setup_notes() if raw is not None else []
    except DogeError:
        return []


def _test_domains(run_dir: Path) -> list[str] | None:
    """The test domains the run directory's config names, or None when it has no readable config."""
    try:
        return list((run_config(run_dir) or {})["data"]["test_domains"])
    except (KeyError, TypeError):
        return None


def _on_domains(folder: Path, wanted: list[str] | None) -> bool:
    if wanted is None:
        return True
    try:
        evaluated = read_json(folder / "metrics.json").get("eval")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return True  # _row reports the damaged file
    return evaluated is None or evaluated.get("test_domains") == wanted


def _float(x: Any) -> float:
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _allocation(folder: Path) -> str:
    """How a ticket run's pruned parameters were split between heads and FFN blocks (its ticket.json);
    "" for a baseline or a ticket that does not say."""
    try:
        ticket = read_json(folder / "ticket.json")
    except (OSError, json.JSONDecodeError):
        return ""
    return str(ticket.get("allocation") or "global") if isinstance(ticket, dict) else ""  # before: global


def _row(dataset: str, seed: int, folder: Path) -> dict[str, Any]:
    path = folder / "metrics.json"
    try:
        m = read_json(path)
    except (OSError, json.JSONDecodeError) as exc:
        raise DogeError(f"{path}: unreadable metrics ({exc})") from exc
    if not isinstance(m, dict) or not isinstance(m.get("run"), dict) or not isinstance(m.get("dev"), dict):
        raise DogeError(f"{path}: expected keys 'run' and 'dev'")
    run = m["run"]
    method = str(run.get("method") or (folder.name if folder.name in BASELINE_FOLDERS else ""))
    if not method:
        raise DogeError(f"{path}: run.method is missing")
    row: dict[str, Any] = {
        "dataset": dataset,
        "seed": int(run["seed"]) if run.get("seed") is not None else seed,
        "method": method,
        "name": str(run.get("name") or folder.name),
        "objective": str(run.get("objective") or "erm"),
        "target_sparsity": _float(run.get("target_sparsity", 0.0)),
        "sparsity": _float(run.get("sparsity", 0.0)),
        "lambda": _float(run.get("lambda")),
        "allocation": _allocation(folder),
        "metric": str(m.get("metric", "accuracy")),
        "dev_score": _float(m["dev"].get("score")),
        "test_mean": math.nan,
        "test_worst": math.nan,
        "path": str(folder),
    }
    if math.isnan(row["target_sparsity"]):
        row["target_sparsity"] = 0.0
    if math.isnan(row["sparsity"]):
        row["sparsity"] = row["target_sparsity"]
    for dom, v in (m["dev"].get("per_domain") or {}).items():
        row[f"dev:{dom}"] = _float(v)
    test = m.get("test")
    if isinstance(test, dict):
        per = {str(d): _float(v) for d, v in (test.get("per_domain") or {}).items()}
        vals = [v for v in per.values() if not math.isnan(v)]
        row["test_mean"] = (
            _float(test.get("mean"))
            if test.get("mean") is not None
            else (sum(vals) / len(vals) if vals else math.nan)
        )
        row["test_worst"] = (
            _float(test.get("worst")) if test.get("worst") is not None else (min(vals) if vals else math.nan)
        )
        for dom, v in per.items():
            row[f"test:{dom}"] = v
    return row


def _check_seeds(run_dir: Path, seeds: Iterable[int] | None, found: set[int]) -> None:
    """Every seed asked for (`doge report --seeds`) has finished runs in `run_dir`: else a DogeError naming
    the missing seeds and the seeds the run has."""
    missing = sorted({int(s) for s in seeds} - found) if seeds is not None else []
    if not missing:
        return
    have = sorted({seed for seed, _ in finished_run_dirs(run_dir)})
    listed = ", ".join(map(str, missing))
    has = (f"its finished runs are of seed{'s' if len(have) > 1 else ''} {', '.join(map(str, have))}" if have
           else "it has no finished runs of any seed")
    raise DogeError(f"{run_dir}: no finished runs of seed{'s' if len(missing) > 1 else ''} {listed} (--seeds); {has}")


def load_runs(run_dir: Path, dataset: str | None = None, seeds: Iterable[int] | None = None) -> pd.DataFrame:
    """One row per finished run of `run_dir` (of the `seeds`; None: all); a DogeError when there is none, or
    when one of `seeds` has no finished run.

    Columns: dataset, seed, method, name, objective, target_sparsity, sparsity, lambda, allocation (tickets:
    global, proportional or balanced; "" for baselines), metric, dev_score,
    test_mean, test_worst, path, then ``dev:<domain>`` and ``test:<domain>`` (NaN where a run has no test).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DogeError(f"{run_dir}: no such run directory")
    dataset = dataset or dataset_names([run_dir])[0]
    seeds = None if seeds is None else list(seeds)
    rows = [_row(dataset, seed, folder) for seed, folder in finished_run_dirs(run_dir, seeds)]
    _check_seeds(run_dir, seeds, {int(r["seed"]) for r in rows})
    if not rows:
        raise DogeError(f"{run_dir}: no finished runs (no seed*/erm, seed*/irm or seed*/rewind/* with DONE)")
    df = pd.DataFrame(rows)
    extra = sorted(c for c in df.columns if c not in ID_COLUMNS)
    df = df[
        ID_COLUMNS + [c for c in extra if c.startswith("dev:")] + [c for c in extra if c.startswith("test:")]
    ]
    order = {m: i for i, m in enumerate(registry.ordered(df["method"]))}
    df = df.assign(_o=df["method"].map(order))
    df = df.sort_values(["_o", "seed", "target_sparsity", "lambda", "name"], na_position="first")
    return df.drop(columns="_o").reset_index(drop=True)


def load_all(run_dirs: list[Path], seeds: Iterable[int] | None = None) -> pd.DataFrame:
    """The runs of several run directories (each a dataset; of the `seeds`, None: all), stacked."""
    if not run_dirs:
        raise DogeError("no run directory given")
    names = dataset_names(run_dirs)
    seeds = None if seeds is None else list(seeds)
    frames = [load_runs(Path(d), n, seeds) for d, n in zip(run_dirs, names, strict=True)]
    return pd.concat(frames, ignore_index=True, sort=False)


def load_predictions(run_path: Path, split: str = "test") -> dict[str, dict[int, tuple[Any, Any]]]:
    """{domain: {index: (gold, pred)}} of one split of one run's predictions.jsonl (empty if absent)."""
    path = Path(run_path) / "predictions.jsonl"
    out: dict[str, dict[int, tuple[Any, Any]]] = {}
    if not path.is_file():
        return out
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if rec["split"] != split:
                    continue
                out.setdefault(str(rec["domain"]), {})[int(rec["index"])] = (rec["gold"], rec["pred"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise DogeError(f"{path}:{lineno}: bad prediction line ({exc})") from exc
    return out


def load_scores(run_dir: Path, seeds: Iterable[int] | None = None) -> tuple[int, dict[str, Any]] | None:
    """(seed, scores.json) of the first seed (of `seeds`; None: all) that has one, or None."""
    layout = RunLayout(Path(run_dir))
    for seed, _ in layout.seed_folders(seeds):
        path = layout.scores(seed)
        if path.is_file():
            try:
                return seed, read_json(path)
            except (OSError, json.JSONDecodeError) as exc:
                raise DogeError(f"{path}: unreadable scores ({exc})") from exc
    return None


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)

"""Diagnostics: do doge tickets prune other units than winning tickets, and why (or why not)? The
computation: each function returns a DataFrame (or a list), draws nothing and writes nothing.

Everything here reads finished run directories (``<run>/seed<k>/scores/scores.json``,
``<run>/seed<k>/tickets/*.json``, optionally ``<run>/preview.csv``) and never trains. Three questions:

1. **Do the tickets differ?** ``ticket_overlap``: the Jaccard index |A ∩ W| / |A ∪ W| of the units pruned
   by a ticket A (heads as (layer, head), FFN blocks as ("ffn", layer)) and by the winning ticket W of the
   same seed, target sparsity and allocation (the ticket whose method ranks by the pooled score and whose
   ``allocation`` field is the same). Every ticket method that does not rank by the pooled score is
   compared (doge, doge-nc, doge-worst and their allocation variants); random tickets give the chance
   level. Two empty sets have Jaccard 1 (they are the same set). ``preview_gap`` adds, from
   ``doge preview``, the in-domain dev score of each method minus the winning ticket's at the same seed
   and target sparsity (no retraining).
2. **Do the training domains agree on which units matter?** ``domain_rank_correlation``: for every pair
   of training domains, the Spearman rank correlation over units of their (l2-normalized) expressive
   scores, heads and FFN blocks together, heads only and FFN blocks only. When the domains agree, the
   variance across domains is small and the doge score ranks units nearly as the mean does.
3. **Is the penalty large enough to move the ranking?** ``variance_scale``: per lambda, the spread (std
   over units) of the mean-over-domains score against the size of the penalty lambda * variance over
   domains (population variance; its median and 90th percentile over units, and each divided by the
   spread), and the Spearman correlation over units of the mean with the doge score mean - lambda * var
   (1 when the penalty does not reorder anything) and of the pooled (winning) score with the doge score.
   Where scores.json holds ``per_domain_sampling_var`` the same is given for the noise-corrected
   variance used by ``doge-nc`` (``nc_*`` columns): var - (D - 1) / D * the mean over domains of the
   sampling variance of each domain mean, floored at 0 (the (D - 1) / D makes it unbiased for a population
   variance over D domains, as ``dogetickets.scoring``), and ``noise_share``: the mean over units (with an
   observed variance > 0) of that expected noise divided by the observed variance.

Every reader takes ``seeds``: the seeds to read (None: all; ``doge report --seeds``). The figure is
``report.diagnostics_figure.plot_diagnostics`` (the overlap vs target sparsity and the mean vs variance across
domains of every unit); ``report.diagnostics_section.section`` adds all of it to the report.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dogetickets import methods
from dogetickets.errors import DogeError
from dogetickets.io import read_json
from dogetickets.run.layout import RunLayout
from dogetickets.scoring import UnitScores, between_domain_var
from dogetickets.tickets import Ticket

try:  # scipy is not a declared dependency: rank with pandas without it
    from scipy.stats import spearmanr as _spearmanr
except ImportError:  # pragma: no cover - depends on the environment
    _spearmanr = None

__all__ = [
    "OVERLAP_COLUMNS",
    "PERCENTILE",
    "corrected_variance",
    "curve_label",
    "domain_rank_correlation",
    "jaccard",
    "lambda_choice",
    "preview_gap",
    "pruned_units",
    "run_lambdas",
    "spearman",
    "ticket_overlap",
    "unit_table",
    "variance_scale",
]

OVERLAP_COLUMNS = [
    "seed", "method", "lambda", "allocation", "target_sparsity", "jaccard",
    "heads_a", "ffn_a", "heads_winning", "ffn_winning",
]
RANKCORR_COLUMNS = ["seed", "domain_a", "domain_b", "spearman_all", "spearman_heads", "spearman_ffn", "n_units"]
PERCENTILE = 90  # the upper percentile of the penalty reported by variance_scale
_SCALE = ["mean_std", "pen_median", "pen_p90", "median_ratio", "p90_ratio", "spearman_mean", "spearman_winning"]
VARIANCE_COLUMNS = ["seed", "lambda", "n_units", *_SCALE, *(f"nc_{c}" for c in _SCALE[1:]),
                    "noise_share", "noise_share_median"]
PREVIEW_COLUMNS = ["seed", "method", "lambda", "target_sparsity", "dev_score", "dev_winning", "dev_gap"]
UNIT_COLUMNS = ["seed", "kind", "layer", "head", "mean", "var", "pooled", "sampling_var", "corrected_var",
                "pruned", "ticket"]
_KEY_DIGITS = 6  # target sparsities are matched after rounding to this many decimals


# --------------------------------------------------------------------------------------------- helpers


def pruned_units(ticket: Ticket) -> frozenset[tuple[Any, int]]:
    """The units a ticket prunes: heads as (layer, head), FFN blocks as ("ffn", layer)."""
    heads = {(int(layer), int(h)) for layer, hs in ticket.pruned_heads.items() for h in hs}
    return frozenset(heads | {("ffn", int(layer)) for layer in ticket.pruned_ffn})


def jaccard(a: set | frozenset, b: set | frozenset) -> float:
    """|a ∩ b| / |a ∪ b|; 1.0 for two empty sets (they are equal)."""
    union = len(a | b)
    return 1.0 if union == 0 else len(a & b) / union


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with fewer than two values or a constant side."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman: {x.shape} and {y.shape} values")
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    if _spearmanr is not None:
        return float(_spearmanr(x, y)[0])
    return float(pd.Series(x).rank().corr(pd.Series(y).rank()))


def corrected_variance(values: np.ndarray, sampling_var: np.ndarray) -> np.ndarray:
    """Noise-corrected variance over domains (axis 0): the population variance of the domain means minus
    (D - 1) / D times their mean sampling variance (its expected contribution), floored at 0: the variance
    doge-nc ranks by (scoring.between_domain_var)."""
    return between_domain_var(values, sampling_var)


def _method(name: str) -> methods.Method | None:
    try:
        m = methods.get(name)
    except KeyError:
        return None
    return m if m.is_ticket else None


def _lam(x: Any) -> float:
    return math.nan if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _load_tickets(layout: RunLayout, seed: int) -> list[Ticket]:
    out = []
    for path in layout.ticket_files(seed):
        try:
            out.append(Ticket.load(path))
        except DogeError as exc:
            warnings.warn(f"diagnostics: skipped {exc}", stacklevel=3)
    return out


def _pairs(layout: RunLayout, seed: int) -> list[tuple[Ticket, Ticket]]:
    """(ticket, winning ticket) for every ticket of a seed not ranked by the pooled score that has a winning
    ticket (ranking "pooled") of the same target sparsity and allocation field."""
    tickets = [(t, _method(t.method)) for t in _load_tickets(layout, seed)]
    tickets = [(t, m) for t, m in tickets if m is not None]
    winning: dict[tuple[float, str], Ticket] = {}
    for t, m in sorted(tickets, key=lambda tm: methods.order_key(tm[0].method)):
        if m.ranking == "pooled":
            winning.setdefault((round(t.target_sparsity, _KEY_DIGITS), t.allocation), t)
    out = []
    for t, m in tickets:
        w = winning.get((round(t.target_sparsity, _KEY_DIGITS), t.allocation))
        if m.ranking != "pooled" and w is not None:
            out.append((t, w))
    return out


def _load_scores(run_dir: Path, seeds: Iterable[int] | None) -> list[tuple[int, UnitScores, dict[str, Any]]]:
    """(seed, scores, raw JSON) of every seed (of `seeds`; None: all) with a readable scores.json."""
    out = []
    layout = RunLayout(Path(run_dir))
    for seed, _ in layout.seed_folders(seeds):
        path = layout.scores(seed)
        if not path.is_file():
            continue
        try:
            raw = read_json(path)
            out.append((seed, UnitScores.from_json(raw), raw))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"diagnostics: skipped {path} ({exc})", stacklevel=3)
    return out


def _flat(scores: UnitScores) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(D, units) per-domain scores, heads (layer-major) then FFN blocks; the same for the sampling
    variances (None without them); the number of heads."""
    D, L, H = scores.per_domain_heads.shape
    values = np.concatenate([scores.per_domain_heads.reshape(D, L * H), scores.per_domain_ffn.reshape(D, L)], 1)
    sv = None
    if scores.has_sampling_var:
        heads, ffn = np.asarray(scores.sampling_var_heads), np.asarray(scores.sampling_var_ffn)
        sv = np.concatenate([heads.reshape(D, L * H), ffn.reshape(D, L)], 1).astype(np.float64)
    return values.astype(np.float64), sv, L * H


def _order(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df.reset_index(drop=True)
    key = df["method"].map(methods.order_key)
    return (
        df.assign(_k=key)
        .sort_values(["seed", "_k", "allocation", "lambda", "target_sparsity"], kind="mergesort", na_position="first")
        .drop(columns="_k")
        .reset_index(drop=True)
    )


# ------------------------------------------------------------------------------------- the diagnostics


def ticket_overlap(run_dir: Path | str, seeds: Iterable[int] | None = None) -> pd.DataFrame:
    """Per seed, every ticket whose method does not rank by the pooled score (doge, doge-nc, doge-worst,
    random and their allocation variants) against the winning ticket of the same seed, target sparsity and
    allocation: Jaccard of the pruned units and the pruned head / FFN counts of both (OVERLAP_COLUMNS).
    Tickets without such a winning ticket, of unknown methods or unreadable are left out."""
    rows: list[dict[str, Any]] = []
    layout = RunLayout(Path(run_dir))
    for seed, _ in layout.seed_folders(seeds):
        for t, w in _pairs(layout, seed):
            a, b = pruned_units(t), pruned_units(w)
            rows.append(
                {
                    "seed": seed,
                    "method": t.method,
                    "lambda": _lam(t.lam),
                    "allocation": t.allocation,
                    "target_sparsity": float(t.target_sparsity),
                    "jaccard": jaccard(a, b),
                    "heads_a": sum(1 for u in a if u[0] != "ffn"),
                    "ffn_a": sum(1 for u in a if u[0] == "ffn"),
                    "heads_winning": sum(1 for u in b if u[0] != "ffn"),
                    "ffn_winning": sum(1 for u in b if u[0] == "ffn"),
                }
            )
    return _order(pd.DataFrame(rows, columns=OVERLAP_COLUMNS))


def domain_rank_correlation(run_dir: Path | str, seeds: Iterable[int] | None = None) -> pd.DataFrame:
    """Per seed and pair of training domains: Spearman correlation over units of their per-domain expressive
    scores, all units (heads and FFN blocks), heads only and FFN blocks only (RANKCORR_COLUMNS)."""
    rows: list[dict[str, Any]] = []
    for seed, scores, _ in _load_scores(Path(run_dir), seeds):
        values, _, n_heads = _flat(scores)
        doms = list(scores.domains)
        for i in range(len(doms)):
            for j in range(i + 1, len(doms)):
                a, b = values[i], values[j]
                rows.append(
                    {
                        "seed": seed,
                        "domain_a": doms[i],
                        "domain_b": doms[j],
                        "spearman_all": spearman(a, b),
                        "spearman_heads": spearman(a[:n_heads], b[:n_heads]),
                        "spearman_ffn": spearman(a[n_heads:], b[n_heads:]),
                        "n_units": len(a),
                    }
                )
    return pd.DataFrame(rows, columns=RANKCORR_COLUMNS)


def _scale(mean: np.ndarray, var: np.ndarray, pooled: np.ndarray, lam: float) -> dict[str, float]:
    pen = lam * var
    spread = float(mean.std())
    med, hi = float(np.median(pen)), float(np.percentile(pen, PERCENTILE))
    return {
        "mean_std": spread,
        "pen_median": med,
        "pen_p90": hi,
        "median_ratio": med / spread if spread > 0 else math.nan,
        "p90_ratio": hi / spread if spread > 0 else math.nan,
        "spearman_mean": spearman(mean, mean - pen),
        "spearman_winning": spearman(pooled, mean - pen),
    }


def variance_scale(run_dir: Path | str, lambdas: Sequence[float], seeds: Iterable[int] | None = None) -> pd.DataFrame:
    """Per seed and lambda: how large lambda * variance over domains is next to the spread of the mean
    score, and how much it reorders the units (VARIANCE_COLUMNS; see the module docstring). The ``nc_*``
    and ``noise_share*`` columns are NaN where scores.json has no sampling variances."""
    rows: list[dict[str, Any]] = []
    for seed, scores, _ in _load_scores(Path(run_dir), seeds):
        values, sv, _ = _flat(scores)
        pooled = np.concatenate([np.ravel(scores.pooled_heads), np.ravel(scores.pooled_ffn)]).astype(np.float64)
        mean, var = values.mean(0), values.var(0)
        nc_var = share = share_median = None
        if sv is not None:
            D = values.shape[0]
            noise = (D - 1) / D * sv.mean(0)
            nc_var = corrected_variance(values, sv)
            pos = var > 0
            ratios = noise[pos] / var[pos]
            share = float(ratios.mean()) if ratios.size else math.nan
            share_median = float(np.median(ratios)) if ratios.size else math.nan
        for lam in lambdas:
            row: dict[str, Any] = {"seed": seed, "lambda": float(lam), "n_units": values.shape[1]}
            row.update(_scale(mean, var, pooled, float(lam)))
            if nc_var is not None:
                nc = _scale(mean, nc_var, pooled, float(lam))
                row.update({f"nc_{k}": v for k, v in nc.items() if k != "mean_std"})
                row.update(noise_share=share, noise_share_median=share_median)
            rows.append(row)
    return pd.DataFrame(rows, columns=VARIANCE_COLUMNS).astype({c: float for c in VARIANCE_COLUMNS[3:]})


def run_lambdas(run_dir: Path | str, seeds: Iterable[int] | None = None) -> list[float]:
    """The lambdas of a run: those of scores.json's combined doge scores and of its tickets, sorted."""
    found: set[float] = set()
    seeds = None if seeds is None else list(seeds)
    for _, _, raw in _load_scores(Path(run_dir), seeds):
        for entry in raw.get("combined", {}).values():
            if isinstance(entry, dict) and entry.get("lambda") is not None:
                found.add(float(entry["lambda"]))
    layout = RunLayout(Path(run_dir))
    for seed, _ in layout.seed_folders(seeds):
        found.update(float(t.lam) for t in _load_tickets(layout, seed) if t.lam is not None)
    return sorted(found)


def preview_gap(run_dir: Path | str) -> pd.DataFrame:
    """From ``<run>/preview.csv`` (``doge preview``, no retraining): per seed, method (not ranked by the
    pooled score), lambda and target sparsity, the in-domain dev score and the winning ticket's (the
    winning method with the same allocation suffix) at the same seed and target sparsity, and the gap
    (PREVIEW_COLUMNS). Empty without preview.csv. All its seeds: preview.csv is not read by seed folder."""
    path = Path(run_dir) / "preview.csv"
    if not path.is_file():
        return pd.DataFrame(columns=PREVIEW_COLUMNS)
    try:
        pv = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        warnings.warn(f"diagnostics: skipped {path} ({exc})", stacklevel=2)
        return pd.DataFrame(columns=PREVIEW_COLUMNS)
    if not {"seed", "method", "target_sparsity", "dev_score"} <= set(pv.columns):
        return pd.DataFrame(columns=PREVIEW_COLUMNS)
    if "lambda" not in pv.columns:
        pv["lambda"] = math.nan
    records = pv.to_dict("records")
    win: dict[tuple[int, str, float], float] = {}
    for r in records:
        m = _method(str(r["method"]))
        if m is not None and m.ranking == "pooled":
            win.setdefault((int(r["seed"]), str(r["method"]), round(float(r["target_sparsity"]), _KEY_DIGITS)),
                           float(r["dev_score"]))
    rows: list[dict[str, Any]] = []
    for r in records:
        m = _method(str(r["method"]))
        if m is None or m.ranking == "pooled":
            continue
        w = win.get((int(r["seed"]), methods.winning_for(m.name), round(float(r["target_sparsity"]), _KEY_DIGITS)))
        if w is None:
            continue
        rows.append(
            {
                "seed": int(r["seed"]),
                "method": str(r["method"]),
                "lambda": _lam(r["lambda"]),
                "target_sparsity": float(r["target_sparsity"]),
                "dev_score": float(r["dev_score"]),
                "dev_winning": w,
                "dev_gap": float(r["dev_score"]) - w,
            }
        )
    return pd.DataFrame(rows, columns=PREVIEW_COLUMNS)


def lambda_choice(run_dir: Path | str, seeds: Iterable[int] | None = None) -> pd.DataFrame:
    """The dev scores behind every lambda chosen on dev (tickets.lambda_choice = "preview"): per seed, method
    and target sparsity, the in-domain dev score of the fine-tuned model with each candidate lambda's
    ticket removed (no retraining), and the lambda chosen. Empty when no ticket chose its lambda on dev."""
    rows: list[dict[str, Any]] = []
    layout = RunLayout(Path(run_dir))
    for seed, _ in layout.seed_folders(seeds):
        for t in _load_tickets(layout, seed):
            choice = t.extra.get("lambda_choice") if isinstance(t.extra, dict) else None
            if not isinstance(choice, dict) or not isinstance(choice.get("dev_score"), dict):
                continue
            row: dict[str, Any] = {"seed": seed, "method": t.method,
                                   "target_sparsity": float(t.target_sparsity), "chosen": _lam(choice.get("chosen"))}
            row.update({f"dev λ={k}": float(v) for k, v in choice["dev_score"].items()})
            rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["seed", "method", "target_sparsity", "chosen"])
    df = pd.DataFrame(rows)
    df = df.assign(_k=df["method"].map(methods.order_key)).sort_values(["seed", "_k", "target_sparsity"])
    return df.drop(columns="_k").reset_index(drop=True)


# ------------------------------------------------------------------------------- what the figure draws


def _highlight(pairs: list[tuple[Ticket, Ticket]]) -> tuple[Ticket, Ticket] | None:
    """The pair the unit scatter marks: a domain-general ticket if any (else any other score-ranked one),
    at the highest target sparsity, the first method in registry order, the largest lambda."""

    def key(pair: tuple[Ticket, Ticket]) -> tuple[float, int, int, float]:
        t = pair[0]
        base, alloc, _ = methods.order_key(t.method)
        return t.target_sparsity, -base, -alloc, -math.inf if t.lam is None else float(t.lam)

    for ranking in ("domain_general", "worst"):
        cands = [(t, w) for t, w in pairs if (m := _method(t.method)) is not None and m.ranking == ranking]
        if cands:
            return max(cands, key=key)
    return None


def unit_table(run_dir: Path | str, seeds: Iterable[int] | None = None) -> pd.DataFrame:
    """One row per seed and unit (UNIT_COLUMNS): kind ("head" | "ffn"), layer, head (NA for FFN blocks),
    the mean and population variance over training domains of its normalized score, its pooled score, its
    mean sampling variance and noise-corrected variance (NaN without sampling variances) and, for the
    seed's highlighted ticket pair (see ``_highlight``; named in ``ticket``), who prunes it: "both",
    "winning only", "<method> only" or "neither" (empty without a pair)."""
    frames = []
    layout = RunLayout(Path(run_dir))
    for seed, scores, _ in _load_scores(Path(run_dir), seeds):
        values, sv, n_heads = _flat(scores)
        L, H = scores.per_domain_heads.shape[1:]
        pooled = np.concatenate([np.ravel(scores.pooled_heads), np.ravel(scores.pooled_ffn)])
        pair = _highlight(_pairs(layout, seed))
        pruned = ticket = [""] * values.shape[1]
        if pair is not None:
            a, b = pruned_units(pair[0]), pruned_units(pair[1])
            keys = [(li, h) for li in range(L) for h in range(H)] + [("ffn", li) for li in range(L)]
            names = {(True, True): "both", (False, True): "winning only", (True, False): f"{pair[0].method} only",
                     (False, False): "neither"}
            pruned = [names[(k in a, k in b)] for k in keys]
            label = pair[0].method + (f" λ={pair[0].lam:g}" if pair[0].lam is not None else "")
            ticket = [f"{label}, target sparsity {pair[0].target_sparsity:g}, {pair[0].allocation}"] * len(keys)
        frames.append(
            pd.DataFrame(
                {
                    "seed": seed,
                    "kind": ["head"] * n_heads + ["ffn"] * L,
                    "layer": [li for li in range(L) for _ in range(H)] + list(range(L)),
                    "head": pd.array([h for _ in range(L) for h in range(H)] + [pd.NA] * L, dtype="Int64"),
                    "mean": values.mean(0),
                    "var": values.var(0),
                    "pooled": pooled.astype(np.float64),
                    "sampling_var": sv.mean(0) if sv is not None else math.nan,
                    "corrected_var": corrected_variance(values, sv) if sv is not None else math.nan,
                    "pruned": pruned,
                    "ticket": ticket,
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=UNIT_COLUMNS)


def curve_label(method: str, lam: float, alloc: str, show_alloc: bool) -> str:
    """A method's label in the diagnostics' tables and legend: with its lambda (not NaN) and, when the
    allocations differ (`show_alloc`), the allocation of a method without an allocation suffix."""
    text = methods.label(method)
    if not math.isnan(lam):
        text += f" λ={lam:g}"
    if show_alloc and methods.is_known(method) and methods.get(method).allocation is None:
        text += f" [{alloc}]"
    return text

"""Diagnostics: do doge tickets prune other units than winning tickets, and why (or why not)?

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

``plot_diagnostics`` draws the overlap vs target sparsity and the mean vs variance across domains of every
unit; ``section`` adds all of it to the report (``write_report`` calls it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dogetickets import methods
from dogetickets.errors import DogeError
from dogetickets.io import atomic_write_text, read_json
from dogetickets.report.collect import seed_dirs
from dogetickets.scoring import UnitScores
from dogetickets.tickets import Ticket

if TYPE_CHECKING:
    from dogetickets.report import _Doc

try:  # scipy is not a declared dependency: rank with pandas without it
    from scipy.stats import spearmanr as _spearmanr
except ImportError:  # pragma: no cover - depends on the environment
    _spearmanr = None

__all__ = [
    "OVERLAP_COLUMNS",
    "PERCENTILE",
    "corrected_variance",
    "domain_rank_correlation",
    "jaccard",
    "overlap_summary",
    "plot_diagnostics",
    "preview_gap",
    "pruned_units",
    "run_lambdas",
    "section",
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
DPI = 150
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
    (D - 1) / D times their mean sampling variance (its expected contribution), floored at 0."""
    values = np.asarray(values, dtype=np.float64)
    D = values.shape[0]
    noise = (D - 1) / D * np.asarray(sampling_var, dtype=np.float64).mean(0)
    return np.maximum(values.var(0) - noise, 0.0)


def _method(name: str) -> methods.Method | None:
    try:
        m = methods.get(name)
    except KeyError:
        return None
    return m if m.is_ticket else None


def _lam(x: Any) -> float:
    return math.nan if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _load_tickets(folder: Path) -> list[Ticket]:
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append(Ticket.load(path))
        except DogeError as exc:
            warnings.warn(f"diagnostics: skipped {exc}", stacklevel=3)
    return out


def _pairs(seed_dir: Path) -> list[tuple[Ticket, Ticket]]:
    """(ticket, winning ticket) for every ticket of a seed not ranked by the pooled score that has a winning
    ticket (ranking "pooled") of the same target sparsity and allocation field."""
    tickets = [(t, _method(t.method)) for t in _load_tickets(seed_dir / "tickets")]
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


def _load_scores(run_dir: Path) -> list[tuple[int, UnitScores, dict[str, Any]]]:
    """(seed, scores, raw JSON) of every seed with a readable scores.json."""
    out = []
    for seed, sdir in seed_dirs(Path(run_dir)):
        path = sdir / "scores" / "scores.json"
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


def ticket_overlap(run_dir: Path | str) -> pd.DataFrame:
    """Per seed, every ticket whose method does not rank by the pooled score (doge, doge-nc, doge-worst,
    random and their allocation variants) against the winning ticket of the same seed, target sparsity and
    allocation: Jaccard of the pruned units and the pruned head / FFN counts of both (OVERLAP_COLUMNS).
    Tickets without such a winning ticket, of unknown methods or unreadable are left out."""
    rows: list[dict[str, Any]] = []
    for seed, sdir in seed_dirs(Path(run_dir)):
        for t, w in _pairs(sdir):
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


def domain_rank_correlation(run_dir: Path | str) -> pd.DataFrame:
    """Per seed and pair of training domains: Spearman correlation over units of their per-domain expressive
    scores, all units (heads and FFN blocks), heads only and FFN blocks only (RANKCORR_COLUMNS)."""
    rows: list[dict[str, Any]] = []
    for seed, scores, _ in _load_scores(Path(run_dir)):
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


def variance_scale(run_dir: Path | str, lambdas: Sequence[float]) -> pd.DataFrame:
    """Per seed and lambda: how large lambda * variance over domains is next to the spread of the mean
    score, and how much it reorders the units (VARIANCE_COLUMNS; see the module docstring). The ``nc_*``
    and ``noise_share*`` columns are NaN where scores.json has no sampling variances."""
    rows: list[dict[str, Any]] = []
    for seed, scores, _ in _load_scores(Path(run_dir)):
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


def run_lambdas(run_dir: Path | str) -> list[float]:
    """The lambdas of a run: those of scores.json's combined doge scores and of its tickets, sorted."""
    found: set[float] = set()
    for _, _, raw in _load_scores(Path(run_dir)):
        for entry in raw.get("combined", {}).values():
            if isinstance(entry, dict) and entry.get("lambda") is not None:
                found.add(float(entry["lambda"]))
    for _, sdir in seed_dirs(Path(run_dir)):
        found.update(float(t.lam) for t in _load_tickets(sdir / "tickets") if t.lam is not None)
    return sorted(found)


def preview_gap(run_dir: Path | str) -> pd.DataFrame:
    """From ``<run>/preview.csv`` (``doge preview``, no retraining): per seed, method (not ranked by the
    pooled score), lambda and target sparsity, the in-domain dev score and the winning ticket's (the
    winning method with the same allocation suffix) at the same seed and target sparsity, and the gap
    (PREVIEW_COLUMNS). Empty without preview.csv."""
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
        winning = "winning" + (f"-{m.allocation}" if m.allocation else "")
        w = win.get((int(r["seed"]), winning, round(float(r["target_sparsity"]), _KEY_DIGITS)))
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


def lambda_choice(run_dir: Path | str) -> pd.DataFrame:
    """The dev scores behind every lambda chosen on dev (tickets.lambda_choice = "preview"): per seed, method
    and target sparsity, the in-domain dev score of the fine-tuned model with each candidate lambda's
    ticket removed (no retraining), and the lambda chosen. Empty when no ticket chose its lambda on dev."""
    rows: list[dict[str, Any]] = []
    for seed, seed_dir in seed_dirs(Path(run_dir)):
        for t in _load_tickets(seed_dir / "tickets"):
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


# ----------------------------------------------------------------------------------------- the figure


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


def unit_table(run_dir: Path | str) -> pd.DataFrame:
    """One row per seed and unit (UNIT_COLUMNS): kind ("head" | "ffn"), layer, head (NA for FFN blocks),
    the mean and population variance over training domains of its normalized score, its pooled score, its
    mean sampling variance and noise-corrected variance (NaN without sampling variances) and, for the
    seed's highlighted ticket pair (see ``_highlight``; named in ``ticket``), who prunes it: "both",
    "winning only", "<method> only" or "neither" (empty without a pair)."""
    frames = []
    sdirs = dict(seed_dirs(Path(run_dir)))
    for seed, scores, _ in _load_scores(Path(run_dir)):
        values, sv, n_heads = _flat(scores)
        L, H = scores.per_domain_heads.shape[1:]
        pooled = np.concatenate([np.ravel(scores.pooled_heads), np.ravel(scores.pooled_ffn)])
        pair = _highlight(_pairs(sdirs[seed])) if seed in sdirs else None
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


def _curve_label(method: str, lam: float, alloc: str, show_alloc: bool) -> str:
    text = methods.label(method)
    if not math.isnan(lam):
        text += f" λ={lam:g}"
    if show_alloc and methods.is_known(method) and methods.get(method).allocation is None:
        text += f" [{alloc}]"
    return text


def plot_diagnostics(run_dir: Path | str, out_png: Path | str) -> Path | None:
    """Draw `out_png`: Jaccard with the winning ticket vs target sparsity per method (mean over seeds, bars
    from the lowest to the highest seed), and the mean vs variance across training domains of every unit of
    the first scored seed (heads o, FFN blocks ^), coloured by which of the highlighted pair prunes it.
    Writes ``<stem>-overlap.csv`` and ``<stem>-units.csv`` next to it. None (nothing written) when the run
    has neither ticket pairs nor scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overlap, units = ticket_overlap(run_dir), unit_table(run_dir)
    if overlap.empty and units.empty:
        return None
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_png.with_name(f"{out_png.stem}-overlap.csv"), overlap.to_csv(index=False))
    atomic_write_text(out_png.with_name(f"{out_png.stem}-units.csv"), units.to_csv(index=False))
    panels = int(not overlap.empty) + int(not units.empty)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    axes = list(axes[0])
    extra = []
    if not overlap.empty:
        ax = axes.pop(0)
        show_alloc = overlap["allocation"].nunique() > 1
        groups = overlap.assign(_l=overlap["lambda"].fillna(-math.inf)).groupby(
            ["method", "_l", "allocation"], sort=False)
        markers = "osD^vP*X"
        seen: dict[str, int] = {}
        for (method, _, alloc), g in sorted(groups, key=lambda kv: (methods.order_key(kv[0][0]), kv[0][1], kv[0][2])):
            lam = float(g["lambda"].iloc[0])
            i = seen.setdefault(method, 0)
            seen[method] += 1
            agg = g.groupby("target_sparsity")["jaccard"].agg(["mean", "min", "max"]).sort_index()
            x = 100 * agg.index.to_numpy(float)
            y = agg["mean"].to_numpy()
            err = np.vstack([y - agg["min"].to_numpy(), agg["max"].to_numpy() - y])
            ax.errorbar(x, y, yerr=err, marker=markers[i % len(markers)], capsize=3, color=methods.color(method),
                        linestyle=methods.linestyle(method) if methods.get(method).ranking != "random" else ":",
                        label=_curve_label(method, lam, alloc, show_alloc))
        ax.set_xlabel("target sparsity (%)")
        ax.set_ylabel("Jaccard with the winning ticket (pruned units)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("Overlap with winning tickets (mean, min-max over seeds)")
        ax.grid(alpha=0.3)
        below = ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
        below.set_in_layout(False)  # under the panel, off the curves; the saved canvas grows to hold it
        extra.append(below)
    if not units.empty:
        ax = axes.pop(0)
        first = units[units["seed"] == units["seed"].min()]
        cats = list(dict.fromkeys(first["pruned"]))
        method_only = next((c for c in cats if c.endswith(" only") and c != "winning only"), "")
        colours = {"both": "black", "winning only": methods.color("winning"), "neither": "lightgray"}
        if method_only:
            colours[method_only] = methods.color(method_only[: -len(" only")])
        for kind, marker, fallback in (("head", "o", "tab:blue"), ("ffn", "^", "tab:orange")):
            sub = first[first["kind"] == kind]
            for cat in cats:
                part = sub[sub["pruned"] == cat]
                if part.empty:
                    continue
                what = "heads" if kind == "head" else "FFN blocks"
                ax.scatter(part["mean"], part["var"], marker=marker, s=22 if kind == "head" else 60,
                           color=colours.get(cat, fallback), edgecolors="none" if kind == "head" else "black",
                           alpha=0.8, label=f"{what}: pruned by {cat}" if cat else what)
        ticket = str(first["ticket"].iloc[0])
        ax.set_xlabel("mean over training domains (normalized expressive score)")
        ax.set_ylabel("variance over training domains")
        ax.set_title(f"Units, seed {int(first['seed'].iloc[0])}" + (f"\n{ticket} vs winning" if ticket else ""),
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight", bbox_extra_artists=extra)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png


# ---------------------------------------------------------------------------------------- the section


def _f(x: Any, digits: int = 2) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _g(x: Any) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


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
        label = _curve_label(method, float(g["lambda"].iloc[0]), alloc, show_alloc)
        row = {"method": label, "seeds": g["seed"].nunique()}
        means = g.groupby("target_sparsity")["jaccard"].mean()
        for ts in sparsities:
            row[f"{100 * ts:g}%"] = _f(means.get(ts, math.nan))
        rows.append(row)
    return pd.DataFrame(rows)


def _variance_display(vs: pd.DataFrame) -> pd.DataFrame:
    g = vs.groupby("lambda", sort=True)
    mean = g.mean(numeric_only=True)
    out = pd.DataFrame({"λ": [f"{x:g}" for x in mean.index], "seeds": g["seed"].nunique().to_numpy()})
    p = f"p{PERCENTILE}"
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
        row = {"method": _curve_label(method, float(g["lambda"].iloc[0]), "", False), "seeds": g["seed"].nunique()}
        means = g.groupby("target_sparsity")["dev_gap"].mean()
        for ts in sparsities:
            v = means.get(ts, math.nan)
            row[f"{100 * ts:g}%"] = "" if math.isnan(v) else f"{100 * v:+.1f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write_text(path, df.to_csv(index=False))


def _dataset(doc: _Doc, name: str, run_dir: Path, out: Path) -> None:
    stem = f"diagnostics-{name.replace('/', '_')}"
    doc.h(3, f"Diagnostics: {name}")
    overlap = ticket_overlap(run_dir)
    rankcorr = domain_rank_correlation(run_dir)
    lambdas = run_lambdas(run_dir)
    variance = variance_scale(run_dir, lambdas)
    gap = preview_gap(run_dir)
    if overlap.empty and rankcorr.empty and gap.empty:
        doc.p(f"No tickets, scores or preview to diagnose in {run_dir}.")
        return

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
        lines = []
        show_alloc = overlap["allocation"].nunique() > 1
        for (method, _, alloc), g in overlap.assign(_l=overlap["lambda"].fillna(-math.inf)).groupby(
                ["method", "_l", "allocation"], sort=False):
            label = _curve_label(method, float(g["lambda"].iloc[0]), alloc, show_alloc)
            lines.append(f"{label}: mean Jaccard {_f(g['jaccard'].mean())}, range {_f(g['jaccard'].min())} to "
                         f"{_f(g['jaccard'].max())} over {len(g)} tickets")
        doc.items(lines)
    if not gap.empty:
        _write_csv(out / f"{stem}-preview_gap.csv", gap)
        doc.p(
            "From doge preview (fine-tuned model with the units masked, no retraining): in-domain dev score "
            "minus the winning ticket's at the same seed and target sparsity, mean over seeds, in points. "
            "Dev only; the test numbers are left out here."
        )
        doc.table(_preview_display(gap))

    doc.h(4, "Do the training domains agree?")
    if rankcorr.empty:
        doc.p("No seed has a readable scores.json, so the domains' scores cannot be compared.")
    else:
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

    doc.h(4, "Size of the variance penalty")
    if rankcorr.empty:
        doc.p("No scores: the variance penalty cannot be sized.")
    elif variance.empty:
        doc.p("No lambda in the scores or tickets: the variance penalty cannot be sized.")
    else:
        _write_csv(out / f"{stem}-variance.csv", variance)
        doc.p(
            "Per lambda, mean over seeds: the spread (std over units) of the mean score over training domains "
            f"against the penalty lambda × variance over domains (its median and {PERCENTILE}th percentile over "
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

    choice = lambda_choice(run_dir)
    if not choice.empty:
        _write_csv(out / f"{stem}-lambda_choice.csv", choice)
        doc.h(4, "Lambda chosen on dev (the preview values)")
        doc.p(
            "For each ticket whose lambda was chosen on in-domain dev: the dev score of the fine-tuned model "
            "with each candidate lambda's ticket removed, no retraining (%), mean over seeds, and the lambdas "
            f"chosen ({stem}-lambda_choice.csv)."
        )
        dev_cols = [c for c in choice.columns if str(c).startswith("dev λ=")]
        shown = choice.groupby(["method", "target_sparsity"], sort=False).agg(
            {**{c: "mean" for c in dev_cols}, "chosen": lambda x: " ".join(f"{v:g}" for v in x)}).reset_index()
        shown["target_sparsity"] = shown["target_sparsity"].map(lambda x: f"{100 * x:g}%")
        for c in dev_cols:
            shown[c] = shown[c].map(lambda x: _f(100 * x, 1))
        doc.table(shown.rename(columns={"chosen": "chosen (per seed)"}))

    png = plot_diagnostics(run_dir, out / f"{stem}.png")
    if png is not None:
        doc.p(
            f"Left: Jaccard with the winning ticket vs target sparsity ({stem}-overlap.csv). Right: every unit's "
            "mean vs variance across training domains for the first scored seed, heads as dots and FFN blocks "
            "as triangles, coloured by which of the highlighted ticket and its winning ticket prune it "
            f"({stem}-units.csv)."
        )
        doc.image(png, f"diagnostics {name}")


def section(doc: _Doc, names: Sequence[str], run_dirs: Sequence[Path | str], out: Path | str) -> None:
    """Add the "Diagnostics" section to the report `doc`: per dataset (names[i] for run_dirs[i]) the overlap
    table, the domains' rank correlation, the variance-scale table and the figure; CSVs and the figure are
    written into `out` as diagnostics-<dataset>-*.csv / diagnostics-<dataset>.png ("/" in names as "_").
    Missing inputs are said in one sentence, never an error."""
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
    for name, run_dir in zip(names, run_dirs, strict=True):
        _dataset(doc, str(name), Path(run_dir), out)

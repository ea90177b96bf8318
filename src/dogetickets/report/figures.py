"""Figures (matplotlib, Agg, PNG at 150 dpi), each written next to the CSV it is drawn from (same stem).

* transitions.png (paper Fig. 5): OOD test mean vs target sparsity for every ticket method present,
  mean over seeds with a ±std band; ERM (and IRM) as horizontal lines. For a method with a lambda, each (seed, sparsity)
  uses the lambda chosen on dev at that sparsity (the chosen lambdas are listed in the CSV).
  One panel per dataset (two a row).
* lambda.png (paper Fig. 3): doge test mean vs lambda, one line per target sparsity (mean ± std over
  seeds). Not written when no dataset has more than one lambda.
* scores.png (paper Fig. 4): one pie per head / FFN block (rows = layers, columns = heads then FFN);
  radius ∝ the mean normalized expressive score over training domains, slices = each domain's share.
  scores_classes.csv classifies every unit as HMHV/HMLV/LMHV/LMLV (high = above the median over units
  of the mean, resp. of the variance across domains).
* pilot.png (paper Fig. 1/6): activation frequency of FFN neurons at [CLS], one panel per layer, grouped
  bars per domain.
* preview.png (`doge preview`): in-domain dev score vs target sparsity of the fine-tuned model with each
  method's units removed (no retraining), one line per method (doge: per lambda), mean ± std over seeds;
  the OOD test mean in a separate panel, labelled as never used to choose.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from dogetickets import methods as registry  # noqa: E402
from dogetickets.errors import DogeError  # noqa: E402
from dogetickets.io import atomic_replace, atomic_write_text  # noqa: E402
from dogetickets.report.select import select_dev  # noqa: E402

DPI = 150
CLASSES = ("HMHV", "HMLV", "LMHV", "LMLV")


def _save(fig: Any, png: Path, table: pd.DataFrame) -> Path:
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(png.with_suffix(".csv"), table.to_csv(index=False))
    tmp = png.with_name(f".{png.stem}.tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    atomic_replace(tmp, png)
    return png


def _panels(n: int, width: float, height: float, max_cols: int = 2) -> tuple[Any, list[Any]]:
    """A figure of `n` panels of width x height inches, at most `max_cols` a row: one long row of datasets
    would be narrowed to the report page's width, its text with it. The last row's empty cells removed."""
    cols = max(1, min(n, max_cols))
    rows = math.ceil(n / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained")
    axes = list(grid.ravel())
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, axes[:n]


def _agg(values: pd.Series) -> tuple[float, float]:
    v = values.dropna().to_numpy(float)
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _is_ticket(method: str) -> bool:
    return registry.is_known(method) and registry.get(method).is_ticket


def transitions_data(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, method, target_sparsity): test mean ± std over seeds (doge: dev-chosen λ)."""
    rows: list[dict[str, Any]] = []
    tested = runs[runs["test_mean"].notna()]
    for dataset, g in tested.groupby("dataset", sort=False):
        for method in registry.ordered(g["method"]):
            m = g[g["method"] == method]
            if registry.is_known(method) and registry.get(method).uses_lambda:
                # The lambda chosen on dev, per (seed, sparsity); then the test numbers of those runs.
                chosen = select_dev(m, keys=("seed", "target_sparsity"))
                m = m[m["path"].isin(set(chosen["path"]))]
            for ts, h in m.groupby("target_sparsity", sort=True):
                mean, std = _agg(h["test_mean"])
                lams = sorted({f"{x:g}" for x in h["lambda"].dropna()})
                rows.append(
                    {
                        "dataset": dataset,
                        "method": method,
                        "target_sparsity": float(ts),
                        "sparsity_mean": float(h["sparsity"].mean()),
                        "n_seeds": int(h["seed"].nunique()),
                        "test_mean": mean,
                        "test_std": std,
                        "lambdas": " ".join(lams),
                    }
                )
    cols = [
        "dataset",
        "method",
        "target_sparsity",
        "sparsity_mean",
        "n_seeds",
        "test_mean",
        "test_std",
        "lambdas",
    ]
    return pd.DataFrame(rows, columns=cols)


def plot_transitions(runs: pd.DataFrame, out: Path) -> Path | None:
    """transitions.png + transitions.csv; None when no run has test numbers."""
    data = transitions_data(runs)
    if data.empty:
        return None
    datasets = list(dict.fromkeys(data["dataset"]))
    ticket_x = 100 * data.loc[[_is_ticket(m) for m in data["method"]], "target_sparsity"]
    fig, axes = _panels(len(datasets), 5.5, 4)
    for ax, ds in zip(axes, datasets, strict=True):
        d = data[data["dataset"] == ds]
        baselines = [m for m in registry.ordered(d["method"]) if not _is_ticket(m)]
        tickets = [m for m in registry.ordered(d["method"]) if m not in baselines]
        for k, method in enumerate(tickets):
            m = d[d["method"] == method].sort_values("target_sparsity")
            x = 100 * m["target_sparsity"].to_numpy()
            y = 100 * m["test_mean"].to_numpy()
            s = 100 * m["test_std"].fillna(0).to_numpy()
            lam = registry.is_known(method) and registry.get(method).uses_lambda
            label = registry.label(method) + (" (dev-chosen λ)" if lam else "")
            color = registry.color(method)
            ax.plot(x, y, marker=registry.marker(method), color=color, linestyle=registry.linestyle(method),
                    label=label, **nested(k))
            ax.fill_between(x, y - s, y + s, color=color, alpha=0.15, linewidth=0)
        if len(ticket_x):  # one sparsity axis for every panel (a dataset a running study has not finished too)
            pad = max(1.0, 0.05 * (ticket_x.max() - ticket_x.min()))
            ax.set_xlim(ticket_x.min() - pad, ticket_x.max() + pad)
        for base, style in zip(baselines, ("--", ":", "-.", (0, (1, 3))), strict=False):
            b = d[d["method"] == base]
            y, s = 100 * b["test_mean"].iloc[0], 100 * b["test_std"].fillna(0).iloc[0]
            ax.axhline(y, color=registry.color(base), linestyle=style, label=registry.label(base))
            if s > 0:
                ax.axhspan(y - s, y + s, color=registry.color(base), alpha=0.08, linewidth=0)
        metric = str(runs.loc[runs["dataset"] == ds, "metric"].iloc[0])
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel(f"OOD test mean {'F1' if metric == 'entity_f1' else 'accuracy'} (%)")
        ax.set_title(str(ds))
        ax.grid(alpha=0.3)
    _legend_below(fig, axes)
    fig.suptitle("Transitions with varying sparsity (mean ± std over seeds)")
    return _save(fig, Path(out) / "transitions.png", data)


def nested(k: int) -> dict[str, float]:
    """Line width and marker size of a panel's k-th curve: each thinner than the one before, so that where two
    methods give the same numbers (doge and doge-nc at the same ticket) both stay visible, one inside the other."""
    return {"markersize": max(3.0, 8.0 - 1.5 * k), "linewidth": max(0.8, 2.4 - 0.5 * k)}


def _legend_below(fig: Any, axes: Any) -> None:
    """One legend for all panels, under them: each label once, none drawn over the curves."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    ncol = max(1, min(len(entries), len({ax.get_subplotspec().colspan.start for ax in axes})))  # one a column
    fig.legend(
        list(entries.values()), list(entries), loc="upper center", bbox_to_anchor=(0.5, 0.0),
        ncol=ncol, fontsize=8, frameon=False,
    )


def doge_tested(runs: pd.DataFrame) -> pd.DataFrame:
    """The doge runs with test numbers and a lambda: what Fig. 3 can draw."""
    return runs[(runs["method"] == "doge") & runs["test_mean"].notna() & runs["lambda"].notna()]


def lambda_data(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, target_sparsity, lambda) of the doge runs: test mean ± std over seeds."""
    doge = doge_tested(runs)
    rows = []
    for (ds, ts, lam), g in doge.groupby(["dataset", "target_sparsity", "lambda"], sort=True):
        mean, std = _agg(g["test_mean"])
        rows.append(
            {
                "dataset": ds,
                "target_sparsity": float(ts),
                "lambda": float(lam),
                "n_seeds": int(g["seed"].nunique()),
                "test_mean": mean,
                "test_std": std,
            }
        )
    return pd.DataFrame(
        rows, columns=["dataset", "target_sparsity", "lambda", "n_seeds", "test_mean", "test_std"]
    )


def lambda_swept(runs: pd.DataFrame) -> list[str]:
    """The datasets whose doge runs trained more than one lambda for the same seed and sparsity
    (tickets.lambda_choice = "rewind"). Under "preview" each seed and sparsity trains only the lambda chosen
    on dev, so the chosen lambdas of different sparsities or seeds are no curve over lambda."""
    doge = doge_tested(runs)
    return [str(ds) for ds, g in doge.groupby("dataset", sort=False)
            if g.groupby(["seed", "target_sparsity"])["lambda"].nunique().max() > 1]


def plot_lambda(runs: pd.DataFrame, out: Path) -> Path | None:
    """lambda.png + lambda.csv for the datasets that trained several lambdas per seed and sparsity
    (`lambda_swept`); None (no file) if there is none."""
    data = lambda_data(runs)
    keep = lambda_swept(runs)
    if not keep:
        return None
    data = data[data["dataset"].isin(keep)].reset_index(drop=True)
    fig, axes = _panels(len(keep), 5.5, 4)
    for ax, ds in zip(axes, keep, strict=True):
        d = data[data["dataset"] == ds]
        lams = sorted(d["lambda"].unique())
        pos = {lam: i for i, lam in enumerate(lams)}  # evenly spaced: lambda = 0 has no log position
        for ts, g in d.groupby("target_sparsity", sort=True):
            g = g.sort_values("lambda")
            x = np.array([pos[v] for v in g["lambda"]])
            y, s = 100 * g["test_mean"].to_numpy(), 100 * g["test_std"].fillna(0).to_numpy()
            ax.errorbar(x, y, yerr=s, marker="o", capsize=3, label=f"sparsity {100 * ts:.0f}%")
        ax.set_xticks(range(len(lams)), [f"{v:g}" for v in lams])
        ax.set_xlabel("λ (variance coefficient)")
        ax.set_ylabel("OOD test mean (%)")
        ax.set_title(f"doge tickets, {ds}")
        ax.grid(alpha=0.3)
    _legend_below(fig, axes)
    return _save(fig, Path(out) / "lambda.png", data)


def unit_scores(scores: dict[str, Any]) -> pd.DataFrame:
    """One row per unit (every head, then the FFN block, per layer) with each domain's normalized score."""
    try:
        domains = list(scores["domains"])
        L, H = int(scores["num_layers"]), int(scores["num_heads"])
        per = scores["per_domain"]
        heads = {d: np.asarray(per[d]["heads"], dtype=float).reshape(L, H) for d in domains}
        ffn = {d: np.asarray(per[d]["ffn"], dtype=float).reshape(L) for d in domains}
    except (KeyError, TypeError, ValueError) as exc:
        raise DogeError(
            f"scores.json: expected domains, num_layers, num_heads, per_domain heads/ffn ({exc})"
        ) from exc
    if not domains:
        raise DogeError("scores.json: no domains")
    rows = []
    for layer in range(L):
        for h in range(H + 1):
            vals = [heads[d][layer, h] if h < H else ffn[d][layer] for d in domains]
            rows.append(
                {
                    "layer": layer,
                    "unit": f"head{h}" if h < H else "ffn",
                    "kind": "head" if h < H else "ffn",
                    "index": h if h < H else 0,
                    **{f"score:{d}": v for d, v in zip(domains, vals, strict=True)},
                    "mean": float(np.mean(vals)),
                    "variance": float(np.var(vals)),  # over domains, as the domain-general score's V
                }
            )
    return pd.DataFrame(rows)


def classify_units(units: pd.DataFrame) -> pd.DataFrame:
    """Add `class`: HM/LM = mean above / not above the median over units; HV/LV likewise for variance."""
    hm = units["mean"] > units["mean"].median()
    hv = units["variance"] > units["variance"].median()
    cls = np.where(hm, "HM", "LM").astype(object) + np.where(hv, "HV", "LV").astype(object)
    return units.assign(**{"class": cls})


def plot_scores(scores: dict[str, Any], out: Path) -> tuple[Path, dict[str, int]]:
    """scores.png (+ scores.csv) and scores_classes.csv; returns the png and the class counts."""
    units = classify_units(unit_scores(scores))
    domains = list(scores["domains"])
    L, H = int(scores["num_layers"]), int(scores["num_heads"])
    counts = {c: int((units["class"] == c).sum()) for c in CLASSES}
    cmap = plt.get_cmap("tab10" if len(domains) <= 10 else "tab20")
    colors = [cmap(i % cmap.N) for i in range(len(domains))]
    vmax = float(units["mean"].max())
    fig, ax = plt.subplots(figsize=(0.6 * (H + 1) + 2.5, 0.6 * L + 1.2))
    for rec in units.to_dict("records"):
        x, y = int(rec["index"]) if rec["kind"] == "head" else H, L - 1 - int(rec["layer"])
        vals = np.clip(np.array([rec[f"score:{d}"] for d in domains], dtype=float), 0, None)
        r = 0.45 * (rec["mean"] / vmax) if vmax > 0 else 0.0
        if r <= 0 or vals.sum() <= 0:
            ax.plot(x, y, marker=".", color="lightgray", markersize=2)
            continue
        ax.pie(
            vals,
            colors=colors,
            center=(x, y),
            radius=max(r, 0.02),
            frame=True,
            wedgeprops={"linewidth": 0.3, "edgecolor": "white"},
        )
    ax.set_xlim(-0.6, H + 0.6)
    ax.set_ylim(-0.6, L - 0.4)
    ax.set_aspect("equal")
    ax.axvline(H - 0.5, color="lightgray", linewidth=0.8)
    ax.set_xticks(range(H + 1), [str(h) for h in range(H)] + ["FFN"], fontsize=8)
    ax.set_yticks(range(L), [str(L - 1 - i) for i in range(L)], fontsize=8)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    handles = [Patch(color=c, label=d) for c, d in zip(colors, domains, strict=True)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, title="domain")
    ax.set_title("Expressive scores across domains\n(radius ∝ mean, slices = domain shares)", fontsize=10)
    out = Path(out)
    png = _save(fig, out / "scores.png", units.drop(columns="class"))
    atomic_write_text(out / "scores_classes.csv", units.to_csv(index=False))
    return png, counts


def plot_pilot(counts: dict[str, np.ndarray], out: Path) -> Path:
    """Pilot-study bars: counts[domain] is (layers, neurons) activation frequencies in [0, 1] of the first
    FFN neurons at [CLS]. One panel per layer, grouped bars per domain. `out` is the .png path or a folder
    (then pilot.png); pilot.csv (layer, neuron, domain, frequency) is written next to it."""
    if not counts:
        raise DogeError("plot_pilot: no domains")
    arrays = {d: np.asarray(v, dtype=float) for d, v in counts.items()}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise DogeError(
            f"plot_pilot: every domain needs the same (layers, neurons) array, got {sorted(shapes)}"
        )
    L, N = next(iter(shapes))
    out = Path(out)
    png = out if out.suffix == ".png" else out / "pilot.png"
    domains = list(arrays)
    rows = [
        {"layer": layer, "neuron": n, "domain": d, "frequency": float(arrays[d][layer, n])}
        for layer in range(L)
        for n in range(N)
        for d in domains
    ]
    fig, axes = plt.subplots(L, 1, figsize=(max(8, 0.3 * N), 1.6 * L + 0.6), squeeze=False, sharex=True)
    width = 0.8 / len(domains)
    x = np.arange(N)
    for layer in range(L):
        ax = axes[layer, 0]
        for k, d in enumerate(domains):
            ax.bar(x + (k - (len(domains) - 1) / 2) * width, arrays[d][layer], width=width, label=d)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"layer {layer}", fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    axes[-1, 0].set_xlabel("FFN neuron ([CLS])")
    axes[-1, 0].set_xticks(x, [str(i) for i in range(N)], fontsize=6)
    fig.suptitle("Activation frequency per domain")
    fig.tight_layout()
    fig.legend(handles, labels, fontsize=7, ncol=len(domains), loc="upper right")
    return _save(fig, png, pd.DataFrame(rows, columns=["layer", "neuron", "domain", "frequency"]))


def plot_convergence(curves: pd.DataFrame, png: Path) -> Path:
    """ERM's dev score per evaluation (x: epoch), one panel per dataset, one line per seed; the kept
    checkpoint ringed (report.training.convergence gives `curves`; written beside as CSV)."""
    datasets = list(dict.fromkeys(curves["dataset"]))
    fig, axes = _panels(len(datasets), 3.4, 3.0, max_cols=3)
    for ax, name in zip(axes, datasets, strict=True):
        sub = curves[curves["dataset"] == name]
        for seed, g in sub.groupby("seed", sort=True):
            line = ax.plot(g["epoch"], 100 * g["dev"], marker="o", markersize=3, label=f"seed {seed}")[0]
            kept = g[g["kept"]]
            ax.scatter(kept["epoch"], 100 * kept["dev"], s=70, facecolors="none", edgecolors=line.get_color())
        ax.set_title(str(name), fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_xticks(sorted(set(sub["epoch"])))
        ax.grid(alpha=0.3)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("in-domain dev score (%)")
    _legend_below(fig, axes)
    fig.suptitle("ERM: dev score per epoch (ringed: the checkpoint kept)", fontsize=11)
    return _save(fig, png, curves)


def plot_preview(rows: pd.DataFrame, png: Path, metric: str = "accuracy") -> Path:
    """preview.png (+ preview.csv, the rows: one per seed x method (x lambda) x target sparsity).

    Left, what to read: in-domain dev score vs target sparsity; right, apart: the OOD test mean (only when
    the preview evaluated the test domains: `doge preview --test`)."""

    rows = rows.assign(label=[registry.with_lambda(m, lam)
                              for m, lam in zip(rows["method"], rows["lambda"], strict=True)])
    unit = "F1" if metric == "entity_f1" else "accuracy"
    n_seeds = int(rows["seed"].nunique())
    panels = (("dev_score", f"in-domain dev {unit} (%)", "Dev: read and choose on this"),
              ("test_mean", f"OOD test mean {unit} (%)", "Test (shown apart, never used to choose)"))
    panels = panels if "test_mean" in rows.columns else panels[:1]
    fig, axes = _panels(len(panels), 5.5, 4)
    style = {}  # doge at several lambdas: one colour, one line style per lambda
    for _, g in rows.groupby("method", sort=False):
        style |= {label: ("-", "--", ":", "-.")[i % 4] for i, label in enumerate(dict.fromkeys(g["label"]))}
    for ax, (column, ylabel, title) in zip(axes, panels, strict=True):
        for k, (label, g) in enumerate(rows.groupby("label", sort=False)):
            method = str(g["method"].iloc[0])
            agg = g.groupby("target_sparsity", sort=True)[column].agg(["mean", "std"]).fillna(0)
            x = 100 * agg.index.to_numpy(float)
            y, s = 100 * agg["mean"].to_numpy(), 100 * agg["std"].to_numpy()
            color = registry.color(method, f"C{k}")
            ax.plot(x, y, marker="o", markersize=3, color=color, linestyle=style[label], label=label)
            if n_seeds > 1:
                ax.fill_between(x, y - s, y + s, color=color, alpha=0.15, linewidth=0)
        ax.set_xlabel("target sparsity (%)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    _legend_below(fig, axes)
    if len(axes) > 1:
        axes[1].set_facecolor("#f6f6f6")
    seeds = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    fig.suptitle(f"Preview: the fine-tuned model with each method's units removed, no retraining ({seeds})")
    return _save(fig, png, rows.drop(columns="label"))

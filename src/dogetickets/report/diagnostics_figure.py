"""The diagnostics figure (matplotlib, Agg, PNG at 150 dpi): Jaccard with the winning ticket vs target
sparsity, and every unit's mean vs variance across training domains. Drawn from the tables of
``report.diagnostics`` (``ticket_overlap``, ``unit_table``); reads no run directory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dogetickets import methods
from dogetickets.io import atomic_replace, atomic_write_text
from dogetickets.report.diagnostics import curve_label

__all__ = ["DPI", "plot_diagnostics"]

DPI = 150


def _overlap_panel(ax: Any, overlap: pd.DataFrame) -> Any:
    """Jaccard vs target sparsity per method (x lambda x allocation): mean over seeds, bars min-max. Returns
    the legend (placed under the panel)."""
    from dogetickets.report.figures import nested  # pyplot: loaded only to draw

    show_alloc = overlap["allocation"].nunique() > 1
    groups = overlap.assign(_l=overlap["lambda"].fillna(-math.inf)).groupby(
        ["method", "_l", "allocation"], sort=False)
    markers = "osD^vP*X"
    seen: dict[str, int] = {}
    ordered = sorted(groups, key=lambda kv: (methods.order_key(kv[0][0]), kv[0][1], kv[0][2]))
    for k, ((method, _, alloc), g) in enumerate(ordered):
        lam = float(g["lambda"].iloc[0])
        i = seen.setdefault(method, 0)
        seen[method] += 1
        agg = g.groupby("target_sparsity")["jaccard"].agg(["mean", "min", "max"]).sort_index()
        x = 100 * agg.index.to_numpy(float)
        y = agg["mean"].to_numpy()
        err = np.vstack([y - agg["min"].to_numpy(), agg["max"].to_numpy() - y])
        marker = methods.marker(method) if i == 0 else markers[i % len(markers)]  # a method's first: its own
        ax.errorbar(x, y, yerr=err, marker=marker, capsize=3, color=methods.color(method),
                    linestyle=methods.linestyle(method) if methods.get(method).ranking != "random" else ":",
                    label=curve_label(method, lam, alloc, show_alloc), **nested(k))
    ax.set_xlabel("target sparsity (%)")
    ax.set_ylabel("Jaccard with the winning ticket (pruned units)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Overlap with winning tickets (mean, min-max over seeds)")
    ax.grid(alpha=0.3)
    return _legend_under(ax)


def _legend_under(ax: Any) -> Any:
    """The panel's legend under it, off the data (the saved canvas grows to hold it); returned for savefig."""
    below = ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    below.set_in_layout(False)
    return below


def _units_panel(ax: Any, units: pd.DataFrame) -> Any:
    """Mean vs variance across domains of every unit of the first seed, coloured by who prunes it. Returns
    the legend (placed under the panel: a corner of a scatter is no emptier than its middle)."""
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
                 fontsize=10)
    ax.grid(alpha=0.3)
    return _legend_under(ax)


def plot_diagnostics(overlap: pd.DataFrame, units: pd.DataFrame, out_png: Path | str) -> Path | None:
    """Draw `out_png` from ``diagnostics.ticket_overlap`` and ``diagnostics.unit_table``: Jaccard with the
    winning ticket vs target sparsity per method (mean over seeds, bars from the lowest to the highest seed),
    and the mean vs variance across training domains of every unit of the first scored seed (heads o, FFN
    blocks ^), coloured by which of the highlighted pair prunes it. Writes both tables next to it as
    ``<stem>-overlap.csv`` and ``<stem>-units.csv``. None (nothing written) when both are empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        extra.append(_overlap_panel(axes.pop(0), overlap))
    if not units.empty:
        extra.append(_units_panel(axes.pop(0), units))
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight", bbox_extra_artists=extra)
    plt.close(fig)
    atomic_replace(tmp, out_png)
    return out_png

"""The report's diagnostics on hand-made run directories (tickets and scores.json written here)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dogetickets import scoring
from dogetickets.report import diagnostics, diagnostics_section
from dogetickets.report.diagnostics_figure import plot_diagnostics
from dogetickets.report.document import Document
from dogetickets.tickets import Ticket


def _ticket(path: Path, method: str, target: float, heads: dict[int, list[int]], ffn: list[int], *,
            lam: float | None = None, allocation: str = "global", layers: int = 2, n_heads: int = 4) -> None:
    Ticket(method, target, target, {str(k): v for k, v in heads.items()}, ffn, layers, n_heads, lam=lam,
           allocation=allocation).save(path)


def _scores(path: Path, heads: dict[str, list], ffn: dict[str, list], sampling_var: dict | None = None,
            lambdas: tuple[float, ...] = ()) -> None:
    doms = list(heads)
    h = np.array([heads[d] for d in doms], dtype=float)
    f = np.array([ffn[d] for d in doms], dtype=float)
    raw = {
        "domains": doms,
        "num_layers": h.shape[1],
        "num_heads": h.shape[2],
        "counts": {d: 10 for d in doms},
        "per_domain": {d: {"heads": heads[d], "ffn": ffn[d]} for d in doms},
        "combined": {
            "winning": {"heads": h.mean(0).tolist(), "ffn": f.mean(0).tolist()},
            **{f"doge-l{lam:g}": {"lambda": lam, "heads": (h.mean(0) - lam * h.var(0)).tolist(),
                                  "ffn": (f.mean(0) - lam * f.var(0)).tolist()} for lam in lambdas},
        },
    }
    if sampling_var is not None:
        raw["per_domain_sampling_var"] = sampling_var
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw))


# --------------------------------------------------------------------------------------------- overlap


def test_jaccard_sets() -> None:
    assert diagnostics.jaccard({1, 2}, {1, 2}) == 1.0
    assert diagnostics.jaccard({1}, {2}) == 0.0
    assert diagnostics.jaccard({1, 2, 3}, {2, 3, 4}) == pytest.approx(0.5)
    assert diagnostics.jaccard(set(), set()) == 1.0


def test_ticket_overlap_hand_made(tmp_path: Path) -> None:
    t = tmp_path / "run" / "seed3" / "tickets"
    t.mkdir(parents=True)
    # file names say nothing: the fields decide
    _ticket(t / "a.json", "winning", 0.1, {0: [0, 1], 1: [2]}, [1])
    _ticket(t / "b.json", "doge", 0.1, {0: [0, 1], 1: [2]}, [1], lam=0.5)  # identical -> 1
    _ticket(t / "c.json", "doge-worst", 0.1, {0: [1], 1: [0, 2]}, [0])  # {0/1, 1/2} shared of 6 -> 1/3
    _ticket(t / "d.json", "winning", 0.2, {0: [0, 1, 2]}, [])
    _ticket(t / "e.json", "doge", 0.2, {1: [0, 1]}, [0, 1], lam=0.5)  # disjoint -> 0
    _ticket(t / "f.json", "random", 0.2, {0: [0], 1: [3]}, [])  # chance row: 1 shared of 4
    # a balanced doge ticket is compared with the balanced winning ticket, not the global one
    _ticket(t / "g.json", "winning-balanced", 0.1, {0: [3]}, [0], allocation="balanced")
    _ticket(t / "h.json", "doge-balanced", 0.1, {0: [3]}, [1], allocation="balanced")  # 1 of 3
    # no winning ticket at this sparsity: left out; unknown method: left out
    _ticket(t / "i.json", "doge", 0.3, {0: [0]}, [], lam=0.5)
    _ticket(t / "j.json", "magic", 0.1, {0: [0]}, [])
    df = diagnostics.ticket_overlap(tmp_path / "run")
    assert list(df.columns) == diagnostics.OVERLAP_COLUMNS
    assert len(df) == 5
    got = {(r.method, r.target_sparsity, r.allocation): r for r in df.itertuples()}
    same = got[("doge", 0.1, "global")]
    assert same.jaccard == 1.0 and same.seed == 3
    assert df.loc[(df["method"] == "doge") & (df["target_sparsity"] == 0.1), "lambda"].item() == 0.5
    assert (same.heads_a, same.ffn_a, same.heads_winning, same.ffn_winning) == (3, 1, 3, 1)
    assert got[("doge-worst", 0.1, "global")].jaccard == pytest.approx(1 / 3)
    assert math.isnan(df.loc[df["method"] == "doge-worst", "lambda"].item())
    disjoint = got[("doge", 0.2, "global")]
    assert disjoint.jaccard == 0.0
    assert (disjoint.heads_a, disjoint.ffn_a, disjoint.heads_winning, disjoint.ffn_winning) == (2, 2, 3, 0)
    assert got[("random", 0.2, "global")].jaccard == pytest.approx(1 / 4)
    assert got[("doge-balanced", 0.1, "balanced")].jaccard == pytest.approx(1 / 3)
    summary = diagnostics_section.overlap_summary(df)
    assert list(summary.columns) == ["method", "seeds", "10%", "20%"]
    assert len(summary) == len(df.groupby(["method", "lambda", "allocation"], dropna=False))


def test_ticket_overlap_nothing(tmp_path: Path) -> None:
    assert diagnostics.ticket_overlap(tmp_path).empty
    assert diagnostics.ticket_overlap(tmp_path / "missing").empty
    assert diagnostics_section.overlap_summary(diagnostics.ticket_overlap(tmp_path)).empty


# ------------------------------------------------------------------------------------ rank correlation


def _rank_run(tmp_path: Path) -> Path:
    # one layer, four heads, one FFN block: units (h0, h1, h2, h3, ffn0)
    _scores(
        tmp_path / "run" / "seed0" / "scores" / "scores.json",
        heads={"A": [[1, 2, 3, 4]], "B": [[2, 1, 4, 3]], "C": [[1, 2, 3, 4]]},
        ffn={"A": [5], "B": [5], "C": [5]},
    )
    return tmp_path / "run"


def test_domain_rank_correlation_known_answer(tmp_path: Path) -> None:
    df = diagnostics.domain_rank_correlation(_rank_run(tmp_path))
    assert list(df.columns) == diagnostics.RANKCORR_COLUMNS
    pair = {(r.domain_a, r.domain_b): r for r in df.itertuples()}
    assert set(pair) == {("A", "B"), ("A", "C"), ("B", "C")}
    # A = 1 2 3 4 5, B = 2 1 4 3 5: sum d^2 = 4 -> 1 - 6 * 4 / (5 * 24) = 0.8; heads only 1 - 24 / 60 = 0.6
    assert pair[("A", "B")].spearman_all == pytest.approx(0.8)
    assert pair[("A", "B")].spearman_heads == pytest.approx(0.6)
    assert pair[("A", "C")].spearman_all == pytest.approx(1.0)
    assert math.isnan(pair[("A", "B")].spearman_ffn)  # a single FFN block has no ranking
    assert (df["n_units"] == 5).all()


def test_spearman_without_scipy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(diagnostics, "_spearmanr", None)
    assert diagnostics.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert diagnostics.spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties: average ranks
    df = diagnostics.domain_rank_correlation(_rank_run(tmp_path))
    assert df.loc[(df.domain_a == "A") & (df.domain_b == "B"), "spearman_heads"].item() == pytest.approx(0.6)
    assert math.isnan(diagnostics.spearman([1, 1, 1], [1, 2, 3]))


# ------------------------------------------------------------------------------------- variance scale


def _variance_run(tmp_path: Path, with_sampling_var: bool = True) -> Path:
    # one layer, two heads, one FFN block; two domains.
    # means: 1, 2, 5; population variances: 1, 1, 0
    # sampling variances (same in both domains): 1, 3, 4 -> expected noise (D-1)/D * v = 0.5, 1.5, 2
    # -> corrected: 0.5, 0 (floored: 1 - 1.5 < 0), 0 (floored: 0 - 2 < 0); noise share 0.5 and 1.5 -> mean 1
    sv = {d: {"heads": [[1.0, 3.0]], "ffn": [4.0]} for d in ("A", "B")} if with_sampling_var else None
    _scores(
        tmp_path / "run" / "seed0" / "scores" / "scores.json",
        heads={"A": [[0.0, 1.0]], "B": [[2.0, 3.0]]},
        ffn={"A": [5.0], "B": [5.0]},
        sampling_var=sv,
        lambdas=(2.0,),
    )
    return tmp_path / "run"


def test_corrected_variance_floored() -> None:
    values = np.array([[0.0, 1.0, 5.0], [2.0, 3.0, 5.0]])
    sv = np.array([[1.0, 3.0, 4.0], [1.0, 3.0, 4.0]])
    got = diagnostics.corrected_variance(values, sv)
    np.testing.assert_allclose(got, [0.5, 0.0, 0.0])
    assert (got >= 0).all()
    if hasattr(scoring, "between_domain_var"):  # the variance doge-nc ranks by
        np.testing.assert_allclose(got, scoring.between_domain_var(values, sv))


def test_variance_scale_hand_made(tmp_path: Path) -> None:
    run = _variance_run(tmp_path)
    assert diagnostics.run_lambdas(run) == [2.0]
    df = diagnostics.variance_scale(run, [0.0, 2.0])
    assert list(df.columns) == diagnostics.VARIANCE_COLUMNS
    zero, two = df.iloc[0], df.iloc[1]
    assert zero["spearman_mean"] == pytest.approx(1.0)  # no penalty: the same ranking
    assert zero["nc_spearman_mean"] == pytest.approx(1.0)
    assert zero["pen_median"] == 0.0 and zero["pen_p90"] == 0.0
    spread = np.std([1.0, 2.0, 5.0])
    assert two["mean_std"] == pytest.approx(spread)
    assert two["pen_median"] == pytest.approx(2.0)  # 2 * median(1, 1, 0)
    assert two["pen_p90"] == pytest.approx(2.0)
    assert two["median_ratio"] == pytest.approx(2.0 / spread)
    # mean 1, 2, 5 minus 2, 2, 0 -> -1, 0, 5: the order is unchanged
    assert two["spearman_mean"] == pytest.approx(1.0)
    # corrected penalty 2 * (0.5, 0, 0): median 0, 90th percentile 0.8 (linear interpolation)
    assert two["nc_pen_median"] == pytest.approx(0.0)
    assert two["nc_pen_p90"] == pytest.approx(0.8)
    assert two["noise_share"] == pytest.approx(1.0)
    assert two["noise_share_median"] == pytest.approx(1.0)


def test_variance_scale_reorders_and_old_scores(tmp_path: Path) -> None:
    df = diagnostics.variance_scale(_variance_run(tmp_path, with_sampling_var=False), [0.0, 10.0])
    assert df["spearman_mean"].iloc[0] == pytest.approx(1.0)
    assert df[[c for c in df.columns if c.startswith(("nc_", "noise"))]].isna().all().all()
    # means 1, 2, 3 and variances 0, 0, 4: at lambda 1 the doge scores are 1, 2, -1, so the top unit drops
    # to the bottom: ranks (2, 3, 1) vs (1, 2, 3), d = (1, 1, -2), rho = 1 - 6 * 6 / (3 * 8) = -0.5
    _scores(
        tmp_path / "run2" / "seed0" / "scores" / "scores.json",
        heads={"A": [[1.0, 2.0]], "B": [[1.0, 2.0]]},
        ffn={"A": [1.0], "B": [5.0]},
    )
    df2 = diagnostics.variance_scale(tmp_path / "run2", [1.0])
    assert df2["spearman_mean"].iloc[0] == pytest.approx(-0.5)
    assert df2["spearman_winning"].iloc[0] == pytest.approx(-0.5)  # pooled = mean in these scores
    assert diagnostics.variance_scale(tmp_path / "nothing", [1.0]).empty


# ------------------------------------------------------------------------------------------ the section


def _full_run(root: Path) -> Path:
    run = root / "amazon"
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        heads = {d: rng.random((2, 4)).tolist() for d in ("A", "B", "C")}
        ffn = {d: rng.random(2).tolist() for d in ("A", "B", "C")}
        sv = {d: {"heads": (0.01 * rng.random((2, 4))).tolist(), "ffn": (0.01 * rng.random(2)).tolist()}
              for d in ("A", "B", "C")}
        _scores(run / f"seed{seed}" / "scores" / "scores.json", heads, ffn, sv, lambdas=(1.0,))
        t = run / f"seed{seed}" / "tickets"
        t.mkdir(parents=True)
        for target in (0.1, 0.3):
            _ticket(t / f"w{target}.json", "winning", target, {0: [0, 1]}, [1] if target > 0.2 else [])
            _ticket(t / f"d{target}.json", "doge", target, {0: [1], 1: [2]}, [1] if target > 0.2 else [], lam=1.0)
            _ticket(t / f"n{target}.json", "doge-nc", target, {1: [0, 3]}, [0], lam=1.0)
            _ticket(t / f"r{target}.json", "random", target, {0: [3], 1: [1]}, [])
    pd.DataFrame(
        {
            "seed": [0, 0, 0, 0],
            "method": ["winning", "doge", "winning", "doge"],
            "lambda": [math.nan, 1.0, math.nan, 1.0],
            "target_sparsity": [0.1, 0.1, 0.3, 0.3],
            "sparsity": [0.1, 0.1, 0.3, 0.3],
            "dev_score": [0.8, 0.82, 0.7, 0.65],
            "test_mean": [0.7, 0.7, 0.6, 0.6],
        }
    ).to_csv(run / "preview.csv", index=False)
    return run


def test_section_writes_figure_and_csvs(tmp_path: Path) -> None:
    run = _full_run(tmp_path)
    out = tmp_path / "report"
    doc = Document()
    diagnostics_section.section(doc, ["mnli/amazon"], [run], out)
    stem = "diagnostics-mnli_amazon"
    for suffix in ("overlap", "rankcorr", "variance", "units", "preview_gap"):
        assert (out / f"{stem}-{suffix}.csv").is_file(), suffix
    png = out / f"{stem}.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kinds = [k for k, _ in doc.blocks]
    assert doc.blocks[0] == ("h", (2, "Diagnostics"))
    assert ("img", (png, "diagnostics mnli/amazon")) in doc.blocks
    assert kinds.count("table") >= 3
    overlap = pd.read_csv(out / f"{stem}-overlap.csv")
    assert set(overlap["method"]) == {"doge", "doge-nc", "random"} and set(overlap["seed"]) == {0, 1}
    variance = pd.read_csv(out / f"{stem}-variance.csv")
    assert list(variance["lambda"]) == [1.0, 1.0] and variance["nc_spearman_mean"].notna().all()
    units = pd.read_csv(out / f"{stem}-units.csv")
    assert len(units) == 2 * (2 * 4 + 2)
    assert set(units["pruned"]) <= {"both", "winning only", "doge only", "neither"}
    gap = pd.read_csv(out / f"{stem}-preview_gap.csv")
    assert gap["dev_gap"].to_numpy() == pytest.approx([0.02, -0.05])
    md = doc.markdown()
    assert f"![diagnostics mnli/amazon]({stem}.png)" in md
    assert "<img" in doc.html("t")


def test_overlap_legend_sits_under_its_panel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _full_run(tmp_path)
    import matplotlib.pyplot as plt

    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    png = plot_diagnostics(diagnostics.ticket_overlap(run), diagnostics.unit_table(run), tmp_path / "d.png")
    assert png is not None
    overlap = closed[0].get_axes()[0]
    legend = overlap.get_legend()
    assert {t.get_text() for t in legend.get_texts()} >= {"random tickets"}
    closed[0].canvas.draw()
    assert legend.get_window_extent().y1 <= overlap.get_window_extent().y0  # off the curves


def test_overlap_curves_that_coincide_both_stay_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """doge-nc with doge's very tickets has doge's Jaccard curve: drawn inside it (thinner), not over it."""
    run = _full_run(tmp_path)
    import matplotlib.pyplot as plt

    overlap = diagnostics.ticket_overlap(run)
    doge = overlap[overlap["method"] == "doge"]
    assert not doge.empty
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    same = pd.concat([overlap[overlap["method"] != "doge-nc"], doge.assign(method="doge-nc")])
    plot_diagnostics(same, diagnostics.unit_table(run),
                     tmp_path / "d.png")
    lines = [c.lines[0] for c in closed[0].get_axes()[0].containers]  # each curve's data line (no caps)
    pairs = [(a, b) for i, a in enumerate(lines) for b in lines[i + 1:]
             if list(a.get_ydata()) == list(b.get_ydata()) and list(a.get_xdata()) == list(b.get_xdata())]
    assert pairs and all(b.get_linewidth() < a.get_linewidth() and b.get_markersize() < a.get_markersize()
                         for a, b in pairs)
    assert len({line.get_marker() for line in lines}) == len(lines)  # random, doge, doge-nc: their own markers

def test_section_without_data(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "seed0").mkdir(parents=True)
    out = tmp_path / "report"
    doc = Document()
    diagnostics_section.section(doc, ["empty", "gone"], [empty, tmp_path / "gone"], out)
    paragraphs = [x for k, x in doc.blocks if k == "p"]
    assert sum("nothing to diagnose" in p or "No tickets" in p for p in paragraphs) == 2
    assert not any(k in ("img", "table") for k, _ in doc.blocks)
    assert list(out.iterdir()) == []
    assert plot_diagnostics(diagnostics.ticket_overlap(empty), diagnostics.unit_table(empty), out / "x.png") is None
    doc = Document()
    diagnostics_section.section(doc, [], [], out)
    assert doc.blocks[0] == ("h", (2, "Diagnostics")) and doc.blocks[-1][0] == "p"


def test_section_scores_without_tickets(tmp_path: Path) -> None:
    run = _variance_run(tmp_path)  # scores, no tickets, no preview
    doc = Document()
    diagnostics_section.section(doc, ["run"], [run], tmp_path / "out")
    text = " ".join(str(x) for _, x in doc.blocks)
    assert "No ticket has a winning ticket" in text
    assert (tmp_path / "out" / "diagnostics-run.png").is_file()
    assert (tmp_path / "out" / "diagnostics-run-variance.csv").is_file()

"""The report's sections on the paired comparisons: the answer (doge - ERM and doge - winning in one table),
the paired bootstrap (bootstrap.csv), the summary of the dev-selected differences and the power of the
design. The pairs come from the method registry (``methods.comparisons``, ``methods.winning_for``) and the
bootstrap (``report.stats``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats as sps

from dogetickets import methods
from dogetickets.io import atomic_write_text
from dogetickets.report.collect import metric_label
from dogetickets.report.document import Document
from dogetickets.report.select import with_test
from dogetickets.report.stats import ALL_DATASETS, BOOTSTRAP_METHOD, bootstrap_table
from dogetickets.report.tables import p_is, p_value, percent

__all__ = ["HEADLINE", "answer", "bootstrap", "compute", "pairs", "power", "seed_diffs", "summary"]

HEADLINE = "doge"  # the paper's method: its registry comparisons are summarized even without a bootstrap row
_POOLED = ("ci_low", "ci_high", "p_value", "ex_ci_low", "ex_ci_high", "ex_p_value", "n_seeds", "mdd")


def pairs(sel: pd.DataFrame, boot: pd.DataFrame) -> list[tuple[str, str]]:
    """(a, b) pairs to summarize: the bootstrap's own, then the headline method's registry comparisons (doge vs
    ERM and vs the winning tickets of its allocation), then every other ticket method present vs ERM
    (registry order)."""
    present = set(sel["method"])
    found: list[tuple[str, str]] = []
    for c in dict.fromkeys(boot["comparison"]):
        a, sep, b = str(c).partition(" - ")
        if sep:
            found.append((a, b))
    others = sorted(
        (m for m in present if m != HEADLINE and methods.is_known(m) and methods.get(m).is_ticket),
        key=methods.order_key,
    )
    headline = [(a, b) for a, b in methods.comparisons(present) if a == HEADLINE]
    for pair in [*headline, *((m, "erm") for m in others)]:
        if pair[0] in present and pair[1] in present and pair not in found:
            found.append(pair)
    return found


def seed_diffs(dataset: str, a: str, b: str, chosen: pd.DataFrame, boot: pd.DataFrame
               ) -> tuple[list[float], dict[str, float]]:
    """Per-seed test-mean differences a - b of the dev-selected runs, and the pooled bootstrap row (two-level
    and test-set-noise-only intervals) when the bootstrap has this comparison. From the bootstrap's
    per-seed rows when present, else from the chosen runs' test means (seeds where both have one)."""
    rows = boot[(boot["dataset"] == dataset) & (boot["comparison"] == f"{a} - {b}")]
    per = rows[rows["seed"].astype(str) != "mean"]
    mean_row = rows[rows["seed"].astype(str) == "mean"]
    pooled = {k: float(mean_row[k].iloc[0]) for k in _POOLED} if len(mean_row) else {}
    if not per.empty:
        return [float(d) for d in per["diff"] if not math.isnan(float(d))], pooled
    sub = chosen[chosen["dataset"] == dataset]
    ta = sub[sub["method"] == a].set_index("seed")["test_mean"]
    tb = sub[sub["method"] == b].set_index("seed")["test_mean"]
    seeds = sorted(set(ta.index) & set(tb.index))
    diffs = [float(ta[s]) - float(tb[s]) for s in seeds]
    return [d for d in diffs if not math.isnan(d)], pooled


# ---------------------------------------------------------------------------------------- the sentences


def _ahead(diffs: list[float]) -> str:
    n, k, tied = len(diffs), sum(d > 0 for d in diffs), sum(d == 0 for d in diffs)
    return f"{k} of {n} seed{'s' if n != 1 else ''} ahead" + (f", {tied} tied" if tied else "")


def _interval(lo: float, hi: float) -> str:
    return f"[{percent(lo, True)}, {percent(hi, True)}]"


def _ci(pooled: dict[str, float]) -> str:
    """'; two-level 95% CI [lo, hi], p = x; test-set noise only [lo, hi], p = y' (the latter alone with one
    seed), or '' without a bootstrap row."""
    if not pooled:
        return ""
    noise = (f"test-set noise only {_interval(pooled['ex_ci_low'], pooled['ex_ci_high'])}, "
             f"{p_is(pooled['ex_p_value'])}")
    if math.isnan(pooled["ci_low"]):
        return f"; one seed: {noise}"
    null = (f"; not significant, and this design detects only about {percent(pooled['mdd'])} points or more "
            "(80% power)" if pooled["p_value"] >= 0.05 and not math.isnan(pooled["mdd"]) else "")
    return (f"; two-level 95% CI {_interval(pooled['ci_low'], pooled['ci_high'])}, {p_is(pooled['p_value'])}; "
            + noise + null)


def _per_seed(diffs: list[float]) -> str:
    return ": " + ", ".join(percent(d, True) for d in diffs) if 1 < len(diffs) <= 10 else ""


# ------------------------------------------------------------------------------------- paired bootstrap


def _bootstrap_shown(boot: pd.DataFrame) -> pd.DataFrame:
    def iv(lo: str, hi: str) -> list[str]:
        return ["" if math.isnan(a) else _interval(a, b) for a, b in zip(boot[lo], boot[hi], strict=True)]

    return pd.DataFrame(
        {
            "dataset": boot["dataset"],
            "comparison": boot["comparison"],
            "seed": boot["seed"],
            "A (%)": boot["a"].map(percent),
            "B (%)": boot["b"].map(percent),
            "A - B": boot["diff"].map(lambda x: percent(x, True)),
            "two-level 95% CI": iv("ci_low", "ci_high"),
            "p": boot["p_value"].map(p_value),
            "test-set noise only 95% CI": iv("ex_ci_low", "ex_ci_high"),
            "p (test-set noise only)": boot["ex_p_value"].map(p_value),
            "t over seeds 95% CI": iv("t_ci_low", "t_ci_high"),
            "p (t)": boot["t_p_value"].map(p_value),
            "examples": boot["n_examples"],
        }
    )


def compute(sel: pd.DataFrame, out: Path, n_boot: int, seed: int) -> pd.DataFrame:
    """The paired bootstrap of the dev-selected runs `sel` (``stats.bootstrap_table``), written to
    bootstrap.csv in `out`; every section on the comparisons reads it."""
    boot = bootstrap_table(sel, n_boot=n_boot, seed=seed)
    atomic_write_text(out / "bootstrap.csv", boot.to_csv(index=False))
    return boot


def bootstrap(doc: Document, boot: pd.DataFrame, n_boot: int, seed: int) -> None:
    """The paired bootstrap's section: its method and every row of `boot` (from :func:`compute`)."""
    doc.h(2, "Paired bootstrap")
    doc.p(BOOTSTRAP_METHOD.format(n_boot=n_boot, seed=seed))
    if boot.empty:
        doc.p("No comparison could be bootstrapped (missing methods or test predictions).")
    else:
        doc.p(
            "Columns: 'two-level' is the headline interval (seeds and test examples); 'test-set noise only' "
            "(the only one a single seed's row has) resamples the test examples with the seeds fixed; 't over "
            "seeds' is the t-interval over the per-seed differences (each seed's own row lists its "
            "difference). Points; bootstrap.csv has every number."
        )
        doc.table(_bootstrap_shown(boot))


# ------------------------------------------------------------------------------------ the answer, up front


def _answer_cells(diffs: list[float], mean: float, pooled: dict[str, float], overall: bool) -> list[str]:
    """(difference with its interval and p, the seeds, the detectable difference) of one comparison."""
    if not pooled:
        cell = percent(mean, True)
    elif math.isnan(pooled["ci_low"]):
        cell = (f"{percent(mean, True)} {_interval(pooled['ex_ci_low'], pooled['ex_ci_high'])}, "
                f"{p_is(pooled['ex_p_value'])} (one seed: test-set noise only)")
    else:
        ci = _interval(pooled["ci_low"], pooled["ci_high"])
        cell = f"{percent(mean, True)} {ci}, {p_is(pooled['p_value'])}"
    seeds = _ahead(diffs) if overall or len(diffs) > 10 else ", ".join(percent(d, True) for d in diffs)
    mdd = pooled.get("mdd", math.nan)
    return [cell, seeds, "" if math.isnan(mdd) else percent(mdd)]


def answer(doc: Document, names: list[str], sel: pd.DataFrame, runs: pd.DataFrame, boot: pd.DataFrame) -> None:
    """The paper's claims in one table: doge tickets minus ERM and minus winning tickets per dataset and over
    datasets, each with its two-level 95% CI and p, the per-seed differences and the smallest difference the
    design detects (80% power). Nothing new: the numbers of 'Summary', 'Paired bootstrap' and 'Power'."""
    chosen = with_test(sel, runs)
    compared = [(a, b) for a, b in methods.comparisons(set(sel["method"])) if methods.base(a) == HEADLINE]
    rows: dict[str, list[str]] = {}
    found: _Found = {}
    for name in names:
        cells = []
        for a, b in compared:
            diffs, pooled = seed_diffs(name, a, b, chosen, boot)
            if diffs:
                found.setdefault((a, b), []).append((sum(diffs) / len(diffs), diffs))
            cells += _answer_cells(diffs, sum(diffs) / len(diffs), pooled, False) if diffs else ["-", "", ""]
        rows[name] = cells
    if not any(found.values()):
        return
    if len(names) > 1:
        cells = []
        for a, b in compared:
            per = found.get((a, b), [])
            full = len(per) == len(names)
            _, pooled = seed_diffs(ALL_DATASETS, a, b, chosen, boot)
            mean = sum(m for m, _ in per) / len(per) if full else math.nan
            cells += (_answer_cells([d for _, ds in per for d in ds], mean, pooled, True) if full
                      else ["-", "", ""])
        rows["mean over datasets"] = cells
    columns = ["dataset"]
    for a, b in compared:
        c = f"{methods.label(a)} - {methods.label(b)}"
        columns += [f"{c} (points, two-level 95% CI, p)", f"{c}: per seed", f"{c}: detectable (80% power)"]
    against = " and ".join(dict.fromkeys(methods.label(methods.base(b)) for _, b in compared))
    doc.h(2, f"The answer: {methods.label(HEADLINE)} against {against}")
    doc.p("The paper's claims in one table, from the dev-selected runs: the mean test difference in points, its "
          "two-level 95% CI and p (seeds and test examples resampled; 'Paired bootstrap'), each seed's "
          "difference, and the smallest true difference this design detects with 80% power ('Power'). A "
          "difference not significant here says little about one smaller than that.")
    doc.table(pd.DataFrame([[n, *c] for n, c in rows.items()], columns=columns))


# -------------------------------------------------------------------------------------------- summary

_SUMMARY = (
    "Test mean of each method's dev-selected configuration minus the baseline's, in points (percentage "
    "points of the dataset's metric): the mean over seeds of the per-seed differences (listed after "
    "'ahead', which counts the seeds with a positive difference). The 95% CI and p are the two-level "
    "bootstrap's (seeds and test examples; see 'Paired bootstrap'); 'test-set noise only' resamples the "
    "test examples with the seeds fixed and is too narrow whenever the seeds differ by more than test noise. "
    "With few seeds their spread is known only roughly: with 3, the two-level interval pays for it with t "
    "quantiles (4.30 with 2 df), which a bootstrap over 3 seeds (10 distinct draws) cannot show."
)
_OVERALL = (
    " Overall: the mean over datasets of those means, with the two-level bootstrap of that mean (seeds "
    "resampled within each dataset, the test examples of all datasets at once) where the comparison was "
    "made on every dataset."
)

_Found = dict[tuple[str, str], list[tuple[float, list[float]]]]


def _dataset_lines(name: str, compared: list[tuple[str, str]], chosen: pd.DataFrame, boot: pd.DataFrame,
                   found: _Found) -> list[str]:
    """One dataset's summary lines; each comparison's mean and per-seed differences added to `found`."""
    lines = []
    for a, b in compared:
        diffs, pooled = seed_diffs(name, a, b, chosen, boot)
        if not diffs:
            continue
        mean = sum(diffs) / len(diffs)
        found.setdefault((a, b), []).append((mean, diffs))
        lines.append(
            f"{methods.label(a)} - {methods.label(b)}: {percent(mean, True)} points "
            f"({_ahead(diffs)}{_per_seed(diffs)}{_ci(pooled)})"
        )
    return lines


def _overall_lines(names: list[str], found: _Found, chosen: pd.DataFrame, boot: pd.DataFrame) -> list[str]:
    overall = []
    for (a, b), per in found.items():
        means = [m for m, _ in per]
        diffs = [d for _, ds in per for d in ds]
        where = f"{len(per)} datasets" if len(per) == len(names) else f"{len(per)} of {len(names)} datasets"
        _, pooled = seed_diffs(ALL_DATASETS, a, b, chosen, boot)
        overall.append(
            f"{methods.label(a)} - {methods.label(b)}: {percent(sum(means) / len(means), True)} points "
            f"(mean over {where}; {_ahead(diffs)}{_ci(pooled)})"
        )
    return overall


def summary(doc: Document, names: list[str], sel: pd.DataFrame, runs: pd.DataFrame, boot: pd.DataFrame) -> None:
    """Per dataset (and over datasets), each compared pair's mean test difference of the dev-selected runs."""
    doc.h(2, "Summary")
    chosen = with_test(sel, runs)
    compared = pairs(sel, boot)
    found: _Found = {}
    sections: list[tuple[str, list[str]]] = []
    for name in names:
        lines = _dataset_lines(name, compared, chosen, boot, found)
        if lines:
            metric = metric_label(str(runs.loc[runs["dataset"] == name, "metric"].iloc[0]))
            sections.append((f"{name} ({metric})", lines))
    if not sections:
        doc.p("No comparison has test numbers on both sides: nothing to summarize.")
        return
    doc.p(_SUMMARY + (_OVERALL if len(names) > 1 else ""))
    for title, lines in sections:
        doc.h(3, title)
        doc.items(lines)
    if len(names) > 1:
        doc.h(3, "Overall (mean over datasets)")
        doc.items(_overall_lines(names, found, chosen, boot))


# ---------------------------------------------------------------------------------------------- power


def _power_line(row: dict[str, Any]) -> str:
    """One comparison's power sentence from its pooled bootstrap row."""
    a, _, b = str(row["comparison"]).partition(" - ")
    seeds, n = int(round(float(row["n_seeds"]))), int(round(float(row["n_examples_per_split"])))
    per = " per dataset" if row["dataset"] == ALL_DATASETS else ""
    parts = ", ".join(
        f"{what} {1e4 * float(row[key]):.2g}"
        for what, key in (("seed effects", "var_seed"), ("test examples all seeds share", "var_shared"),
                          ("seed-specific test noise", "var_interaction"))
    )
    return (
        f"{row['dataset']}, {methods.label(a)} - {methods.label(b)}: detects {percent(float(row['mdd']))} points "
        f"with 80% power ({seeds} seeds, {n:,} test examples{per}); 1 point needs {row['for_1pt']}. Variance of "
        f"the mean difference, points^2: {parts}."
    )


def power(doc: Document, boot: pd.DataFrame) -> None:
    """Per pooled comparison: the smallest true difference the design detects, and what 1 point needs."""
    if boot.empty:
        return
    rows = boot[(boot["seed"].astype(str) == "mean") & boot["mdd"].notna()]
    if rows.empty:
        return
    doc.h(2, "Power")
    k = max(1, int(round(float(rows["n_seeds"].min()))) - 1)
    spread = sps.chi2.ppf(0.975, k) / sps.chi2.ppf(0.025, k)
    doc.p(
        "What each comparison could have seen: the smallest true difference the two-level test (alpha = 0.05, "
        "two-sided) detects with 80% power in this design, and the seeds (at the same test set) or test "
        "examples (at the same seeds) that would detect 1 point. From the variance of the mean difference, split "
        "into seed effects (the per-seed differences' variance less the test noise it holds, floored at 0), "
        "test-example effects every seed shares and seed-specific test noise, each scaled to the new design "
        "(report.stats.Design; bootstrap.csv: mdd, seeds_for_1pt, examples_for_1pt). A difference not "
        "significant here rules out little below that size. The parts are estimates: with "
        f"{k + 1} seeds the seed variance is known only within a factor of {spread:.0f} (its 95% chi-square "
        "range), so these numbers are a guide, not a guarantee."
    )
    doc.items([_power_line(row.to_dict()) for _, row in rows.iterrows()])

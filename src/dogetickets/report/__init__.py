"""Reports of finished runs: tables, paired bootstrap and figures. Reads run directories; never trains.

``write_report([run_dir, ...])`` writes report.md, a self-contained report.html, the CSVs (table2.csv,
runs.csv, bootstrap.csv, one per figure) and the figures, into the first run directory by default. Beside
the tables: a summary of the dev-selected differences, the wall time and machine of each run directory
(its timing.json, with the machine description under "machine") and the commands that reproduce it all.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["write_report"]

DEFAULT_TITLE = "Doge tickets report"


@dataclass
class _Doc:
    """A report as a list of blocks, rendered both to markdown and to self-contained HTML."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)
    md_dir: Path | None = None  # where the markdown file goes (image links are relative to it)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, lines: list[str]) -> None:
        self.blocks.append(("ul", lines))

    def table(self, df: Any) -> None:
        self.blocks.append(("table", df))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", (Path(path), alt)))

    def code(self, lines: list[str]) -> None:
        """Lines shown verbatim (a fenced block in markdown, <pre> in HTML)."""
        self.blocks.append(("code", list(lines)))

    def _link(self, path: Path) -> str:
        """The image's path relative to the markdown file (just its name without one)."""
        if self.md_dir is None:
            return Path(path).name
        return Path(os.path.relpath(Path(path).resolve(), Path(self.md_dir).resolve())).as_posix()

    def markdown(self) -> str:
        from dogetickets.report.tables import to_markdown

        out = []
        for kind, x in self.blocks:
            if kind == "h":
                out.append("#" * x[0] + " " + x[1] + "\n")
            elif kind == "p":
                out.append(x + "\n")
            elif kind == "ul":
                out.append("\n".join(f"- {line}" for line in x) + "\n")
            elif kind == "table":
                out.append(to_markdown(x))
            elif kind == "img":
                out.append(f"![{x[1]}]({self._link(x[0])})\n")
            elif kind == "code":
                text = "\n".join(x)
                fence = "`" * max(3, 1 + max((len(r) for r in re.findall("`+", text)), default=0))
                out.append(f"{fence}\n{text}\n{fence}\n")
        return "\n".join(out)

    def html(self, title: str) -> str:
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
            "th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}"
            "th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}</style>",
            "</head><body>",
        ]
        for kind, x in self.blocks:
            if kind == "h":
                parts.append(f"<h{x[0]}>{html.escape(x[1])}</h{x[0]}>")
            elif kind == "p":
                parts.append(f"<p>{html.escape(x)}</p>")
            elif kind == "ul":
                parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in x) + "</ul>")
            elif kind == "table":
                parts.append(x.to_html(index=False, escape=True, na_rep="", border=0))
            elif kind == "img":
                data = base64.b64encode(x[0].read_bytes()).decode("ascii")
                parts.append(f'<p><img alt="{html.escape(x[1])}" src="data:image/png;base64,{data}"></p>')
            elif kind == "code":
                parts.append("<pre><code>" + html.escape("\n".join(x)) + "</code></pre>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"


def _pct(x: float, signed: bool = False) -> str:
    """A fraction in %, one decimal; `signed` (differences, bounds): tables.points, which keeps the side of
    zero of a value that would round to 0.0 (-0.0002 -> "-0.02")."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if signed:
        from dogetickets.report.tables import points

        return points(x)
    text = f"{100 * x:.1f}"
    return "0.0" if text.lstrip("+-") == "0.0" else text


def _comparisons(sel: Any, boot: Any) -> list[tuple[str, str]]:
    """(a, b) pairs to summarize: the bootstrap's own, then doge vs ERM and vs winning, then every other
    ticket method present vs ERM (registry order)."""
    from dogetickets import methods

    present = set(sel["method"])
    pairs: list[tuple[str, str]] = []
    for c in dict.fromkeys(boot["comparison"]):
        a, sep, b = str(c).partition(" - ")
        if sep:
            pairs.append((a, b))
    others = sorted(
        (m for m in present if m != "doge" and methods.is_known(m) and methods.get(m).is_ticket),
        key=methods.order_key,
    )
    for pair in [("doge", "erm"), ("doge", "winning"), *((m, "erm") for m in others)]:
        if pair[0] in present and pair[1] in present and pair not in pairs:
            pairs.append(pair)
    return pairs


_POOLED = ("ci_low", "ci_high", "p_value", "ex_ci_low", "ex_ci_high", "ex_p_value", "n_seeds", "mdd")


def _seed_diffs(dataset: str, a: str, b: str, chosen: Any, boot: Any) -> tuple[list[float], dict[str, float]]:
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


def _ahead(diffs: list[float]) -> str:
    n, k, tied = len(diffs), sum(d > 0 for d in diffs), sum(d == 0 for d in diffs)
    return f"{k} of {n} seed{'s' if n != 1 else ''} ahead" + (f", {tied} tied" if tied else "")


def _interval(lo: float, hi: float) -> str:
    return f"[{_pct(lo, True)}, {_pct(hi, True)}]"


def _ci(pooled: dict[str, float]) -> str:
    """'; two-level 95% CI [lo, hi], p = x; test-set noise only [lo, hi], p = y' (the latter alone with one
    seed), or '' without a bootstrap row."""
    from dogetickets.report.tables import p_value

    if not pooled:
        return ""
    noise = (f"test-set noise only {_interval(pooled['ex_ci_low'], pooled['ex_ci_high'])}, "
             f"p = {p_value(pooled['ex_p_value'])}")
    if math.isnan(pooled["ci_low"]):
        return f"; one seed: {noise}"
    null = (f"; not significant, and this design detects only about {_pct(pooled['mdd'])} points or more (80% power)"
            if pooled["p_value"] >= 0.05 and not math.isnan(pooled["mdd"]) else "")
    return (f"; two-level 95% CI {_interval(pooled['ci_low'], pooled['ci_high'])}, p = {p_value(pooled['p_value'])}; "
            + noise + null)


def _per_seed(diffs: list[float]) -> str:
    return ": " + ", ".join(_pct(d, True) for d in diffs) if 1 < len(diffs) <= 10 else ""


def _summary(doc: _Doc, names: list[str], sel: Any, runs: Any, boot: Any) -> None:
    from dogetickets.methods import label
    from dogetickets.report.collect import metric_label
    from dogetickets.report.select import with_test
    from dogetickets.report.stats import ALL_DATASETS

    doc.h(2, "Summary")
    chosen = with_test(sel, runs)
    pairs = _comparisons(sel, boot)
    found: dict[tuple[str, str], list[tuple[float, list[float]]]] = {}
    sections: list[tuple[str, list[str]]] = []
    for name in names:
        lines = []
        for a, b in pairs:
            diffs, pooled = _seed_diffs(name, a, b, chosen, boot)
            if not diffs:
                continue
            mean = sum(diffs) / len(diffs)
            found.setdefault((a, b), []).append((mean, diffs))
            lines.append(
                f"{label(a)} - {label(b)}: {_pct(mean, True)} points ({_ahead(diffs)}{_per_seed(diffs)}{_ci(pooled)})"
            )
        if lines:
            metric = metric_label(str(runs.loc[runs["dataset"] == name, "metric"].iloc[0]))
            sections.append((f"{name} ({metric})", lines))
    if not sections:
        doc.p("No comparison has test numbers on both sides: nothing to summarize.")
        return
    doc.p(
        "Test mean of each method's dev-selected configuration minus the baseline's, in points (percentage "
        "points of the dataset's metric): the mean over seeds of the per-seed differences (listed after "
        "'ahead', which counts the seeds with a positive difference). The 95% CI and p are the two-level "
        "bootstrap's (seeds and test examples; see 'Paired bootstrap'); 'test-set noise only' resamples the "
        "test examples with the seeds fixed and is too narrow whenever the seeds differ by more than test noise. "
        "With few seeds their spread is known only roughly: with 3, the two-level interval pays for it with t "
        "quantiles (4.30 with 2 df), which a bootstrap over 3 seeds (10 distinct draws) cannot show."
        + (
            " Overall: the mean over datasets of those means, with the two-level bootstrap of that mean (seeds "
            "resampled within each dataset, the test examples of all datasets at once) where the comparison was "
            "made on every dataset."
            if len(names) > 1
            else ""
        )
    )
    for title, lines in sections:
        doc.h(3, title)
        doc.items(lines)
    if len(names) > 1:
        overall = []
        for (a, b), per in found.items():
            means = [m for m, _ in per]
            diffs = [d for _, ds in per for d in ds]
            where = f"{len(per)} datasets" if len(per) == len(names) else f"{len(per)} of {len(names)} datasets"
            _, pooled = _seed_diffs(ALL_DATASETS, a, b, chosen, boot)
            overall.append(
                f"{label(a)} - {label(b)}: {_pct(sum(means) / len(means), True)} points "
                f"(mean over {where}; {_ahead(diffs)}{_ci(pooled)})"
            )
        doc.h(3, "Overall (mean over datasets)")
        doc.items(overall)


def _bootstrap_shown(boot: Any) -> Any:
    import pandas as pd

    from dogetickets.report.tables import p_value

    def iv(lo: str, hi: str) -> list[str]:
        return ["" if math.isnan(a) else _interval(a, b) for a, b in zip(boot[lo], boot[hi], strict=True)]

    return pd.DataFrame(
        {
            "dataset": boot["dataset"],
            "comparison": boot["comparison"],
            "seed": boot["seed"],
            "A (%)": boot["a"].map(_pct),
            "B (%)": boot["b"].map(_pct),
            "A - B": boot["diff"].map(lambda x: _pct(x, True)),
            "two-level 95% CI": iv("ci_low", "ci_high"),
            "p": boot["p_value"].map(p_value),
            "test-set noise only 95% CI": iv("ex_ci_low", "ex_ci_high"),
            "p (test-set noise only)": boot["ex_p_value"].map(p_value),
            "t over seeds 95% CI": iv("t_ci_low", "t_ci_high"),
            "p (t)": boot["t_p_value"].map(p_value),
            "examples": boot["n_examples"],
        }
    )


def _power_line(row: dict[str, Any]) -> str:
    """One comparison's power sentence from its pooled bootstrap row."""
    from dogetickets.methods import label

    a, _, b = str(row["comparison"]).partition(" - ")
    seeds, n = int(round(float(row["n_seeds"]))), int(round(float(row["n_examples_per_split"])))
    from dogetickets.report.stats import ALL_DATASETS

    per = " per dataset" if row["dataset"] == ALL_DATASETS else ""
    parts = ", ".join(
        f"{what} {1e4 * float(row[key]):.2g}"
        for what, key in (("seed effects", "var_seed"), ("test examples all seeds share", "var_shared"),
                          ("seed-specific test noise", "var_interaction"))
    )
    return (
        f"{row['dataset']}, {label(a)} - {label(b)}: detects {_pct(float(row['mdd']))} points with 80% power "
        f"({seeds} seeds, {n:,} test examples{per}); 1 point needs {row['for_1pt']}. Variance of the mean "
        f"difference, points^2: {parts}."
    )


def _power(doc: _Doc, boot: Any) -> None:
    """Per pooled comparison: the smallest true difference the design detects, and what 1 point needs."""
    from scipy import stats as sps

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


def _paper(doc: _Doc, names: list[str], run_dirs: list[Path], runs: Any) -> None:
    """The paper's Table 2 beside our test-selected numbers (its protocol), for the datasets it has."""
    from dogetickets.report import paper, tables

    found = {n: paper.identify(d) for n, d in zip(names, run_dirs, strict=True)}
    known = {n: pd_ for n, pd_ in found.items() if pd_ is not None}
    doc.h(2, "The paper's Table 2 beside ours (optimistic protocol)")
    if not known:
        doc.p("None of these run directories is one of the paper's datasets (by the training and test domains of "
              "its config.toml): nothing to compare with the paper's Table 2.")
        return
    doc.p(
        "The paper reports each ticket at the sparsity with the best out-of-domain test score (its Table 2: 'the "
        "sparsity to achieve best out-of-domain generalization'), one number per cell, BERT-base, no seeds or "
        f"intervals. Ours under that protocol is the '{tables.ORACLE}' column: per seed, the configuration "
        "(sparsity, lambda) with the best test mean, then the mean over seeds. It is optimistic: choosing on "
        "test flatters every method with something to choose (tickets) against one without (ERM). Compare the "
        "paper's numbers with that column only; the dev-selected column is our result. Differences: of the "
        "means, in points."
    )
    doc.table(tables.paper_table(runs, known))
    notes = []
    for n, pd_ in known.items():
        diffs = paper.differences(run_dirs[names.index(n)], pd_)
        notes.append(f"{n} is the paper's {pd_.label}" + (f"; setup differs: {'; '.join(diffs)}" if diffs else ""))
    missing = [n for n, pd_ in found.items() if pd_ is None]
    if missing:
        notes.append(f"Not in the paper's Table 2: {', '.join(missing)} (domains match none of its datasets).")
    doc.items(notes)


def _allocations(doc: _Doc, runs: Any, out: Path) -> None:
    """The ticket allocations compared (report.allocations), where a method has runs under several."""
    from dogetickets.io import atomic_write_text
    from dogetickets.report import allocations

    cells = allocations.cells(runs)
    if cells.empty:
        return
    atomic_write_text(out / "allocations.csv", cells.to_csv(index=False))
    doc.h(2, "Ticket allocations compared")
    doc.p(
        "How the pruned parameters are split between heads and FFN blocks (tickets.allocation: global = one "
        "ranked list, a unit that would overshoot skipped; proportional = each kind loses the target share of "
        "its parameters; balanced = half from heads, half from FFN blocks). Each cell: the dev-best run of a "
        "method, target sparsity and seed (over lambdas), 'in-domain dev / unseen test mean', mean over "
        "seeds; 'all' averages the cells every allocation has (allocations.csv). Dev is what a choice of "
        "allocation may read; test is beside it."
    )
    doc.table(allocations.table(cells))
    lines = allocations.summary(cells)
    if lines:
        doc.items(lines)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds:.0f} s ({seconds / 3600:.2f} h)"
    if seconds >= 60:
        return f"{seconds:.0f} s ({seconds / 60:.1f} min)"
    return f"{seconds:.1f} s"


def _training(paths: list[str]) -> tuple[str, float]:
    """The summed training seconds recorded by these runs (as shown, and the number)."""
    if not paths:
        return "-", 0.0
    from dogetickets.io import read_json_or_none

    timings = [read_json_or_none(Path(p) / "timing.json") or {} for p in paths]
    secs = [t.get("seconds") for t in timings]
    known = [float(x) for x in secs if isinstance(x, (int, float))]
    if not known:
        return "not recorded", 0.0
    missing = len(paths) - len(known)
    twins = sum(bool(t.get("trained_as")) for t in timings)
    text = f"{_duration(sum(known))} in {len(known)} run{'s' if len(known) != 1 else ''}" + (
        f"; {missing} without timing" if missing else ""
    ) + (f"; {twins} of them took the training of a run with the same units (trained_as)" if twins else "")
    return text, sum(known)


def _processes_note(processes: list[dict[str, Any]]) -> str:
    """' in 3 processes (1 not ended: up to its last finished job)' after a directory's summed wall time."""
    cut = sum(p.get("ended") is False for p in processes)
    note = f" in {len(processes)} processes" if len(processes) > 1 else ""
    if cut:
        note += f" ({cut} not ended: up to {'its' if cut == 1 else 'their'} last finished job)"
    return note


def _wall_time(doc: _Doc, names: list[str], run_dirs: list[Path], runs: Any) -> None:
    import pandas as pd

    from dogetickets import machine, methods
    from dogetickets.io import read_json_or_none
    from dogetickets.results import precision_text, precisions
    from dogetickets.rundir import process_history

    doc.h(2, "Wall time and machine")
    doc.p(
        "From each run directory's timing.json. 'doge run total' is the wall time of the `doge run` processes "
        "that worked on the directory, summed (timing.json keeps one record per process, so a study resumed "
        "over several sittings counts every sitting; a process that was killed or is still running counts up "
        "to its last finished job; a directory written before those records counts only its last process, "
        "and baselines from an earlier `doge finetune` are not in it). 'outside the model': "
        "reading, tokenizing, batching and saving, within that total. Training columns: the seconds recorded "
        "by each reported run (training with its dev evaluations), summed; scoring and ticket choice are not "
        "timed apart (they are in the process total). 'trained in': the precision each reported run recorded "
        "(train.mixed_precision resolved) and why: the setting, $DOGE_AUTO_PRECISION, or the CPU feature that "
        "decided 'auto' (bf16 with avx512_bf16 or amx_bf16, else fp32); the machine's CPU features are listed below."
    )
    rows: list[dict[str, str]] = []
    machines: dict[str, tuple[dict, list[str]]] = {}
    unrecorded: list[str] = []
    commits: dict[str, list[str]] = {}
    earlier: list[str] = []  # more training recorded than the last process lasted
    for name, d in zip(names, run_dirs, strict=True):
        timing = read_json_or_none(d / "timing.json")
        timing = timing if isinstance(timing, dict) else {}
        total, outside = timing.get("total_seconds"), timing.get("outside_model_seconds")
        processes = [p for p in process_history(timing) if isinstance(p.get("total_seconds"), (int, float))]
        if processes:
            total = sum(float(p["total_seconds"]) for p in processes)
            outside = sum(float(p.get("outside_model_seconds") or 0.0) for p in processes)
        sub = runs[runs["dataset"] == name]
        ticket = sub["method"].map(lambda m: methods.is_known(m) and methods.get(m).is_ticket)
        base_text, base_s = _training(list(sub.loc[~ticket, "path"]))
        ticket_text, ticket_s = _training(list(sub.loc[ticket, "path"]))
        if isinstance(total, (int, float)) and base_s + ticket_s > total:
            earlier.append(name)
        trained = [read_json_or_none(Path(x) / "metrics.json") for x in sub["path"]]
        rows.append(
            {
                "run directory": name,
                "trained in": precision_text(precisions([m for m in trained if isinstance(m, dict)])),
                "doge run total": (
                    _duration(float(total)) + _processes_note(processes)
                    if isinstance(total, (int, float))
                    else "not recorded"
                ),
                "outside the model": (
                    f"{_duration(float(outside))} ({float(outside) / float(total) if total else 0.0:.1%})"
                    if isinstance(outside, (int, float)) and isinstance(total, (int, float))
                    else ""
                ),
                "baseline training": base_text,
                "ticket training": ticket_text,
            }
        )
        desc = timing.get("machine")
        if isinstance(desc, dict) and desc:
            desc = {k: v for k, v in desc.items() if k != "git"}  # the code: per process, below
            machines.setdefault(json.dumps(desc, sort_keys=True, default=str), (desc, []))[1].append(name)
        else:
            unrecorded.append(name)
        commits[name] = _commits(processes)
    doc.table(pd.DataFrame(rows))
    if earlier:
        doc.p(
            f"In {', '.join(earlier)}, the recorded training seconds exceed the recorded process total: not all "
            "of those runs were trained by the recorded processes, so the total is not the directory's whole cost."
        )
    for i, (desc, used) in enumerate(machines.values(), 1):
        which = "all run directories" if len(used) == len(names) else ", ".join(used)
        doc.p(f"Machine{f' {i}' if len(machines) > 1 else ''} ({which}):")
        doc.items(machine.lines(desc))
    if unrecorded:
        doc.p(f"Machine not recorded: {', '.join(unrecorded)}.")
    if any(commits.values()):
        doc.p("The code (git commit; '+dirty': uncommitted changes to the package's source) each directory's "
              "processes ran, oldest first:")
        doc.items([f"{name}: {', '.join(c) if c else 'not recorded'}" for name, c in commits.items()])


def _commits(processes: list[dict[str, Any]]) -> list[str]:
    """The distinct git commits of a directory's `doge run` processes, oldest first (each record's, as
    `rundir.process_history` reads them)."""
    found = [p.get("git") for p in processes] or [None]
    unknown = sum(not c for c in found)
    known = list(dict.fromkeys(str(c) for c in found if c))
    return ([f"{unknown} process{'es' if unknown > 1 else ''} not recorded"] if unknown and known else []) + known


def _recorded_command(run_dir: Path) -> str | None:
    """`doge run` of the original config, when the run directory's timing.json records its path
    ("config_path") or the command itself ("command": a string or an argument list)."""
    from dogetickets.io import read_json_or_none

    timing = read_json_or_none(run_dir / "timing.json")
    if not isinstance(timing, dict):
        return None
    cmd = timing.get("command")
    if isinstance(cmd, str) and cmd.strip():
        return cmd.strip()
    if isinstance(cmd, list) and cmd and all(isinstance(x, str) for x in cmd):
        return shlex.join(cmd)
    cfg = timing.get("config_path")
    if isinstance(cfg, str) and cfg.strip():
        return shlex.join(["doge", "run", cfg.strip(), "--out", str(run_dir)])
    return None


def _reproduce(
    doc: _Doc, run_dirs: list[Path], out: Path | None, n_boot: int, seed: int, title: str,
    commands: list[str] | None, seeds: list[int] | None = None,
) -> None:
    doc.h(2, "Reproduce")
    if commands:
        doc.code(commands)
        return
    doc.p(
        "Each run directory's config.toml is the exact resolved config of its runs (data.dir as recorded there, "
        "or --data-dir / $DOGE_DATA_DIR); `doge run` skips the stages a directory has already finished with the "
        "same settings."
    )
    lines = [_recorded_command(d) or shlex.join(["doge", "run", str(d / "config.toml"), "--out", str(d)])
             for d in run_dirs]
    report = ["doge", "report", *(str(d) for d in run_dirs)]
    if out is not None:
        report += ["--out", str(out)]
    report += ["--n-boot", str(n_boot), "--seed", str(seed)]
    for k in seeds or []:
        report += ["--seeds", str(k)]
    if title != DEFAULT_TITLE:
        report += ["--title", title]
    doc.code([*lines, shlex.join(report)])


def write_report(
    run_dirs: list[Path],
    out: Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    title: str = DEFAULT_TITLE,
    commands: list[str] | None = None,
    seeds: list[int] | None = None,
) -> Path:
    """Write report.md, report.html, CSVs and figures for the given run directories (one per dataset).

    `out` defaults to the first run directory; an `out` ending in .md is the report file itself, its
    figures and CSVs then go into the folder of the same stem (docs/study.md -> docs/study/). `title` is
    the report's heading and HTML title. `commands`,
    when given, are shown verbatim as the commands that reproduce the report; otherwise they are generated
    (`doge run` of each directory's config.toml, or of the original config when timing.json records it, and
    this `doge report`). `seeds`: report only these seeds (e.g. those a running study has finished; every
    table, figure and diagnostic reads only them; the wall time stays the directories' whole). Returns the
    path of report.md. A DogeError (one line) when a directory is missing or has no finished run.
    """
    from dogetickets.report.collect import only_seeds

    with only_seeds(seeds):
        return _write_report(run_dirs, out, n_boot, seed, title, commands, seeds)


def _write_report(
    run_dirs: list[Path],
    out: Path | None,
    n_boot: int,
    seed: int,
    title: str,
    commands: list[str] | None,
    seeds: list[int] | None,
) -> Path:
    import pandas as pd

    from dogetickets.errors import DogeError
    from dogetickets.io import atomic_write_text
    from dogetickets.report import figures, tables
    from dogetickets.report.collect import dataset_names, load_all, load_scores, metric_label
    from dogetickets.report.select import SELECTION_RULE, select_dev
    from dogetickets.report.stats import BOOTSTRAP_METHOD, bootstrap_table

    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise DogeError("no run directory given")
    out_arg = out
    out = Path(out) if out is not None else run_dirs[0]
    md = out / "report.md"
    if out.suffix == ".md":  # docs/study.md: the report there, its figures and CSVs in docs/study/
        md, out = out, out.with_suffix("")
    out.mkdir(parents=True, exist_ok=True)
    runs = load_all(run_dirs)
    names = dataset_names(run_dirs)

    doc = _Doc(md_dir=md.parent)
    doc.h(1, title)
    inputs = []
    for name, d in zip(names, run_dirs, strict=True):
        sub = runs[runs["dataset"] == name]
        per = ", ".join(f"{m} {n}" for m, n in sub.groupby("method", sort=False).size().items())
        metric = metric_label(str(sub["metric"].iloc[0]))
        inputs.append(
            f"{name} ({metric}): {d} — {len(sub)} finished runs ({per}); seeds {sorted(set(sub['seed']))}"
        )
    doc.items(inputs)
    if seeds is not None:
        doc.p(f"Seeds reported: {', '.join(map(str, sorted(set(seeds))))} (`--seeds`); the other seeds' runs are "
              "left out of every table, figure and diagnostic, not of the wall time (the directories' whole).")
    if runs["test_mean"].isna().all():
        doc.p("No run has test numbers: test columns, figures over test and the bootstrap are empty.")

    doc.h(2, "Selection rule")
    doc.p(SELECTION_RULE)

    tables.write_tables(runs, out)
    t2 = tables.table2(runs)
    doc.h(2, "Table 2: main comparison (OOD test mean, %)")
    doc.table(t2)
    doc.p(
        "Cells: mean ± sample std over seeds of the dev-selected configuration (std omitted with one seed); "
        "the first row names each dataset's metric. Average score = mean over datasets; Average sparsity = "
        f"mean achieved sparsity of the dev-selected tickets. Columns marked '{tables.ORACLE}' pick the best "
        "test configuration instead: an upper bound that peeks at test, not a result."
    )
    _paper(doc, names, run_dirs, runs)

    from dogetickets import methods as registry

    sel = select_dev(runs)
    order = {m: i for i, m in enumerate(registry.ordered(sel["method"]))}
    sel = sel.assign(_o=sel["method"].map(order))
    sel = sel.sort_values(["dataset", "_o", "seed"], kind="mergesort").drop(columns="_o")
    chosen = pd.DataFrame(
        {
            "dataset": sel["dataset"],
            "method": sel["method"],
            "seed": sel["seed"],
            "run": sel["name"],
            "sparsity": sel["sparsity"].map(_pct),
            "lambda": sel["lambda"].map(lambda x: "" if math.isnan(x) else f"{x:g}"),
            "dev score": sel["dev_score"].map(_pct),
        }
    )
    doc.h(2, "Dev-selected configurations")
    doc.table(chosen)

    boot = bootstrap_table(sel, n_boot=n_boot, seed=seed)
    atomic_write_text(out / "bootstrap.csv", boot.to_csv(index=False))
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

    _summary(doc, names, sel, runs, boot)
    _power(doc, boot)
    _allocations(doc, runs, out)
    _wall_time(doc, names, run_dirs, runs)
    _reproduce(doc, run_dirs, out_arg, n_boot, seed, title, commands, seeds)

    doc.h(2, "Figures")
    png = figures.plot_transitions(runs, out)
    doc.h(3, "Transitions with sparsity (Fig. 5)")
    if png:
        doc.p(
            "OOD test mean vs target sparsity, mean line and ±std band over seeds; ERM (and IRM) as "
            "horizontal lines. Doge uses, at each sparsity and seed, the lambda chosen on dev."
        )
        doc.image(png, "transitions")
    else:
        doc.p("Not drawn: no run has test numbers.")
    doc.h(3, "Doge tickets vs lambda (Fig. 3)")
    png = figures.plot_lambda(runs, out)
    if png:
        doc.p("OOD test mean vs lambda, one line per sparsity (mean ± std over seeds); evenly spaced λ axis.")
        doc.image(png, "lambda")
    else:
        doc.p("Skipped: only one lambda (or no doge run with test numbers), so lambda.png is not written.")
    doc.h(3, "Expressive scores across domains (Fig. 4)")
    scored = [(n, d, load_scores(d)) for n, d in zip(names, run_dirs, strict=True)]
    scored = [(n, d, s) for n, d, s in scored if s is not None]
    if scored:
        name, _, (sseed, scores) = scored[0]
        png, counts = figures.plot_scores(scores, out)
        doc.p(
            f"{name}, seed {sseed}: one pie per head / FFN block, radius ∝ mean normalized expressive score "
            "over training domains, slices = each domain's share. Units split at the medians "
            "(over all units) of the mean and of the variance across domains (scores_classes.csv):"
        )
        doc.items([f"{c}: {counts[c]}" for c in figures.CLASSES])
        doc.image(png, "scores")
    else:
        doc.p("No seed*/scores/scores.json found: scores.png not drawn.")
    if (out / "pilot.png").is_file():
        doc.h(3, "Pilot study (Fig. 1/6)")
        doc.p(
            "Activation frequency of the first FFN neurons at [CLS], per layer, grouped by domain "
            "(pilot.csv)."
        )
        doc.image(out / "pilot.png", "pilot")
    previews = [(n, d) for n, d in zip(names, run_dirs, strict=True) if (d / "preview.csv").is_file()]
    if previews:
        doc.h(3, "Preview (no retraining)")
        doc.p(
            "`doge preview`: the fine-tuned ERM model evaluated with each method's units masked (no rewinding, "
            "no retraining) over a dense sparsity grid, one line per method (doge: per lambda). The in-domain "
            "dev score is the one to read and choose by; the OOD test mean is shown apart, in its own panel, "
            "and never used to choose (numbers: preview.csv)."
        )
        for name, d in previews:
            png = d / "preview.png"
            if d.resolve() != out.resolve() or not png.is_file():  # drawn again from its CSV, into `out`
                stem = "preview" if d.resolve() == out.resolve() else f"preview-{name.replace('/', '_')}"
                metric = str(runs.loc[runs["dataset"] == name, "metric"].iloc[0])
                png = figures.plot_preview(pd.read_csv(d / "preview.csv"), out / f"{stem}.png", metric=metric)
            doc.image(png, f"preview {name}")

    from dogetickets.report import diagnostics

    diagnostics.section(doc, names, run_dirs, out)

    doc.h(2, "All runs")
    doc.p("Every finished run; scores and sparsities in %. 'dev_selected' marks the reported configurations.")
    doc.table(tables.runs_display(runs))

    atomic_write_text(md, doc.markdown())
    atomic_write_text(md.with_suffix(".html"), doc.html(title))
    return md

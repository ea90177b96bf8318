"""The report package on hand-made run directories with known answers."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dogetickets import methods
from dogetickets.errors import DogeError
from dogetickets.report import write_report
from dogetickets.report.collect import load_all, load_runs
from dogetickets.report.figures import plot_lambda, plot_pilot, plot_scores, plot_transitions
from dogetickets.report.select import select_dev, select_oracle
from dogetickets.report.stats import (
    ALL_DATASETS,
    bootstrap_over_datasets,
    bootstrap_table,
    example_stats,
    metric_from_sums,
    paired_bootstrap,
)
from dogetickets.report.tables import p_is, p_value, points, summarize, table2

TEST_DOMAINS = ("Software", "Movies")
DEV_DOMAINS = ("All_Beauty", "Automotive")
N_TEST = 20

# name -> (target sparsity, lambda) ; per seed: name -> (dev score, #correct in Software, #correct in Movies)
CONFIGS = {
    "erm": (0.0, None),
    "random-s10": (0.1, None),
    "random-s30": (0.3, None),
    "winning-s10": (0.1, None),
    "winning-s30": (0.3, None),
    "doge-s10-l10": (0.1, 10.0),
    "doge-s10-l100": (0.1, 100.0),
    "doge-s30-l10": (0.3, 10.0),
    "doge-s30-l100": (0.3, 100.0),
}
RESULTS = {
    0: {
        "erm": (0.60, 12, 14),
        "random-s10": (0.58, 15, 15),  # test-best random
        "random-s30": (0.62, 11, 13),  # dev-best random
        "winning-s10": (0.66, 12, 12),  # dev-best winning
        "winning-s30": (0.64, 16, 14),  # test-best winning
        "doge-s10-l10": (0.65, 18, 18),  # test-best doge
        "doge-s10-l100": (0.68, 14, 16),
        "doge-s30-l10": (0.66, 15, 15),
        "doge-s30-l100": (0.70, 16, 15),  # dev-best doge
    },
    1: {
        "erm": (0.61, 14, 13),
        "random-s10": (0.57, 16, 15),
        "random-s30": (0.63, 12, 12),
        "winning-s10": (0.67, 13, 12),
        "winning-s30": (0.62, 17, 15),
        "doge-s10-l10": (0.64, 19, 18),
        "doge-s10-l100": (0.69, 15, 16),
        "doge-s30-l10": (0.65, 15, 14),
        "doge-s30-l100": (0.71, 17, 16),
    },
}
DEV_BEST = {"erm": "erm", "random": "random-s30", "winning": "winning-s10", "doge": "doge-s30-l100"}
TEST_BEST = {"erm": "erm", "random": "random-s10", "winning": "winning-s30", "doge": "doge-s10-l10"}


def expected_mean(seed: int, name: str) -> float:
    _, k1, k2 = RESULTS[seed][name]
    return (k1 / N_TEST + k2 / N_TEST) / 2


def _gold(i: int) -> int:
    return i % 3


def write_run(
    folder: Path, seed: int, name: str, dev: float, correct: tuple[int, ...], done: bool = True
) -> None:
    ts, lam = CONFIGS.get(name, (0.5, 100.0))
    method = name.split("-")[0]
    folder.mkdir(parents=True, exist_ok=True)
    per = {d: k / N_TEST for d, k in zip(TEST_DOMAINS, correct, strict=True)}
    metrics = {
        "run": {
            "name": name,
            "method": method,
            "objective": "erm",
            "seed": seed,
            "target_sparsity": ts,
            "sparsity": round(ts * 0.987, 4),
            "lambda": lam,
        },
        "metric": "accuracy",
        "dev": {"score": dev, "per_domain": {d: dev for d in DEV_DOMAINS}},
        "test": {"per_domain": per, "mean": sum(per.values()) / len(per), "worst": min(per.values())},
        "train": {"steps": 10, "best_step": 5, "seconds": 1.0},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    lines = []
    for d in DEV_DOMAINS:
        for i in range(5):
            lines.append({"split": "dev", "domain": d, "index": i, "gold": _gold(i), "pred": 0})
    for d, k in zip(TEST_DOMAINS, correct, strict=True):
        for i in range(N_TEST):
            pred = _gold(i) if i < k else (_gold(i) + 1) % 3
            lines.append({"split": "test", "domain": d, "index": i, "gold": _gold(i), "pred": pred})
    (folder / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if done:
        (folder / "DONE").write_text("")


# 2 layers x 3 heads (+ FFN), 3 domains; unit order: L0 h0 h1 h2 ffn, L1 h0 h1 h2 ffn.
UNIT_SCORES = [
    (0.9, 0.9, 0.9),  # HMLV
    (0.1, 0.1, 0.1),  # LMLV
    (1.0, 0.2, 0.6),  # HMHV
    (0.5, 0.0, 0.1),  # LMHV
    (0.8, 0.8, 0.7),  # HMLV
    (0.2, 0.15, 0.2),  # LMLV
    (0.9, 0.3, 0.6),  # HMHV
    (0.6, 0.0, 0.0),  # LMHV
]
UNIT_CLASSES = ["HMLV", "LMLV", "HMHV", "LMHV", "HMLV", "LMLV", "HMHV", "LMHV"]


def scores_json() -> dict:
    domains = ["A", "B", "C"]
    per = {}
    for k, d in enumerate(domains):
        heads = [[UNIT_SCORES[layer * 4 + h][k] for h in range(3)] for layer in range(2)]
        ffn = [UNIT_SCORES[layer * 4 + 3][k] for layer in range(2)]
        per[d] = {"heads": heads, "ffn": ffn}
    return {"domains": domains, "num_layers": 2, "num_heads": 3, "per_domain": per, "combined": {}}


def make_run_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text(f'[run]\nout = "{root}"\n')
    for seed, runs in RESULTS.items():
        sdir = root / f"seed{seed}"
        for name, (dev, k1, k2) in runs.items():
            folder = sdir / "erm" if name == "erm" else sdir / "rewind" / name
            write_run(folder, seed, name, dev, (k1, k2))
        # An unfinished run with the best dev score of all: it must be ignored.
        write_run(sdir / "rewind" / "doge-s50-l100", seed, "doge-s50-l100", 0.99, (20, 20), done=False)
        (sdir / "scores").mkdir(parents=True, exist_ok=True)
        (sdir / "scores" / "scores.json").write_text(json.dumps(scores_json()))
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("runs") / "amazonA")


@pytest.fixture(scope="module")
def runs(run_dir: Path) -> pd.DataFrame:
    return load_runs(run_dir)


@pytest.fixture(scope="module")
def report(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report([run_dir], out=tmp_path_factory.mktemp("report"), n_boot=500, seed=0)


def test_collect_one_row_per_finished_run(runs: pd.DataFrame) -> None:
    assert len(runs) == 2 * len(CONFIGS)
    assert "doge-s50-l100" not in set(runs["name"])
    assert set(runs["method"]) == {"erm", "random", "winning", "doge"}
    row = runs[(runs["seed"] == 1) & (runs["name"] == "doge-s10-l100")].iloc[0]
    assert row["lambda"] == 100.0 and row["target_sparsity"] == 0.1 and row["dev_score"] == 0.69
    assert row["test_mean"] == pytest.approx(expected_mean(1, "doge-s10-l100"))
    assert row["test:Software"] == pytest.approx(15 / 20) and row["test_worst"] == pytest.approx(15 / 20)
    assert math.isnan(runs[runs["method"] == "erm"]["lambda"].iloc[0])


def test_collect_errors(tmp_path: Path) -> None:
    (tmp_path / "empty" / "seed0" / "erm").mkdir(parents=True)
    with pytest.raises(DogeError, match="no finished runs"):
        load_runs(tmp_path / "empty")
    with pytest.raises(DogeError):
        load_runs(tmp_path / "missing")


def test_dev_selection_picks_dev_best_not_test_best(runs: pd.DataFrame) -> None:
    sel = select_dev(runs)
    assert not any(c.startswith("test") for c in sel.columns)
    for seed in RESULTS:
        for method, name in DEV_BEST.items():
            assert sel[(sel.seed == seed) & (sel.method == method)]["name"].item() == name
    orc = select_oracle(runs)
    for seed in RESULTS:
        for method, name in TEST_BEST.items():
            assert orc[(orc.seed == seed) & (orc.method == method)]["name"].item() == name


def test_selection_without_test_key(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "notest"
    shutil.copytree(run_dir, copy)
    for path in copy.glob("seed*/**/metrics.json"):
        m = json.loads(path.read_text())
        del m["test"]
        path.write_text(json.dumps(m))
    runs = load_runs(copy)
    assert runs["test_mean"].isna().all()
    sel = select_dev(runs)
    for seed in RESULTS:
        for method, name in DEV_BEST.items():
            assert sel[(sel.seed == seed) & (sel.method == method)]["name"].item() == name
    md = write_report([copy], n_boot=50)  # still reports (tables with '-', bootstrap from predictions)
    assert md.is_file() and "Selection rule" in md.read_text()
    assert not (copy / "transitions.png").exists()


def test_selection_ties_go_to_lowest_sparsity() -> None:
    df = pd.DataFrame(
        {
            "dataset": "x",
            "seed": 0,
            "method": "doge",
            "name": ["b", "a", "c"],
            "target_sparsity": [0.3, 0.1, 0.5],
            "sparsity": [0.3, 0.1, 0.5],
            "lambda": [10.0, 10.0, 10.0],
            "dev_score": [0.7, 0.7, 0.6],
            "test_mean": [0.1, 0.2, 0.9],
        }
    )
    assert select_dev(df)["name"].item() == "a"
    assert select_oracle(df)["name"].item() == "c"


def test_table2_aggregation_and_oracle_column(runs: pd.DataFrame) -> None:
    summ = summarize(runs)
    for method in DEV_BEST:
        for selection, best in (("dev", DEV_BEST), ("oracle", TEST_BEST)):
            vals = [expected_mean(s, best[method]) for s in RESULTS]
            row = summ[(summ.method == method) & (summ.selection == selection)].iloc[0]
            assert row.test_mean == pytest.approx(statistics.mean(vals))
            assert row.test_std == pytest.approx(statistics.stdev(vals))
    t2 = table2(runs).set_index("Model")
    assert t2.loc["", "amazonA"] == "Acc"
    vals = [expected_mean(s, "doge-s30-l100") for s in RESULTS]  # 0.775, 0.825
    assert (
        t2.loc["doge tickets", "amazonA"]
        == f"{100 * statistics.mean(vals):.1f} ± {100 * statistics.stdev(vals):.1f}"
    )
    assert t2.loc["doge tickets", "amazonA"] == "80.0 ± 3.5"
    oracle = [expected_mean(s, "doge-s10-l10") for s in RESULTS]  # 0.9, 0.925
    ocol = "oracle (test-selected)"
    assert t2.loc["doge tickets", ocol].startswith(f"{100 * statistics.mean(oracle):.1f}"[:3])
    assert float(t2.loc["doge tickets", ocol].split(" ± ")[0]) == pytest.approx(91.25, abs=0.051)
    assert t2.loc["doge tickets", "Average score"] == "80.0"
    assert t2.loc["doge tickets", "Average sparsity"] == f"{100 * 0.3 * 0.987:.1f}%"
    assert t2.loc["ERM (fine-tuning)", "Average sparsity"] == "0.0%"
    assert list(t2.index[1:]) == ["ERM (fine-tuning)", "random tickets", "winning tickets", "doge tickets"]


def test_table2_single_seed_omits_std(runs: pd.DataFrame) -> None:
    t2 = table2(runs[runs.seed == 0]).set_index("Model")
    assert t2.loc["doge tickets", "amazonA"] == "77.5"


def test_bootstrap_difference_is_exact_and_in_ci(runs: pd.DataFrame) -> None:
    boot = bootstrap_table(select_dev(runs), n_boot=1000, seed=0)
    assert set(boot["comparison"]) == {"doge - erm", "doge - winning"}
    for base in ("erm", "winning"):
        per_seed = [expected_mean(s, DEV_BEST["doge"]) - expected_mean(s, DEV_BEST[base]) for s in RESULTS]
        rows = boot[boot.comparison == f"doge - {base}"].set_index("seed")
        for s in RESULTS:
            assert rows.loc[str(s), "diff"] == pytest.approx(per_seed[s])
        pooled = rows.loc["mean"]
        assert pooled["diff"] == pytest.approx(statistics.mean(per_seed))
        assert pooled["ci_low"] <= pooled["diff"] <= pooled["ci_high"]
    # Seeded: the same call gives the same numbers.
    again = bootstrap_table(select_dev(runs), n_boot=1000, seed=0)
    pd.testing.assert_frame_equal(boot, again)


def test_bootstrap_identical_predictions(run_dir: Path) -> None:
    a = run_dir / "seed0" / "rewind" / "doge-s30-l100"
    res = paired_bootstrap([(a, a)], metric="accuracy", n_boot=300, seed=1)
    assert res["diff"] == 0.0 and res["ex_ci_low"] == 0.0 and res["ex_ci_high"] == 0.0
    assert res["ex_p_value"] == pytest.approx(1.0)
    # one seed: no seed level, so no two-level interval and no power
    assert math.isnan(res["ci_low"]) and math.isnan(res["p_value"]) and math.isnan(res["mdd"])
    # two seeds of identical predictions: a zero-width two-level interval, p = 1
    b = run_dir / "seed1" / "rewind" / "doge-s30-l100"
    two = paired_bootstrap([(a, a), (b, b)], n_boot=100)
    assert two["ci_low"] == two["ci_high"] == 0.0 and two["p_value"] == 1.0 and two["t_p_value"] == 1.0


def _accuracy_run(folder: Path, correct: dict[str, list[bool]]) -> Path:
    folder.mkdir(parents=True)
    rows = [
        {"split": "test", "domain": d, "index": i, "gold": 1, "pred": 1 if ok else 0}
        for d, oks in correct.items()
        for i, ok in enumerate(oks)
    ]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_bootstrap_identical_runs_give_no_difference(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    correct = {d: list(rng.random(150) < 0.7) for d in ("x", "y")}
    a = _accuracy_run(tmp_path / "a", correct)
    b = _accuracy_run(tmp_path / "b", correct)  # another run, the same predictions
    res = paired_bootstrap([(a, b)], n_boot=500, seed=0)
    assert res["diff"] == 0.0 and res["ex_ci_low"] == 0.0 and res["ex_ci_high"] == 0.0
    assert res["ex_p_value"] == 1.0
    assert res["a"] == res["b"] == pytest.approx(np.mean([np.mean(v) for v in correct.values()]))


def test_bootstrap_large_true_difference_is_significant(tmp_path: Path) -> None:
    """All correct against half correct over 300 examples: the bootstrap must see it, both ways round."""
    a = _accuracy_run(tmp_path / "a", {d: [True] * 150 for d in ("x", "y")})
    b = _accuracy_run(tmp_path / "b", {d: [i % 2 == 0 for i in range(150)] for d in ("x", "y")})
    res = paired_bootstrap([(a, b)], n_boot=1000, seed=0)
    assert res["diff"] == 0.5 and res["n_examples"] == 300
    assert res["ex_p_value"] < 0.01 and res["ex_p_value"] == pytest.approx(1 / 1001)
    assert 0 < res["ex_ci_low"] <= 0.5 <= res["ex_ci_high"]
    back = paired_bootstrap([(b, a)], n_boot=1000, seed=0)
    assert back["diff"] == -0.5 and back["ex_p_value"] < 0.01 and back["ex_ci_high"] < 0


def test_bootstrap_clear_difference_is_significant(run_dir: Path) -> None:
    a = run_dir / "seed0" / "rewind" / "doge-s10-l10"  # 90%
    b = run_dir / "seed0" / "rewind" / "random-s30"  # 60%
    res = paired_bootstrap([(a, b)], n_boot=1000, seed=0)
    assert res["diff"] == pytest.approx(0.3)
    assert res["ex_p_value"] < 0.01 and res["ex_ci_low"] > 0


def _pair_of_runs(root: Path, domains: tuple[str, ...], rng: np.random.Generator, n: int = 200) -> tuple[Path, Path]:
    """Two runs on the same test examples of `domains`: A right 75% of the time, B 65%."""
    a = _accuracy_run(root / "a", {d: list(rng.random(n) < 0.75) for d in domains})
    b = _accuracy_run(root / "b", {d: list(rng.random(n) < 0.65) for d in domains})
    return a, b


def test_bootstrap_over_datasets_is_the_mean_of_the_datasets(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ds1 = [_pair_of_runs(tmp_path / "d1" / f"s{k}", ("x", "y"), rng) for k in range(2)]  # two seeds
    ds2 = [_pair_of_runs(tmp_path / "d2" / f"s{k}", ("z",), rng) for k in range(3)]  # three seeds
    one = [paired_bootstrap(ds, n_boot=200, seed=0) for ds in (ds1, ds2)]
    both = bootstrap_over_datasets([(ds1, "accuracy"), (ds2, "accuracy")], n_boot=2000, seed=0)
    for key in ("diff", "a", "b"):
        assert both[key] == pytest.approx((one[0][key] + one[1][key]) / 2)
    assert both["ci_low"] < both["diff"] < both["ci_high"] and both["n_examples"] == 600
    assert both["ex_ci_low"] < both["diff"] < both["ex_ci_high"]
    # the seed levels of independent datasets add up (over K^2): seeds resampled within each dataset
    assert both["var_seed_level"] == pytest.approx((one[0]["var_seed_level"] + one[1]["var_seed_level"]) / 4)
    # a dataset with one seed has no seed level: no two-level interval over datasets either
    alone = bootstrap_over_datasets([(ds1, "accuracy"), (ds2[:1], "accuracy")], n_boot=200, seed=0)
    assert math.isnan(alone["ci_low"]) and alone["ex_ci_low"] < alone["diff"] < alone["ex_ci_high"]


def test_bootstrap_over_datasets_draws_a_shared_test_domain_once(tmp_path: Path) -> None:
    """Two datasets evaluating the same examples of a domain (another split of the same data): one draw
    per replicate for both. A dataset averaged with an exact copy of itself then has its own CI to the
    bit; had they been drawn independently, the CI would be about 1/sqrt(2) as wide."""
    rng = np.random.default_rng(4)
    ds = [_pair_of_runs(tmp_path / "d1", ("x", "y"), rng)]
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "d1", copy)
    alone = paired_bootstrap(ds, n_boot=1000, seed=0)
    twice = bootstrap_over_datasets([(ds, "accuracy"), ([(copy / "a", copy / "b")], "accuracy")], n_boot=1000)
    for key in ("diff", "ex_ci_low", "ex_ci_high", "ex_p_value"):
        assert twice[key] == pytest.approx(alone[key], abs=1e-12)
    assert twice["n_examples"] == alone["n_examples"] == 400
    # the same domains with other examples (other gold labels) are other populations: drawn independently
    other = [_pair_of_runs(tmp_path / "d3", ("x", "y"), np.random.default_rng(5))]
    for run in other[0]:
        lines = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
        for r in lines[::3]:
            r["gold"] = r["pred"] = 2  # another label set of examples, correctness unchanged
        (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    apart = bootstrap_over_datasets([(ds, "accuracy"), (other, "accuracy")], n_boot=2000, seed=0)
    widths = [x["ex_ci_high"] - x["ex_ci_low"] for x in (paired_bootstrap(ds, n_boot=2000), apart)]
    assert apart["n_examples"] == 800 and 0.55 < widths[1] / widths[0] < 0.9


def test_bootstrap_table_over_datasets_rows(run_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "amazonB"
    shutil.copytree(run_dir, other)
    _add_doge_nc(other)  # doge-nc on B only: no row over datasets
    sel = select_dev(load_all([run_dir, other]))
    boot = bootstrap_table(sel, n_boot=300, seed=0)
    over = boot[boot.dataset == ALL_DATASETS].set_index("comparison")
    assert set(over.index) == {"doge - erm", "doge - winning"}
    assert set(over["seed"]) == {"mean"}
    for comp, row in over.iterrows():
        per = boot[(boot.comparison == comp) & (boot.seed == "mean") & (boot.dataset != ALL_DATASETS)]
        assert len(per) == 2 and row["diff"] == pytest.approx(per["diff"].mean())
        # B is a copy of A: the same examples, drawn together, so the same test-set noise as A alone
        assert (row["ex_ci_low"], row["ex_ci_high"]) == pytest.approx((per["ex_ci_low"].iloc[0],
                                                                      per["ex_ci_high"].iloc[0]))
    assert set(boot[boot.dataset == "amazonB"].comparison) >= {"doge-nc - erm"}
    one = bootstrap_table(select_dev(load_all([run_dir])), n_boot=300, seed=0)
    assert ALL_DATASETS not in set(one.dataset)


def test_entity_f1_counts_match_seqeval_strict() -> None:
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2

    def strict(g: list, p: list) -> float:
        return f1_score(g, p, mode="strict", scheme=IOB2, zero_division=0)

    rng = np.random.default_rng(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold = [list(rng.choice(tags, size=int(rng.integers(1, 8)))) for _ in range(40)]
    pred = [[t if rng.random() < 0.7 else str(rng.choice(tags)) for t in g] for g in gold]
    stats = np.array([example_stats(g, p, "entity_f1") for g, p in zip(gold, pred, strict=True)])
    assert metric_from_sums(stats.sum(0), "entity_f1") == pytest.approx(strict(gold, pred), rel=1e-12)
    idx = rng.integers(0, 40, size=40)
    resampled = metric_from_sums(stats[idx].sum(0), "entity_f1")
    assert resampled == pytest.approx(strict([gold[i] for i in idx], [pred[i] for i in idx]), rel=1e-12)


def test_transitions_legend_sits_under_the_panels_once(
    runs: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dogetickets.report import figures

    two = pd.concat([runs, runs.assign(dataset="other")], ignore_index=True)
    seen = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, png, table: (seen.append(fig), save(fig, png, table))[1])
    figures.plot_transitions(two, tmp_path)
    fig = seen[0]
    axes = fig.get_axes()
    assert len(axes) == 2 and all(ax.get_legend() is None for ax in axes)  # no legend over a curve
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert len(labels) == len(set(labels)) == 4  # random, winning, doge (dev-chosen λ), ERM: once each
    fig.canvas.draw()
    top = legend.get_window_extent().y1
    assert all(top <= ax.get_window_extent().y0 for ax in axes)


def test_transitions_keep_coinciding_curves_apart(
    runs: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """doge-nc choosing doge's very tickets gives the same curve: both stay visible (their own markers, the
    later drawn inside the earlier); every panel has the same sparsity axis, a dataset with no ticket yet too."""
    from dogetickets.report import figures

    same = runs[runs["method"] == "doge"].assign(method="doge-nc")
    only_erm = runs[runs["method"] == "erm"].assign(dataset="running")
    seen = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, png, table: (seen.append(fig), save(fig, png, table))[1])
    figures.plot_transitions(pd.concat([runs, same, only_erm], ignore_index=True), tmp_path)
    full, running = seen[0].get_axes()
    curves = {line.get_label(): line for line in full.get_lines() if line.get_marker() not in (None, "None", "")}
    doge, nc = curves["doge tickets (dev-chosen λ)"], curves["doge tickets (noise-corrected var.) (dev-chosen λ)"]
    assert list(doge.get_ydata()) == list(nc.get_ydata())
    assert nc.get_linewidth() < doge.get_linewidth() and nc.get_markersize() < doge.get_markersize()
    assert len({line.get_marker() for line in curves.values()}) == len(curves) == 4
    assert running.get_lines() and running.get_xlim() == full.get_xlim() == pytest.approx((9.0, 31.0))

def test_figures_and_csvs(runs: pd.DataFrame, tmp_path: Path) -> None:
    png = plot_transitions(runs, tmp_path)
    assert png is not None and png.stat().st_size > 1000
    tr = pd.read_csv(tmp_path / "transitions.csv")
    assert len(tr) == 7
    assert set(zip(tr.method, tr.target_sparsity, strict=True)) == {
        ("erm", 0.0),
        ("random", 0.1),
        ("random", 0.3),
        ("winning", 0.1),
        ("winning", 0.3),
        ("doge", 0.1),
        ("doge", 0.3),
    }
    d30 = tr[(tr.method == "doge") & (tr.target_sparsity == 0.3)].iloc[0]
    assert d30.test_mean == pytest.approx(0.8) and float(d30.lambdas) == 100.0  # dev-chosen lambda

    png = plot_lambda(runs, tmp_path)
    assert png is not None and png.stat().st_size > 1000
    lam = pd.read_csv(tmp_path / "lambda.csv")
    assert len(lam) == 4 and set(lam["lambda"]) == {10.0, 100.0}
    one_lambda = runs[~((runs.method == "doge") & (runs["lambda"] == 10.0))]
    assert (
        plot_lambda(one_lambda, tmp_path / "one") is None and not (tmp_path / "one" / "lambda.png").exists()
    )
    # lambda chosen on dev per seed and sparsity ("preview"): 10 at 10%, 100 at 30%: two lambdas, no curve
    unchosen = runs["target_sparsity"].round(2).map({0.1: 100.0, 0.3: 10.0})
    chosen = runs[~((runs.method == "doge") & (runs["lambda"] == unchosen))]
    assert set(chosen.loc[chosen.method == "doge", "lambda"]) == {10.0, 100.0}
    assert plot_lambda(chosen, tmp_path / "chosen") is None
    from dogetickets.report import sections
    from dogetickets.report.document import Document

    doc = Document()
    sections._lambda(doc, chosen, tmp_path / "chosen")
    assert any(k == "p" and "chosen on in-domain dev" in x for k, x in doc.blocks)
    assert not any(k == "img" for k, _ in doc.blocks)
    doc = Document()  # one dataset swept, one not: drawn, and the other named
    sections._lambda(doc, pd.concat([runs, chosen.assign(dataset="other")], ignore_index=True), tmp_path / "both")
    assert any(k == "p" and "Not drawn for other: " in x for k, x in doc.blocks)
    assert any(k == "img" for k, _ in doc.blocks)

    png, counts = plot_scores(scores_json(), tmp_path)
    assert png.stat().st_size > 1000 and (tmp_path / "scores.csv").is_file()
    assert counts == {"HMHV": 2, "HMLV": 2, "LMHV": 2, "LMLV": 2}
    cls = pd.read_csv(tmp_path / "scores_classes.csv")
    assert len(cls) == 8 and list(cls["class"]) == UNIT_CLASSES

    rng = np.random.default_rng(0)
    pilot = plot_pilot({"A": rng.random((3, 35)), "B": rng.random((3, 35))}, tmp_path)
    assert pilot == tmp_path / "pilot.png" and pilot.stat().st_size > 1000
    pc = pd.read_csv(tmp_path / "pilot.csv")
    assert len(pc) == 3 * 35 * 2 and set(pc.domain) == {"A", "B"}
    with pytest.raises(DogeError):
        plot_pilot({"A": np.zeros((3, 35)), "B": np.zeros((2, 35))}, tmp_path)


def test_write_report(report: Path) -> None:
    out = report.parent
    assert report.name == "report.md"
    md = report.read_text()
    for needle in (
        "Selection rule",
        "dev score",
        "oracle (test-selected)",
        "Paired bootstrap",
        "doge - erm",
        "HMHV: 2",
        "transitions.png",
        "lambda.png",
        "scores.png",
    ):
        assert needle in md, needle
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table" in page and 'src="http' not in page
    for name in (
        "table2.csv",
        "runs.csv",
        "bootstrap.csv",
        "transitions.csv",
        "lambda.csv",
        "scores.csv",
        "scores_classes.csv",
        "transitions.png",
        "lambda.png",
        "scores.png",
    ):
        assert (out / name).stat().st_size > 0, name
    allruns = pd.read_csv(out / "runs.csv")
    assert len(allruns) == 18 and allruns["dev_selected"].sum() == 8
    boot = pd.read_csv(out / "bootstrap.csv")
    assert len(boot) == 6  # 2 comparisons x (2 seeds + pooled)


def test_report_several_datasets(run_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "amazonB"
    shutil.copytree(run_dir, other)
    runs = load_all([run_dir, other])
    t2 = table2(runs)
    assert {
        "amazonA",
        "amazonB",
        "Average score",
        "Average sparsity",
        "Average oracle (test-selected)",
    } <= set(t2.columns)
    erm = t2[t2["Model"] == "ERM (fine-tuning)"].iloc[0]
    assert erm["Average score"] == f"{(float(erm['amazonA'].split()[0]) + float(erm['amazonB'].split()[0])) / 2:.1f}"
    # a method run on one dataset only (the study's allocation variants: Amazon A) has no average
    runs_a_only = load_all([run_dir, other])
    runs_a_only = runs_a_only[~((runs_a_only["dataset"] == "amazonB") & (runs_a_only["method"] == "random"))]
    random_row = table2(runs_a_only).set_index("Model").loc["random tickets"]
    assert random_row["amazonB"] == "-" and random_row["amazonA"] != "-"
    assert random_row["Average score"] == "-" and random_row["Average sparsity"] == "-"
    md = write_report([run_dir, other], out=tmp_path / "both", n_boot=50)
    assert "amazonB" in md.read_text()
    tr = pd.read_csv(tmp_path / "both" / "transitions.csv")
    assert len(tr) == 14


# ---- summary, wall time and machine, reproduce ----------------------------------------------------------
def _section(md: str, title: str) -> str:
    """The text of a '## title' section of report.md, up to the next '## ' heading."""
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_machine_describe_keys_and_types() -> None:
    from dogetickets import machine

    d = machine.describe()
    json.dumps(d)  # recorded in timing.json as is
    assert isinstance(d["os"], str) and d["os"] and isinstance(d["python"], str) and d["python"]
    assert d["cpu"] is None or isinstance(d["cpu"], str)
    assert isinstance(d["logical_cores"], int) and d["logical_cores"] >= 1
    assert isinstance(d["torch_threads"], int) and d["torch_threads"] >= 1
    assert d["ram_gib"] is None or (isinstance(d["ram_gib"], float) and d["ram_gib"] > 0)
    assert isinstance(d["cuda_devices"], list) and all(isinstance(x, str) for x in d["cuda_devices"])
    import torch

    assert d["torch"] == torch.__version__
    for key in ("transformers", "accelerate", "dogetickets"):
        assert isinstance(d[key], str) and d[key], key
    if "git" in d:  # only from a git working tree
        assert isinstance(d["git"], str) and len(d["git"].removesuffix("+dirty")) >= 4
    lines = machine.lines(d)
    assert lines[0].startswith("OS: ") and any(line.startswith("torch threads: ") for line in lines)


def test_git_commit_is_dirty_only_when_the_package_source_changed(tmp_path: Path) -> None:
    """A report written into docs/ while a study runs does not make the study's code '+dirty'."""
    import subprocess

    from dogetickets import machine

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    pkg = tmp_path / "src" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "study.md").write_text("old\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    sha = machine._git_commit(pkg)
    assert sha and "+" not in sha
    (tmp_path / "docs" / "study.md").write_text("new\n")
    (tmp_path / "notes.txt").write_text("untracked, outside the package\n")
    assert machine._git_commit(pkg) == sha
    (pkg / "__init__.py").write_text("x = 2\n")
    assert machine._git_commit(pkg) == f"{sha}+dirty"
    git("checkout", "--", "src")
    (pkg / "new_module.py").write_text("")
    assert machine._git_commit(pkg) == f"{sha}+dirty"


def _add_doge_nc(root: Path) -> None:
    """A doge-nc method (two configurations per seed) beside the others."""
    for seed, runs in {0: {"doge-nc-s10-l10": (0.66, 13, 13), "doge-nc-s30-l10": (0.69, 15, 13)},
                       1: {"doge-nc-s10-l10": (0.70, 16, 14), "doge-nc-s30-l10": (0.60, 20, 20)}}.items():
        for name, (dev, k1, k2) in runs.items():
            folder = root / f"seed{seed}" / "rewind" / name
            write_run(folder, seed, name, dev, (k1, k2))
            m = json.loads((folder / "metrics.json").read_text())
            m["run"]["method"] = "doge-nc"
            (folder / "metrics.json").write_text(json.dumps(m))


def test_summary_numbers(run_dir: Path, tmp_path: Path) -> None:
    a = tmp_path / "amazonA"
    shutil.copytree(run_dir, a)
    _add_doge_nc(a)
    b = tmp_path / "amazonB"
    shutil.copytree(run_dir, b)
    write_run(b / "seed1" / "erm", 1, "erm", 0.61, (20, 20))  # ERM of seed 1 at 100% on dataset B
    md = write_report([a, b], out=tmp_path / "rep", n_boot=100).read_text()
    summary = _section(md, "Summary")

    def line(block: str, name: str) -> str:
        (found,) = [x for x in block.splitlines() if x.startswith(f"- {name}: ")]
        return found

    def pts(diffs: list[float]) -> str:
        return f"{100 * statistics.mean(diffs):+.1f} points"

    erm_a = [expected_mean(s, "erm") for s in RESULTS]  # 0.65, 0.675
    erm_b = [erm_a[0], 1.0]
    doge = [expected_mean(s, DEV_BEST["doge"]) for s in RESULTS]  # 0.775, 0.825
    winning = [expected_mean(s, DEV_BEST["winning"]) for s in RESULTS]  # 0.6, 0.625
    nc = [(15 + 13) / 40, (16 + 14) / 40]  # dev-best doge-nc: s30 on seed 0, s10 on seed 1 (not test-best s30)
    da = [x - y for x, y in zip(doge, erm_a, strict=True)]  # +12.5, +15.0
    db = [x - y for x, y in zip(doge, erm_b, strict=True)]  # +12.5, -17.5
    dw = [x - y for x, y in zip(doge, winning, strict=True)]  # +17.5, +20.0
    dnc = [x - y for x, y in zip(nc, erm_a, strict=True)]  # +5.0, +7.5

    block_a = summary.split("### amazonA (Acc)\n", 1)[1].split("###", 1)[0]
    block_b = summary.split("### amazonB (Acc)\n", 1)[1].split("###", 1)[0]
    overall = summary.split("### Overall (mean over datasets)\n", 1)[1]
    assert line(block_a, "doge tickets - ERM (fine-tuning)").startswith(f"- doge tickets - ERM (fine-tuning): "
                                                                         f"{pts(da)} (2 of 2 seeds ahead: +12.5, "
                                                                         "+15.0; two-level 95% CI [")
    assert pts(da) == "+13.8 points" and pts(db) == "-2.5 points"
    assert f"{pts(db)} (1 of 2 seeds ahead: +12.5, -17.5; " in line(block_b, "doge tickets - ERM (fine-tuning)")
    assert f"{pts(dw)} (2 of 2 seeds ahead: +17.5, +20.0; " in line(block_a, "doge tickets - winning tickets")
    # doge-nc vs ERM is summarized too (dataset B has no doge-nc)
    nc_line = line(block_a, "doge tickets (noise-corrected var.) - ERM (fine-tuning)")
    assert f"{pts(dnc)} (2 of 2 seeds ahead" in nc_line and pts(dnc) == "+6.2 points"
    assert "noise-corrected" not in block_b
    # a line quotes the bootstrap's pooled CI and p when the bootstrap made that comparison, else none
    boot = pd.read_csv(tmp_path / "rep" / "bootstrap.csv")
    boot = boot[(boot.dataset == "amazonA") & (boot.seed == "mean")].set_index("comparison")
    for a_, b_, base in (("doge", "erm", "doge tickets - ERM (fine-tuning)"),
                         ("doge-nc", "erm", "doge tickets (noise-corrected var.) - ERM (fine-tuning)"),
                         ("random", "erm", "random tickets - ERM (fine-tuning)")):
        text = line(block_a, base)
        if f"{a_} - {b_}" in boot.index:
            pooled = boot.loc[f"{a_} - {b_}"]
            null = (f"; not significant, and this design detects only about {100 * pooled.mdd:.1f} points or more "
                    "(80% power)" if pooled.p_value >= 0.05 else "")
            assert text.endswith(
                f"; two-level 95% CI [{points(pooled.ci_low)}, {points(pooled.ci_high)}], "
                f"{p_is(pooled.p_value)}; test-set noise only [{points(pooled.ex_ci_low)}, "
                f"{points(pooled.ex_ci_high)}], {p_is(pooled.ex_p_value)}{null})"
            ), text
            assert pooled.ci_high - pooled.ci_low > pooled.ex_ci_high - pooled.ex_ci_low  # seeds disagree here
        else:
            assert "95% CI" not in text and "test-set noise" not in text, text
    assert "doge - erm" in boot.index
    # overall: mean over datasets of the per-dataset means; seeds ahead counted over both datasets
    overall_erm = statistics.mean([statistics.mean(da), statistics.mean(db)])  # +5.625
    both = pd.read_csv(tmp_path / "rep" / "bootstrap.csv")
    both = both[both.dataset == ALL_DATASETS].set_index("comparison").loc["doge - erm"]
    assert both.p_value >= 0.05  # B's seed 1 disagrees
    assert line(overall, "doge tickets - ERM (fine-tuning)").endswith(
        f"{100 * overall_erm:+.1f} points (mean over 2 datasets; 3 of 4 seeds ahead; two-level 95% CI "
        f"[{points(both.ci_low)}, {points(both.ci_high)}], {p_is(both.p_value)}; test-set noise only "
        f"[{points(both.ex_ci_low)}, {points(both.ex_ci_high)}], {p_is(both.ex_p_value)}; not significant, "
        f"and this design detects only about {100 * both.mdd:.1f} points or more (80% power))"
    )
    assert line(overall, "doge tickets (noise-corrected var.) - ERM (fine-tuning)").endswith(
        f"{pts(dnc)} (mean over 1 of 2 datasets; 2 of 2 seeds ahead)"
    )
    wa = [x - y for x, y in zip(winning, erm_a, strict=True)]
    wb = [x - y for x, y in zip(winning, erm_b, strict=True)]
    assert line(overall, "winning tickets - ERM (fine-tuning)").endswith(
        f"{100 * statistics.mean([statistics.mean(wa), statistics.mean(wb)]):+.1f} points "
        "(mean over 2 datasets; 0 of 4 seeds ahead)"
    )

    # the answer up front, right after Table 2: the same numbers as the summary's doge lines, in one table
    after_table2 = md.split("## Table 2", 1)[1].split("\n## ", 1)[1]
    assert after_table2.startswith("The answer: doge tickets against") and md.index("## The answer") < md.index(
        "## Summary")
    answer = _section(md, "The answer: doge tickets against ERM (fine-tuning) and winning tickets")
    rows = {r.split(" | ")[0].lstrip("| "): r.strip(" |").split(" | ") for r in answer.splitlines()
            if r.startswith("| amazon") or r.startswith("| mean over")}
    a_erm = boot.loc["doge - erm"]
    assert rows["amazonA"][1:4] == [f"{pts(da)[:-7]} [{points(a_erm.ci_low)}, {points(a_erm.ci_high)}], "
                                    f"{p_is(a_erm.p_value)}", "+12.5, +15.0", f"{100 * a_erm.mdd:.1f}"]
    assert rows["amazonA"][5] == "+17.5, +20.0" and rows["amazonB"][2] == "+12.5, -17.5"
    assert rows["mean over datasets"][1:4] == [
        f"{100 * overall_erm:+.1f} [{points(both.ci_low)}, {points(both.ci_high)}], {p_is(both.p_value)}",
        "3 of 4 seeds ahead", f"{100 * both.mdd:.1f}"]
    assert "noise-corrected" not in answer  # the paper's method only: doge against ERM and winning tickets


def test_summary_single_dataset_has_no_overall(report: Path) -> None:
    summary = _section(report.read_text(), "Summary")
    assert "### amazonA (Acc)" in summary and "### Overall" not in summary and "Overall:" not in summary


def test_wall_time_and_machine(run_dir: Path, tmp_path: Path) -> None:
    a = tmp_path / "amazonA"
    shutil.copytree(run_dir, a)
    b = tmp_path / "amazonB"
    shutil.copytree(run_dir, b)
    desc = {"os": "Linux-test", "python": "CPython 3.11.7", "cpu": "Test CPU 9000",
            "cpu_features": ["avx2", "avx512f", "avx512_bf16"], "logical_cores": 8,
            "torch_threads": 4, "ram_gib": 31.2, "cuda_devices": [], "torch": "2.0", "git": "abc1234+dirty"}
    (a / "timing.json").write_text(json.dumps({"total_seconds": 5400.0, "outside_model_seconds": 54.0,
                                               "outside_model_share": 0.01, "read data": 1.0, "machine": desc}))
    for seed in RESULTS:
        (a / f"seed{seed}" / "erm" / "timing.json").write_text(json.dumps({"seconds": 100.0}))
        for name in ("doge-s30-l100", "winning-s10"):
            (a / f"seed{seed}" / "rewind" / name / "timing.json").write_text(json.dumps({"seconds": 40.0}))
    # the precision each reported run recorded, and why
    for m in a.rglob("metrics.json"):
        fp32 = m.parent == a / "seed0" / "erm"  # one reported run in fp32, the others in bf16
        record = json.loads(m.read_text())
        record["train"] = {**record.get("train", {}), "mixed_precision": "no" if fp32 else "bf16",
                           "precision_reason": "fp32: set by train.mixed_precision" if fp32 else
                           "bf16: 'auto' on a CPU with avx512_bf16"}
        m.write_text(json.dumps(record))
    md = write_report([a, b], out=tmp_path / "rep", n_boot=20).read_text()
    sec = _section(md, "Wall time and machine")
    (row_a,) = [x for x in sec.splitlines() if x.startswith("| amazonA |")]
    cells = [c.strip() for c in row_a.strip("|").split("|")]
    n = int(re.search(r"fp32 \(set by train.mixed_precision; 1 of (\d+) runs\)", cells[1]).group(1))
    assert n > 2 and cells[1] == (f"bf16 ('auto' on a CPU with avx512_bf16; {n - 1} of {n} runs); "
                        f"fp32 (set by train.mixed_precision; 1 of {n} runs)")
    assert "- CPU features: avx2, avx512f, avx512_bf16" in sec
    (row_b,) = [x for x in sec.splitlines() if x.startswith("| amazonB |")]
    assert row_b.split("|")[2].strip() == f"not recorded (all {n} runs)"
    del cells[1]
    assert cells == ["amazonA", "5400 s (1.50 h)", "54.0 s (1.0%)", "200 s (3.3 min) in 2 runs",
                     "160 s (2.7 min) in 4 runs; 12 without timing"]
    # a ticket that took a twin's training (same units) costs nothing and is counted as such
    (a / "seed0" / "rewind" / "winning-s10" / "timing.json").write_text(json.dumps({"seconds": 0.0,
                                                                                   "trained_as": "doge-s30-l100"}))
    sec = _section(write_report([a, b], out=tmp_path / "rep", n_boot=20).read_text(), "Wall time and machine")
    (row_a,) = [x for x in sec.splitlines() if x.startswith("| amazonA |")]
    assert row_a.split("|")[6].strip() == ("120 s (2.0 min) in 4 runs; 12 without timing; 1 of them took the "
                                           "training of a run with the same units (trained_as)")
    (row_b,) = [x for x in sec.splitlines() if x.startswith("| amazonB |")]
    assert row_b.count("not recorded") == 4  # precision, total, both training columns
    assert "Machine (amazonA):" in sec and "Machine not recorded: amazonB." in sec
    for needle in ("- CPU: Test CPU 9000", "- logical cores: 8", "- torch threads: 4", "- RAM (GiB): 31.2",
                   "- CUDA devices: none", "- amazonA: abc1234+dirty", "- amazonB: not recorded"):
        assert needle in sec, needle
    assert "exceed the recorded process total" not in sec
    # the same machine in both: one list for all; more training recorded than the process lasted is flagged
    (b / "timing.json").write_text(json.dumps({"total_seconds": 60.0, "machine": desc}))
    (b / "seed0" / "erm" / "timing.json").write_text(json.dumps({"seconds": 100.0}))
    sec = _section(write_report([a, b], out=tmp_path / "rep", n_boot=20).read_text(), "Wall time and machine")
    assert sec.count("Machine (all run directories):") == 1 and "not recorded: amazonB" not in sec
    assert "In amazonB, the recorded training seconds exceed the recorded process total" in sec
    assert sec.count("- CPU: Test CPU 9000") == 1
    # a directory worked on by several processes (a resumed study): their totals are summed
    processes = [{"total_seconds": 3600.0, "outside_model_seconds": 30.0}, {"total_seconds": 1800.0}]
    (a / "timing.json").write_text(json.dumps({"total_seconds": 1800.0, "machine": desc, "processes": processes}))
    sec = _section(write_report([a, b], out=tmp_path / "rep", n_boot=20).read_text(), "Wall time and machine")
    (row_a,) = [x for x in sec.splitlines() if x.startswith("| amazonA |")]
    assert [c.strip() for c in row_a.strip("|").split("|")][2:4] == ["5400 s (1.50 h) in 2 processes", "30.0 s (0.6%)"]
    # a process killed mid-sweep (a session's end) counts up to its last finished job, and says so
    processes[0]["ended"] = False
    (a / "timing.json").write_text(json.dumps({"total_seconds": 1800.0, "machine": desc, "processes": processes}))
    sec = _section(write_report([a, b], out=tmp_path / "rep", n_boot=20).read_text(), "Wall time and machine")
    (row_a,) = [x for x in sec.splitlines() if x.startswith("| amazonA |")]
    assert row_a.split("|")[3].strip() == "5400 s (1.50 h) in 2 processes (1 not ended: up to its last finished job)"
    # the same machine, other code: one machine list; each directory's commits, per process, oldest first
    processes[0]["git"], processes[1]["git"] = "1111111", "2222222"
    (a / "timing.json").write_text(json.dumps({"total_seconds": 1800.0, "machine": desc, "processes": processes}))
    (b / "timing.json").write_text(json.dumps({"total_seconds": 60.0, "machine": {**desc, "git": "3333333"}}))
    sec = _section(write_report([a, b], out=tmp_path / "rep", n_boot=20).read_text(), "Wall time and machine")
    assert sec.count("Machine (all run directories):") == 1 and "- git commit:" not in sec
    assert "- amazonA: 1111111, 2222222\n- amazonB: 3333333" in sec
    del processes[0]["git"]  # a record written before records held their commit
    (a / "timing.json").write_text(json.dumps({"total_seconds": 1800.0, "machine": desc, "processes": processes}))
    sec = _section(write_report([a, b], out=tmp_path / "rep", n_boot=20).read_text(), "Wall time and machine")
    assert "- amazonA: 1 process not recorded, 2222222\n" in sec


def test_reproduce_generated_and_given(run_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dogetickets.cli import app

    a = tmp_path / "amazon A"  # a space: commands are shell-quoted
    shutil.copytree(run_dir, a)
    out = tmp_path / "rep"
    res = CliRunner().invoke(app, ["report", str(a), "--out", str(out), "--n-boot", "20", "-q"])
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    assert md.startswith("# Doge tickets report\n")
    block = _section(md, "Reproduce").split("```\n")[1].splitlines()
    assert block == [
        f"doge run '{a}/config.toml' --out '{a}'",
        f"doge report '{a}' --out {out} --n-boot 20 --seed 0",
    ]
    # the original config, when timing.json records its path
    (a / "timing.json").write_text(json.dumps({"total_seconds": 1.0, "config_path": "configs/study/a.toml"}))
    md = write_report([a], out=out, n_boot=20, seed=3, title="Study").read_text()
    assert _section(md, "Reproduce").split("```\n")[1].splitlines() == [
        f"doge run configs/study/a.toml --out '{a}'",
        f"doge report '{a}' --out {out} --n-boot 20 --seed 3 --title Study",
    ]
    # given commands: verbatim, in order, in markdown and html; the title as h1 and html title
    cmds = ["export DOGE_DATA_DIR=../shared/data/dogetickets",
            "doge run configs/study/amazon_a.toml --set 'train.lr=3e-5' <&- && echo ok"]
    res = CliRunner().invoke(app, ["report", str(a), "--out", str(out), "--n-boot", "20", "-q", "--title",
                                   "Doge tickets on Amazon", "--command", cmds[0], "--command", cmds[1]])
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    assert md.startswith("# Doge tickets on Amazon\n")
    assert _section(md, "Reproduce") == "\n```\n" + "\n".join(cmds) + "\n```\n"
    page = (out / "report.html").read_text()
    assert "<title>Doge tickets on Amazon</title>" in page and "<h1>Doge tickets on Amazon</h1>" in page
    assert "<pre><code>" + html.escape("\n".join(cmds)) + "</code></pre>" in page


def test_report_to_a_markdown_file_keeps_assets_beside_it(run_dir: Path, tmp_path: Path) -> None:
    """`--out docs/study.md`: the report is that file, its figures and CSVs in docs/study/, linked relatively."""
    import re

    md = write_report([run_dir], out=tmp_path / "docs" / "study.md", n_boot=20)
    assert md == tmp_path / "docs" / "study.md" and (tmp_path / "docs" / "study.html").is_file()
    assert (tmp_path / "docs" / "study" / "table2.csv").is_file()
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md.read_text())
    assert links and all(link.startswith("study/") and (md.parent / link).is_file() for link in links)


# (seed, method, target sparsity, lambda) -> (dev, #correct in Software, #correct in Movies); doge-global has
# no 30% ticket in seed 1: the comparison's 'all' row and summary use only the cells both allocations have
ALLOC_RUNS = {
    (0, "winning-global", 0.1, None): (0.70, 10, 12),
    (0, "winning-global", 0.3, None): (0.66, 8, 8),
    (0, "winning-balanced", 0.1, None): (0.72, 14, 12),
    (0, "winning-balanced", 0.3, None): (0.68, 12, 10),
    (0, "doge-global", 0.1, 10.0): (0.71, 11, 11),
    (0, "doge-global", 0.1, 100.0): (0.69, 20, 20),  # test-best, not dev-best: never the cell's run
    (0, "doge-global", 0.3, 10.0): (0.65, 9, 9),
    (0, "doge-balanced", 0.1, 10.0): (0.73, 13, 15),
    (0, "doge-balanced", 0.3, 10.0): (0.67, 11, 11),
    (1, "winning-global", 0.1, None): (0.70, 10, 10),
    (1, "winning-global", 0.3, None): (0.64, 8, 6),
    (1, "winning-balanced", 0.1, None): (0.74, 12, 12),
    (1, "winning-balanced", 0.3, None): (0.66, 10, 10),
    (1, "doge-global", 0.1, 10.0): (0.69, 12, 12),
    (1, "doge-balanced", 0.1, 10.0): (0.71, 14, 14),
    (1, "doge-balanced", 0.3, 10.0): (0.99, 20, 20),  # no doge-global partner: outside the common cells
    (0, "random-global", 0.1, None): (0.50, 1, 1),  # random: in the table, not in the summary (no scores)
    (0, "random-balanced", 0.1, None): (0.90, 19, 19),
}


def _alloc_run_dir(root: Path) -> Path:
    for (seed, method, ts, lam), (dev, k1, k2) in ALLOC_RUNS.items():
        name = f"{method}-s{round(ts * 100)}" + (f"-l{lam:g}" if lam is not None else "")
        folder = root / f"seed{seed}" / "rewind" / name
        write_run(folder, seed, name, dev, (k1, k2))
        m = json.loads((folder / "metrics.json").read_text())
        m["run"].update(method=method, target_sparsity=ts, sparsity=ts, **{"lambda": lam})
        (folder / "metrics.json").write_text(json.dumps(m))
        (folder / "ticket.json").write_text(json.dumps({"method": method, "allocation": method.split("-")[-1]}))
    write_run(root / "seed0" / "erm", 0, "erm", 0.7, (10, 10))
    write_run(root / "seed1" / "erm", 1, "erm", 0.7, (10, 10))
    return root


def test_allocations_compared_on_the_cells_every_allocation_has(tmp_path: Path) -> None:
    from dogetickets.report import allocations

    root = _alloc_run_dir(tmp_path / "alloc")
    runs = load_runs(root)
    assert set(runs.loc[runs["method"] == "erm", "allocation"]) == {""}
    cells = allocations.cells(runs)
    assert len(cells) == len(ALLOC_RUNS) - 1  # one doge-global cell has two lambdas: its dev-best run
    cell = cells[(cells.base == "doge") & (cells.allocation == "global") & (cells.seed == 0)
                 & (cells.target_sparsity == 0.1)]
    assert cell["dev_score"].item() == 0.71 and cell["test_mean"].item() == pytest.approx(11 / N_TEST)

    common = {  # (seed, base, sparsity) both allocations have, for winning and doge
        (0, "winning", 0.1), (0, "winning", 0.3), (0, "doge", 0.1), (0, "doge", 0.3),
        (1, "winning", 0.1), (1, "winning", 0.3), (1, "doge", 0.1)}
    def mean(alloc: str, i: int) -> float:
        vals = []
        for (seed, method, ts, lam), v in ALLOC_RUNS.items():
            base, _, a = method.rpartition("-")
            if a == alloc and (seed, base, ts) in common and not (base == "doge" and lam == 100.0):
                vals.append(v[0] if i == 0 else (v[1] + v[2]) / 2 / N_TEST)
        assert len(vals) == len(common)
        return sum(vals) / len(vals)

    (line,) = allocations.summary(cells)
    assert line == (
        f"alloc: winning tickets, doge tickets at 10%/30%, 2 seeds, 7 cells per allocation; mean dev / test: "
        f"global {mean('global', 0):.1%} / {mean('global', 1):.1%}, balanced {mean('balanced', 0):.1%} / "
        f"{mean('balanced', 1):.1%}. Best on dev: balanced (on test too).")
    t = allocations.table(cells)
    assert list(t.columns) == ["dataset", "method", "sparsity", "seeds", "global", "balanced"]
    assert list(t["method"].unique()) == ["random tickets", "winning tickets", "doge tickets"]
    doge_all = t[(t.method == "doge tickets") & (t.sparsity == "all (common cells)")].iloc[0]
    assert doge_all["global"] == f"{(0.71 + 0.65 + 0.69) / 3:.1%} / {(11 + 9 + 12) / 3 / N_TEST:.1%}"
    doge_30 = t[(t.method == "doge tickets") & (t.sparsity == "30%")].iloc[0]
    assert doge_30["balanced"] == f"{(0.67 + 0.99) / 2:.1%} / {(11 + 20) / 2 / N_TEST:.1%}"

    md = write_report([root], out=tmp_path / "rep", n_boot=20).read_text()
    sec = _section(md, "Ticket allocations compared")
    assert line in sec and "| alloc | doge tickets | all (common cells) | 2 |" in sec
    assert (tmp_path / "rep" / "allocations.csv").is_file()


def test_a_report_written_again_removes_only_the_files_its_last_one_wrote(run_dir: Path, tmp_path: Path) -> None:
    """Rewriting a report where a section no longer applies (the allocations compared) leaves none of its
    files behind (they would pass for current results); files the report did not write stay, whatever the
    manifest says (a user's file, a path outside the folder, a link, a name spelt another way), and the
    manifest lists exactly what the report wrote. A run directory (the default `out`) is never cleaned."""
    from dogetickets.report import MANIFEST

    out = tmp_path / "docs" / "study.md"
    md = write_report([_alloc_run_dir(tmp_path / "alloc")], out=out, n_boot=20)
    folder = md.with_suffix("")
    first = set(json.loads((folder / MANIFEST).read_text())["files"])
    assert "allocations.csv" in first and "table2.csv" in first
    # allocation variants only (no plain doge): the answer compares each with ERM and its own winning tickets
    answer = _section(md.read_text(), "The answer: doge tickets against ERM (fine-tuning) and winning tickets")
    header = answer.split("| dataset |", 1)[1].splitlines()[0]
    assert all(f"{methods.label(a)} - {methods.label(b)} (points" in header
               for a, b in (("doge-global", "erm"), ("doge-global", "winning-global"),
                            ("doge-balanced", "erm"), ("doge-balanced", "winning-balanced")))
    assert first == {p.name for p in folder.iterdir() if p.name != MANIFEST}  # every file it wrote, no more
    (folder / "my-notes.txt").write_text("mine")  # the user's, beside the report
    (folder / "link.csv").symlink_to(folder / "my-notes.txt")
    (tmp_path / "docs" / "outside.txt").write_text("not the report's")
    odd = ["../outside.txt", "my-notes.txt/..", "./table2.csv", str(folder / "runs.csv"), "link.csv", "."]
    (folder / MANIFEST).write_text(json.dumps({"files": [*first, *odd]}))

    write_report([run_dir], out=out, n_boot=20)
    second = set(json.loads((folder / MANIFEST).read_text())["files"])
    assert "allocations.csv" not in second and not (folder / "allocations.csv").exists()
    assert {"table2.csv", "runs.csv"} <= second and all((folder / n).is_file() for n in second)
    assert {p.name for p in folder.iterdir()} == second | {MANIFEST, "my-notes.txt", "link.csv"}
    assert (folder / "my-notes.txt").read_text() == "mine" and (folder / "link.csv").is_symlink()
    assert (tmp_path / "docs" / "outside.txt").read_text() == "not the report's"
    assert "Ticket allocations compared" not in md.read_text()

    # into the run directory itself: what `doge preview` / `doge analyze` left there stays, and no manifest
    own = tmp_path / "own"
    shutil.copytree(run_dir, own)
    (own / MANIFEST).write_text(json.dumps({"files": ["config.toml", "pilot.csv"]}))
    (own / "pilot.csv").write_text("doge analyze's numbers")
    write_report([own], n_boot=20)
    assert (own / "config.toml").is_file() and (own / "pilot.csv").read_text() == "doge analyze's numbers"
    assert json.loads((own / MANIFEST).read_text())["files"] == ["config.toml", "pilot.csv"]  # left as it was


def test_no_allocation_section_without_allocation_variants(report: Path) -> None:
    assert "Ticket allocations compared" not in report.read_text()


def test_a_p_value_reads_as_a_sentence() -> None:
    assert p_is(0.0123) == "p = 0.012" and p_is(0.0001) == "p < 0.001" and p_is(float("nan")) == ""


def test_points_that_round_to_zero_keep_their_side() -> None:
    """A bound of -0.02 points is printed as such, not as +0.0 (the study printed [+0.0, +0.5] for it)."""
    from dogetickets.report.tables import percent

    assert [points(-0.0002), points(0.0002), points(-0.00004), points(0.00049), points(0.0005)] == [
        "-0.02", "+0.02", "-0.004", "+0.05", "+0.1"]  # the last two: already nonzero at one decimal
    assert [points(0.0), points(1e-17), points(-1e-17), points(float("nan")), points(None)] == ["0.0", "0.0", "0.0",
                                                                                                "", ""]
    assert [points(0.123), points(-0.0123), points(-0.0006)] == ["+12.3", "-1.2", "-0.1"]
    assert points(-0.0002, signed=False) == "-0.02" and points(0.00002, digits=2) == "+0.002"
    assert [percent(-0.0001, True), percent(-0.0001), percent(-0.0006, True), percent(0.123)] == [
        "-0.01", "0.0", "-0.1", "12.3"]
    assert [p_value(0.0004), p_value(0.0123), p_value(float("nan"))] == ["< 0.001", "0.012", ""]


def test_report_of_some_seeds_reads_only_them(run_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dogetickets.cli import app
    from dogetickets.run.layout import RunLayout

    out = tmp_path / "rep"
    res = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(out), "--n-boot", "20", "--seeds", "1",
                                   "-q"])
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    assert "seeds [1]" in md and "Seeds reported: 1 (`--seeds`)" in md
    assert set(pd.read_csv(out / "runs.csv")["seed"]) == {1}
    assert set(pd.read_csv(out / "bootstrap.csv")["seed"].astype(str)) <= {"1", "mean"}
    doge = table2(load_runs(run_dir)[lambda r: r["seed"] == 1]).set_index("Model").loc["doge tickets", "amazonA"]
    assert f"| doge tickets | {doge} |" in md
    assert "--seeds 1" in _section(md, "Reproduce")
    assert [s for s, _ in RunLayout(run_dir).seed_folders()] == [0, 1]  # nothing filtered beyond the report


# ---- two-level columns, power, the paper side by side -----------------------------------------------------
def test_bootstrap_table_two_level_columns(runs: pd.DataFrame) -> None:
    from scipy import stats as sps

    from dogetickets.report.stats import COLUMNS

    boot = bootstrap_table(select_dev(runs), n_boot=300, seed=0)
    assert list(boot.columns) == COLUMNS
    rows = boot[boot.comparison == "doge - erm"].set_index("seed")
    per_seed = rows.loc[["0", "1"]]
    assert per_seed["ci_low"].isna().all() and per_seed["t_p_value"].isna().all()  # one seed: no seed level
    assert (per_seed["ex_ci_low"] < per_seed["diff"]).all() and (per_seed["diff"] < per_seed["ex_ci_high"]).all()
    pooled = rows.loc["mean"]
    assert pooled["se"] ** 2 == pytest.approx(pooled["var_seed_level"] + pooled["var_shared"])
    assert pooled["var_seed_level"] == pytest.approx(np.var(per_seed["diff"], ddof=1) / 2)
    t = sps.ttest_1samp(per_seed["diff"].to_numpy(float), 0.0)
    assert pooled["t_p_value"] == pytest.approx(t.pvalue)
    assert (pooled["t_ci_low"], pooled["t_ci_high"]) == pytest.approx(tuple(t.confidence_interval(0.95)))
    assert pooled["ci_low"] < pooled["diff"] < pooled["ci_high"] and pooled["n_seeds"] == 2
    assert pooled["mdd"] > 0 and pooled["for_1pt"]


def test_report_power_section_and_coarse_seeds_note(report: Path) -> None:
    md = report.read_text()
    assert "With 3 seeds a bootstrap over seeds is coarse" in _section(md, "Paired bootstrap")
    assert "two-level 95% CI" in _section(md, "Paired bootstrap")
    assert "test-set noise only 95% CI" in _section(md, "Paired bootstrap")
    power = _section(md, "Power")
    boot = pd.read_csv(report.parent / "bootstrap.csv")
    pooled = boot[boot.seed.astype(str) == "mean"].set_index("comparison")
    for comp, label in (("doge - erm", "doge tickets - ERM (fine-tuning)"),
                        ("doge - winning", "doge tickets - winning tickets")):
        row = pooled.loc[comp]
        (line,) = [x for x in power.splitlines() if x.startswith(f"- amazonA, {label}: ")]
        assert f"detects {100 * row.mdd:.1f} points with 80% power (2 seeds, 40 test examples); 1 point needs " \
               f"{row.for_1pt}." in line
    assert "known only within a factor of" in power


def _paper_config(root: Path, train: list[str], test: list[str], dataset: str = "amazon") -> None:
    (root / "config.toml").write_text(
        f'[run]\nout = "{root}"\n[model]\nname = "minilm"\n[data]\ndataset = "{dataset}"\n'
        f"max_train_per_domain = 1000\ntrain_domains = {json.dumps(train)}\ntest_domains = {json.dumps(test)}\n"
    )


AMAZON_A = (["All_Beauty", "Automotive", "Digital_Music", "Gift_Cards"],
            ["Industrial_and_Scientific", "Movies_and_TV", "Software"])


def test_paper_dataset_is_recognised_by_its_domains(tmp_path: Path) -> None:
    from dogetickets.report import paper

    d = tmp_path / "not_a_telling_name"
    d.mkdir()
    _paper_config(d, *AMAZON_A)
    assert paper.identify(d).key == "amazon_a"
    _paper_config(d, ["gift cards", "digital-music", "AUTOMOTIVE", "All Beauty"], list(reversed(AMAZON_A[1])))
    assert paper.identify(d).key == "amazon_a"  # order, case and punctuation do not matter
    _paper_config(d, AMAZON_A[1], AMAZON_A[0])  # training and test swapped: none of the paper's
    assert paper.identify(d) is None
    _paper_config(d, ["fiction", "government", "slate", "telephone"], ["facetoface", "letters", "nineeleven", "oup",
                                                                       "verbatim"], "mnli")  # MNLI-4 (Table 4)
    assert paper.identify(d) is None
    _paper_config(d, ["bc", "bn", "mz", "nw"], ["tc", "wb"], "ontonote")
    assert paper.identify(d).key == "ontonotes"
    _paper_config(d, ["bc", "bn", "mz", "nw"], ["tc", "wb"], "amazon")  # another corpus
    assert paper.identify(d) is None
    (d / "config.toml").write_text('[run]\nout = "x"\n')
    assert paper.identify(d) is None and paper.identify(tmp_path / "missing") is None


def test_paper_table2_numbers_are_the_papers() -> None:
    """paper.TABLE2 against the brief's numbers and, when the paper's text is at hand, its Table 2."""
    import re

    from dogetickets.report import paper

    assert [paper.TABLE2["erm"][k] for k in ("amazon_a", "amazon_b", "amazon_c")] == [69.8, 72.6, 69.6]
    assert [paper.TABLE2["doge"][k] for k in ("amazon_a", "amazon_b", "amazon_c")] == [71.7, 73.8, 72.2]
    assert paper.score("doge-nc-balanced", "amazon_a") is None and paper.score("doge-balanced", "mnli") == 85.0
    text_path = Path(__file__).resolve().parents[2] / "shared" / "paper" / "doge-tickets.md"
    if not text_path.is_file():
        pytest.skip("the paper's text is not here")
    text = text_path.read_text(encoding="utf-8")
    table = text[text.index("Model\tAMAZONA"):text.index("Table 2:")]
    rows = {"BERT": "erm", "w/IRM": "irm", "w/ random tickets": "random", "w/ winning tickets": "winning",
            "w/ doge tickets": "doge"}
    keys = ["amazon_a", "amazon_b", "amazon_c", "mnli", "ontonotes", "average"]
    for line in table.splitlines():
        cells = line.split("\t")
        if cells[0] in rows:
            method = rows.pop(cells[0])
            assert [float(c) for c in cells[1:7]] == [paper.TABLE2[method][k] for k in keys], method
            assert float(re.sub("%", "", cells[7])) == paper.SPARSITY[method]
    assert not rows


def test_report_puts_the_papers_table2_beside_our_oracle(run_dir: Path, tmp_path: Path) -> None:
    a = tmp_path / "first"
    shutil.copytree(run_dir, a)
    _paper_config(a, *AMAZON_A)
    other = tmp_path / "second"
    shutil.copytree(run_dir, other)
    _paper_config(other, ["x1", "x2"], ["y1"])
    md = write_report([a, other], out=tmp_path / "rep", n_boot=20).read_text()
    sec = _section(md, "The paper's Table 2 beside ours (optimistic protocol)")
    assert "optimistic" in sec and "best out-of-domain test score" in sec

    def row(model: str) -> list[str]:
        (found,) = [x for x in sec.splitlines() if x.startswith(f"| first (Amazon A) | {model} |")]
        return [c.strip() for c in found.strip("|").split("|")][2:]

    oracle = {m: statistics.mean(expected_mean(s, TEST_BEST[m]) for s in RESULTS) for m in TEST_BEST}
    dev = {m: statistics.mean(expected_mean(s, DEV_BEST[m]) for s in RESULTS) for m in DEV_BEST}
    assert row("ERM (fine-tuning)") == ["69.8", f"{100 * oracle['erm']:.1f}", f"{100 * dev['erm']:.1f}"]
    assert row("doge tickets") == ["71.7", f"{100 * oracle['doge']:.1f}", f"{100 * dev['doge']:.1f}"]
    assert row("doge tickets - ERM (fine-tuning)") == [
        "+1.9", points(oracle["doge"] - oracle["erm"]), points(dev["doge"] - dev["erm"])]
    assert "| second (" not in sec and "Not in the paper's Table 2: second" in sec
    assert "first is the paper's Amazon A; setup differs: model minilm (paper: bert-base-uncased); 1,000 " \
           "training examples per domain (paper: 5,400)" in sec
    # none of the paper's datasets: the section says so
    md = write_report([other], out=tmp_path / "rep2", n_boot=20).read_text()
    assert "nothing to compare with the paper's Table 2" in _section(
        md, "The paper's Table 2 beside ours (optimistic protocol)")


def test_report_says_what_each_directorys_data_set_up_changes(run_dir: Path, tmp_path: Path) -> None:
    """A domain trained on another split, with a carved dev set, and the config's own notes are said beside
    the directory they belong to (the OntoNotes study trains nw on its dev.json); a plain set-up says nothing."""
    a, plain = tmp_path / "ontonotes_like", tmp_path / "plain"
    shutil.copytree(run_dir, a)
    shutil.copytree(run_dir, plain)
    _paper_config(plain, *AMAZON_A)
    _paper_config(a, *AMAZON_A)
    with (a / "config.toml").open("a") as f:
        f.write('train_split_overrides = { Gift_Cards = "dev" }\ndev_from_train = { Gift_Cards = 0.1 }\n'
                'notes = ["Gift_Cards has no train split"]\n')
    md = write_report([a, plain], out=tmp_path / "rep", n_boot=20).read_text()
    inputs = md[:md.index("\n## ")].splitlines()  # the list of directories read, under the title
    (line_a,) = [x for x in inputs if x.startswith(f"- {a.name} ")]
    (line_plain,) = [x for x in inputs if x.startswith(f"- {plain.name} ")]
    assert line_a.endswith(". Data: Gift_Cards has no train split; Gift_Cards: trains on its 'dev' split; its dev "
                           "set is a seeded 10% carved from that training data")
    assert "Data:" not in line_plain

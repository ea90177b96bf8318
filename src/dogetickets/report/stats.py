"""Paired bootstrap over test examples.

Statistic: the mean over test domains of the per-domain metric (accuracy, or strict-IOB2 entity F1 for
NER), for run A minus run B, where A and B are the dev-selected configurations of two methods.

Resampling: each replicate draws, within every test domain separately, as many examples as the domain
has, with replacement; both runs (paired by (domain, index)) are scored on the same draw.

Seeds: the test examples are the same for every seed, so one replicate's draw is applied to every seed
and the replicate's value is the MEAN OVER SEEDS OF THE PER-SEED DIFFERENCES; the pooled observed
difference is likewise the mean of the per-seed differences. Only test-example sampling is resampled;
the spread over seeds is what Table 2's ± shows. Per-seed rows come from the same replicates.

Datasets: the mean over datasets of the pooled differences is bootstrapped with every dataset resampled
in the same replicate; a test domain that two datasets share with the same examples (Amazon A and C both
test on Industrial_and_Scientific) is one population, drawn once per replicate for both, since their
errors on it are not independent.

CI: 2.5/97.5 percentiles of the replicate values. Two-sided p-value of "no difference": the replicate
distribution shifted to mean zero under the null, p = (1 + #{|d* - d| >= |d|}) / (1 + n_boot).

Entity F1 on a resample is computed from per-sentence counts (true positives, predicted and gold
entities under strict IOB2), with the very functions the metric uses (``data.tasks.entity_counts`` and
``entity_f1``): summing the counts over the drawn sentences and taking 2 TP / (P + G) is the table's
entity F1 (``TokenTagging.score``, seqeval's strict mode) on the drawn list of sequences, to the bit on
the observed data, without a Python loop per replicate.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dogetickets import methods as registry
from dogetickets.data.tasks import entity_counts, entity_f1
from dogetickets.errors import DogeError
from dogetickets.report.collect import load_predictions

ALL_DATASETS = "(mean over datasets)"  # the dataset column of the rows that bootstrap the mean over datasets
BOOTSTRAP_METHOD = (
    "Paired bootstrap over test examples, resampled with replacement within each test domain "
    "(n_boot={n_boot}, numpy default_rng({seed})); statistic = mean over test domains of the per-domain "
    "metric (accuracy or strict-IOB2 entity F1), method minus baseline, each at its dev-selected configuration. "
    "Seeds are pooled by averaging the per-seed differences: every replicate's draw of test examples is "
    "applied to all seeds and the replicate value is the mean of the per-seed differences. "
    "Rows '" + ALL_DATASETS + "' bootstrap the mean over datasets of those pooled differences, all datasets "
    "resampled at once (a test domain two datasets share with the same examples drawn once for both). "
    "95% CI = percentile interval; two-sided p = (1 + #{{|d* - d| >= |d|}}) / (1 + n_boot)."
)

DEFAULT_COMPARISONS: tuple[tuple[str, str], ...] | None = None  # None: dogetickets.methods.comparisons
_CHUNK = 256


def example_stats(gold: Any, pred: Any, metric: str) -> tuple[float, ...]:
    """Additive per-example counts: (correct, 1) for accuracy, (tp, predicted, gold) for entity F1
    (strict IOB2, the metric's own :func:`~dogetickets.data.tasks.entity_counts`)."""
    if metric == "entity_f1":
        return tuple(float(c) for c in entity_counts(gold, pred))
    return float(gold == pred), 1.0


def metric_from_sums(sums: np.ndarray, metric: str) -> np.ndarray:
    """The metric from summed counts (last axis = the counts of :func:`example_stats`)."""
    if metric == "entity_f1":
        return entity_f1(sums[..., 0], sums[..., 1], sums[..., 2])
    return np.divide(sums[..., 0], sums[..., 1], out=np.zeros(sums.shape[:-1]), where=sums[..., 1] > 0)


@dataclass
class _Run:
    path: Path
    preds: dict[str, dict[int, tuple[Any, Any]]]


def _common_keys(runs: list[_Run]) -> dict[str, list[int]]:
    domains = set(runs[0].preds)
    for r in runs[1:]:
        domains &= set(r.preds)
    keys: dict[str, list[int]] = {}
    for d in sorted(domains):
        idx = set(runs[0].preds[d])
        for r in runs[1:]:
            idx &= set(r.preds[d])
        if idx:
            keys[d] = sorted(idx)
    if not keys:
        raise DogeError(
            "no test predictions shared by "
            + ", ".join(str(r.path) for r in runs)
            + " (paired by (domain, index))"
        )
    return keys


def _stats(run: _Run, keys: dict[str, list[int]], metric: str) -> dict[str, np.ndarray]:
    return {d: np.array([example_stats(*run.preds[d][i], metric) for i in idx]) for d, idx in keys.items()}


@dataclass
class _Group:
    """The (A, B) pairs of one dataset (one per seed), paired on their common test examples."""

    pairs: list[tuple[Path, Path]]
    metric: str
    keys: dict[str, list[int]]  # test domain -> the example indices every run has
    stats: list[dict[str, np.ndarray]]  # per run (a0, b0, a1, b1, ...): domain -> per-example counts
    populations: dict[str, str]  # test domain -> identity of its examples (see _population)


def _group(pairs: list[tuple[Path, Path]], metric: str) -> _Group:
    if not pairs:
        raise DogeError("paired bootstrap: no pair of runs to compare")
    runs = [_Run(Path(p), load_predictions(Path(p), "test")) for pair in pairs for p in pair]
    for r in runs:
        if not r.preds:
            raise DogeError(f"{r.path / 'predictions.jsonl'}: no test predictions")
    keys = _common_keys(runs)
    populations = {d: _population(d, idx, runs[0].preds[d]) for d, idx in keys.items()}
    return _Group(list(pairs), metric, keys, [_stats(r, keys, metric) for r in runs], populations)


def _population(domain: str, idx: list[int], preds: dict[int, tuple[Any, Any]]) -> str:
    """What a test domain's examples are: its name, the indices and their gold labels. Two datasets with
    the same population evaluate the same examples (another split of the same data with that domain held
    out), so a bootstrap over both resamples them together."""
    blob = json.dumps([domain, idx, [preds[i][0] for i in idx]], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _replicates(groups: list[_Group], n_boot: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per group: the observed score of each run (runs,) and its bootstrap replicates (n_boot, runs).

    Each replicate draws, for every population of test examples (in order of first appearance), as many
    examples as it has, with replacement; every run of every group evaluating that population is scored on
    the same draw. With one group, its domains are the populations."""
    if n_boot < 1:
        raise DogeError(f"n_boot must be at least 1, got {n_boot}")
    sizes: dict[str, int] = {}
    for g in groups:
        for d, pop in g.populations.items():
            sizes.setdefault(pop, len(g.keys[d]))
    rng = np.random.default_rng(seed)

    def score(g: _Group, weights: dict[str, np.ndarray], st: dict[str, np.ndarray]) -> np.ndarray:
        # weights[population]: (B, n) resample counts -> (B,) mean over domains of the per-domain metric.
        return np.mean([metric_from_sums(weights[g.populations[d]] @ st[d], g.metric) for d in g.keys], axis=0)

    ones = {pop: np.ones((1, n)) for pop, n in sizes.items()}
    out = [(np.array([score(g, ones, st)[0] for st in g.stats]), np.empty((n_boot, len(g.stats)))) for g in groups]
    for start in range(0, n_boot, _CHUNK):
        b = min(_CHUNK, n_boot - start)
        w = {pop: rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(float) for pop, n in sizes.items()}
        for g, (_, boot) in zip(groups, out, strict=True):
            for j, st in enumerate(g.stats):
                boot[start : start + b, j] = score(g, w, st)
    return out


def _summary(d_obs: float, d_boot: np.ndarray) -> dict[str, float]:
    lo, hi = np.percentile(d_boot, [2.5, 97.5])
    tol = 1e-12
    extreme = np.abs(d_boot - d_obs) >= abs(d_obs) - tol
    return {
        "diff": float(d_obs),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "p_value": float((1 + extreme.sum()) / (1 + len(d_boot))),
    }


def paired_bootstrap(
    pairs: list[tuple[Path, Path]],
    metric: str = "accuracy",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Bootstrap the difference A - B over the test examples, pooled over the (A, B) pairs (one per seed).

    Returns {"diff", "ci_low", "ci_high", "p_value", "a", "b", "n_examples", "per_pair": [...]} where
    per_pair holds the same numbers for each pair alone (from the same replicates).
    """
    return _paired(_group(pairs, metric), n_boot, seed)


def _paired(group: _Group, n_boot: int, seed: int) -> dict[str, Any]:
    pairs = group.pairs
    ((obs, boot),) = _replicates([group], n_boot, seed)
    obs_a, obs_b = obs[0::2], obs[1::2]
    diffs = boot[:, 0::2] - boot[:, 1::2]  # (B, pairs)
    pooled = _summary(float(np.mean(obs_a - obs_b)), diffs.mean(axis=1))
    pooled.update(
        a=float(obs_a.mean()),
        b=float(obs_b.mean()),
        n_examples=int(sum(len(v) for v in group.keys.values())),
    )
    per_pair = []
    for k, (pa, pb) in enumerate(pairs):
        s = _summary(float(obs_a[k] - obs_b[k]), diffs[:, k])
        s.update(a=float(obs_a[k]), b=float(obs_b[k]), a_path=str(pa), b_path=str(pb))
        per_pair.append(s)
    pooled["per_pair"] = per_pair
    return pooled


def bootstrap_over_datasets(
    datasets: list[tuple[list[tuple[Path, Path]], str]],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Bootstrap the mean over datasets of A - B, each dataset's difference pooled over its seeds as in
    :func:`paired_bootstrap`. `datasets`: per dataset, its (A, B) pairs and its metric.

    Datasets are resampled at once: a test domain two datasets share with the same examples (another
    split of the same data) is drawn once per replicate for both, other domains independently.
    Returns {"diff", "ci_low", "ci_high", "p_value", "a", "b", "n_examples"} (n_examples: distinct
    test examples).
    """
    return _over_datasets([_group(pairs, metric) for pairs, metric in datasets], n_boot, seed)


def _over_datasets(groups: list[_Group], n_boot: int, seed: int) -> dict[str, Any]:
    if not groups:
        raise DogeError("bootstrap over datasets: no dataset")
    reps = _replicates(groups, n_boot, seed)
    obs = np.mean([np.mean(o[0::2] - o[1::2]) for o, _ in reps])
    boot = np.mean([(b[:, 0::2] - b[:, 1::2]).mean(axis=1) for _, b in reps], axis=0)
    out = _summary(float(obs), boot)
    out.update(
        a=float(np.mean([o[0::2].mean() for o, _ in reps])),
        b=float(np.mean([o[1::2].mean() for o, _ in reps])),
        n_examples=len({(g.populations[d], i) for g in groups for d, idx in g.keys.items() for i in idx}),
    )
    return out


def bootstrap_table(
    selected: pd.DataFrame,
    comparisons: tuple[tuple[str, str], ...] | None = DEFAULT_COMPARISONS,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Paired bootstraps between dev-selected runs (one row of `selected` per dataset, method, seed).

    One row per (dataset, comparison, seed) and one pooled row (seed = "mean") per (dataset, comparison).
    With several datasets, a comparison made on every one of them gets a row (dataset = ALL_DATASETS,
    seed = "mean") for the mean over datasets (:func:`bootstrap_over_datasets`).
    Comparisons whose methods are missing, or whose runs have no test predictions, are skipped.
    """
    rows: list[dict[str, Any]] = []
    made: dict[tuple[str, str], list[tuple[_Group, str, str]]] = {}  # per comparison: (group, A, B names)
    n_datasets = selected["dataset"].nunique()
    for dataset, sel in selected.groupby("dataset", sort=False):
        metric = str(sel["metric"].iloc[0])
        for a, b in comparisons if comparisons is not None else registry.comparisons(sel["method"]):
            ra = sel[sel["method"] == a].set_index("seed")
            rb = sel[sel["method"] == b].set_index("seed")
            seeds = sorted(set(ra.index) & set(rb.index))
            if not seeds:
                continue
            pairs = [(Path(ra.loc[s, "path"]), Path(rb.loc[s, "path"])) for s in seeds]
            try:
                group = _group(pairs, metric)
            except DogeError:
                continue
            res = _paired(group, n_boot, seed)
            base = {"dataset": dataset, "comparison": f"{a} - {b}", "metric": metric, "n_boot": n_boot}
            names = [",".join(str(r.loc[s, "name"]) for s in seeds) for r in (ra, rb)]
            made.setdefault((a, b), []).append((group, *names))
            for s, pp in zip(seeds, res["per_pair"], strict=True):
                rows.append(
                    {
                        **base,
                        "seed": str(s),
                        "a_name": ra.loc[s, "name"],
                        "b_name": rb.loc[s, "name"],
                        **{k: pp[k] for k in ("a", "b", "diff", "ci_low", "ci_high", "p_value")},
                        "n_examples": res["n_examples"],
                    }
                )
            rows.append(
                {
                    **base,
                    "seed": "mean",
                    "a_name": names[0],
                    "b_name": names[1],
                    **{k: res[k] for k in ("a", "b", "diff", "ci_low", "ci_high", "p_value")},
                    "n_examples": res["n_examples"],
                }
            )
    for (a, b), per in made.items():
        if n_datasets < 2 or len(per) < n_datasets:
            continue
        res = _over_datasets([g for g, _, _ in per], n_boot, seed)
        rows.append(
            {
                "dataset": ALL_DATASETS,
                "comparison": f"{a} - {b}",
                "metric": ",".join(sorted({g.metric for g, _, _ in per})),
                "n_boot": n_boot,
                "seed": "mean",
                "a_name": ";".join(x for _, x, _ in per),
                "b_name": ";".join(x for _, _, x in per),
                **{k: res[k] for k in ("a", "b", "diff", "ci_low", "ci_high", "p_value")},
                "n_examples": res["n_examples"],
            }
        )
    cols = [
        "dataset",
        "comparison",
        "seed",
        "a_name",
        "b_name",
        "metric",
        "a",
        "b",
        "diff",
        "ci_low",
        "ci_high",
        "p_value",
        "n_boot",
        "n_examples",
    ]
    return pd.DataFrame(rows, columns=cols)

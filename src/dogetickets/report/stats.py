"""Paired bootstrap over test examples.

Statistic: the mean over test domains of the per-domain metric (accuracy, or strict-IOB2 entity F1 for
NER), for run A minus run B, where A and B are the dev-selected configurations of two methods.

Resampling: each replicate draws, within every test domain separately, as many examples as the domain
has, with replacement; both runs (paired by (domain, index)) are scored on the same draw.

Seeds: the test examples are the same for every seed, so one replicate's draw is applied to every seed
and the replicate's value is the MEAN OVER SEEDS OF THE PER-SEED DIFFERENCES; the pooled observed
difference is likewise the mean of the per-seed differences. Only test-example sampling is resampled;
the spread over seeds is what Table 2's ± shows. Per-seed rows come from the same replicates.

CI: 2.5/97.5 percentiles of the replicate values. Two-sided p-value of "no difference": the replicate
distribution shifted to mean zero under the null, p = (1 + #{|d* - d| >= |d|}) / (1 + n_boot).

Entity F1 on a resample is computed from per-sentence counts (true positives, predicted and gold
entities under strict IOB2), with the very functions the metric uses (``data.tasks.entity_counts`` and
``entity_f1``): summing the counts over the drawn sentences and taking 2 TP / (P + G) is the table's
entity F1 (``TokenTagging.score``, seqeval's strict mode) on the drawn list of sequences, to the bit on
the observed data, without a Python loop per replicate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dogetickets import methods as registry
from dogetickets.data.tasks import entity_counts, entity_f1
from dogetickets.errors import DogeError
from dogetickets.report.collect import load_predictions

BOOTSTRAP_METHOD = (
    "Paired bootstrap over test examples, resampled with replacement within each test domain "
    "(n_boot={n_boot}, numpy default_rng({seed})); statistic = mean over test domains of the per-domain "
    "metric (accuracy or strict-IOB2 entity F1), method minus baseline, each at its dev-selected configuration. "
    "Seeds are pooled by averaging the per-seed differences: every replicate's draw of test examples is "
    "applied to all seeds and the replicate value is the mean of the per-seed differences. "
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
    if not pairs:
        raise DogeError("paired bootstrap: no pair of runs to compare")
    if n_boot < 1:
        raise DogeError(f"n_boot must be at least 1, got {n_boot}")
    runs = [_Run(Path(p), load_predictions(Path(p), "test")) for pair in pairs for p in pair]
    for r in runs:
        if not r.preds:
            raise DogeError(f"{r.path / 'predictions.jsonl'}: no test predictions")
    keys = _common_keys(runs)
    stats = [_stats(r, keys, metric) for r in runs]
    domains = list(keys)
    rng = np.random.default_rng(seed)

    def score(weights: dict[str, np.ndarray], st: dict[str, np.ndarray]) -> np.ndarray:
        # weights[d]: (B, n_d) resample counts -> (B,) mean over domains of the per-domain metric.
        return np.mean([metric_from_sums(weights[d] @ st[d], metric) for d in domains], axis=0)

    ones = {d: np.ones((1, len(keys[d]))) for d in domains}
    obs = np.array([score(ones, st)[0] for st in stats])  # per run
    obs_a, obs_b = obs[0::2], obs[1::2]

    boot = np.empty((n_boot, len(runs)))
    for start in range(0, n_boot, _CHUNK):
        b = min(_CHUNK, n_boot - start)
        w = {
            d: rng.multinomial(len(keys[d]), np.full(len(keys[d]), 1.0 / len(keys[d])), size=b)
            for d in domains
        }
        w = {d: x.astype(float) for d, x in w.items()}
        for j, st in enumerate(stats):
            boot[start : start + b, j] = score(w, st)
    diffs = boot[:, 0::2] - boot[:, 1::2]  # (B, pairs)

    def summary(d_obs: float, d_boot: np.ndarray) -> dict[str, float]:
        lo, hi = np.percentile(d_boot, [2.5, 97.5])
        tol = 1e-12
        extreme = np.abs(d_boot - d_obs) >= abs(d_obs) - tol
        return {
            "diff": float(d_obs),
            "ci_low": float(lo),
            "ci_high": float(hi),
            "p_value": float((1 + extreme.sum()) / (1 + len(d_boot))),
        }

    pooled = summary(float(np.mean(obs_a - obs_b)), diffs.mean(axis=1))
    pooled.update(
        a=float(obs_a.mean()),
        b=float(obs_b.mean()),
        n_examples=int(sum(len(v) for v in keys.values())),
    )
    per_pair = []
    for k, (pa, pb) in enumerate(pairs):
        s = summary(float(obs_a[k] - obs_b[k]), diffs[:, k])
        s.update(a=float(obs_a[k]), b=float(obs_b[k]), a_path=str(pa), b_path=str(pb))
        per_pair.append(s)
    pooled["per_pair"] = per_pair
    return pooled


def bootstrap_table(
    selected: pd.DataFrame,
    comparisons: tuple[tuple[str, str], ...] | None = DEFAULT_COMPARISONS,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Paired bootstraps between dev-selected runs (one row of `selected` per dataset, method, seed).

    One row per (dataset, comparison, seed) and one pooled row (seed = "mean") per (dataset, comparison).
    Comparisons whose methods are missing, or whose runs have no test predictions, are skipped.
    """
    rows: list[dict[str, Any]] = []
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
                res = paired_bootstrap(pairs, metric=metric, n_boot=n_boot, seed=seed)
            except DogeError:
                continue
            base = {"dataset": dataset, "comparison": f"{a} - {b}", "metric": metric, "n_boot": n_boot}
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
                    "a_name": ",".join(str(ra.loc[s, "name"]) for s in seeds),
                    "b_name": ",".join(str(rb.loc[s, "name"]) for s in seeds),
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

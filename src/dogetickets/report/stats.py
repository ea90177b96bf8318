"""Paired comparisons of two methods on the test set: a two-level bootstrap over seeds and test examples.

Statistic: the mean over test domains of the per-domain metric (accuracy, or strict-IOB2 entity F1 for
NER), for method A minus method B, each at its dev-selected configuration; with several seeds, the mean
over seeds of the per-seed differences d_s (and over datasets, the mean of the datasets' means).

Where the noise comes from. A study's difference D varies with the seeds (each seed fine-tunes another
model) and with the test examples (another test set of the same domains). The test examples are the SAME
for every seed, so the model behind the intervals is the crossed one, per example i and seed s:
d_si = Delta + u_s + delta_i + eps_si, with seed effects u_s (var sigma_u^2), per-example effects shared by
every seed delta_i (sigma_delta^2) and seed-specific per-example noise eps_si (sigma_eps^2). With S seeds
and N test examples, Var(D) = sigma_u^2/S + sigma_delta^2/N + sigma_eps^2/(S N).

Resampling. Each replicate draws, within every test domain separately, as many examples as the domain
has, with replacement (one draw per population of test examples, applied to every seed and to both
methods: the pairing is by (domain, index)); each seed's difference d*_s is scored on that draw. The
second level, seeds drawn with replacement within each split, is taken exactly instead of by Monte Carlo:
for a given example draw, the variance over seed draws of the mean of the d*_s is sum_s (d*_s - mean)^2/S^2.

The two-level interval (the headline columns ci_low, ci_high, p_value):

- U = s^2(d)/S: the variance over seeds of the observed per-seed differences (ddof 1) over S, the
  t-test's squared standard error. It holds sigma_u^2/S and the seed-specific example noise sigma_eps^2/(SN).
- V_ex: the variance over replicates of the mean of the d*_s, the test-set noise alone (sigma_delta^2/N +
  sigma_eps^2/(SN)).
- I = mean over replicates of s^2(d*)/S, minus U: how much redrawing the test examples widens the spread
  of the seeds, i.e. the seed-specific example noise sigma_eps^2/(SN), which U already contains.
- SE^2 = U + X with X = max(0, V_ex - I), the test-set noise shared by all seeds. This is the
  method-of-moments (two-way ANOVA) estimate of Var(D), its shared-example part truncated at 0. A plain
  percentile bootstrap over seeds and examples instead shrinks the seed part by (S-1)/S and counts the
  seed-specific example noise up to three times; with 3 seeds it also has only 10 distinct seed draws and
  normal-like tails where the t with 2 df has 4.30.
- Degrees of freedom: U has k = S-1 (with several splits, the Satterthwaite df of the sum of their U's,
  with unbiased estimates of the squared parts: exactly S-1 for one split); X is known to within its N-1
  df. With rho = U/SE^2, the interval is D +- t_nu SE and p = 2 P(t_nu > |D|/SE) with
  1/nu = rho^g/k + (1-rho)^2/(N-1). The exponent g = g(k) is calibrated numerically (df_exponent) so
  that, under the normal model, the 95% interval covers for every ratio of seed to shared-example variance
  as closely to 95% as one exponent allows (within 1.1 points at k = 2, 0.4 at k = 4, 0.1 from k = 9):
  g = 2 is Satterthwaite's df, which under-covers at small k (92.2% in the worst case with 3 seeds), and a
  plain t with k df over-covers when test-set noise dominates. With one seed there is no seed-level
  variance: the two-level and seed-level columns are empty and only test-set noise can be shown.

Beside it (labelled columns): "test-set noise only", ex_ci_low/ex_ci_high/ex_p_value, the paired bootstrap
over test examples with the seeds fixed: 2.5/97.5 percentiles of the replicate values; p = (1 +
#{|d* - d| >= |d|}) / (1 + n_boot) (the replicates shifted to mean zero under the null). And the
t-interval over the seed-level differences, t_ci_low/t_ci_high/t_p_value: D +- t_k sqrt(U) (scipy's t;
several splits: Welch-Satterthwaite df), which ignores the test-set noise all seeds share.

Datasets (splits): seeds are resampled within each split; the mean over datasets of the per-dataset
differences takes U and I as the sums of the splits' own over K^2 (the splits' seeds are independent
fine-tunings) and V_ex from every dataset resampled in the same replicate: a test domain that two datasets
share with the same examples (Amazon A and C both test on Industrial_and_Scientific) is one population,
drawn once per replicate for both, since their errors on it are not independent.

Power (:class:`Design`): the variance parts of the design as run, seed = max(0, U - I) (sigma_u^2/S),
shared = X (sigma_delta^2/N) and interaction = I (sigma_eps^2/(SN)), scale with other numbers of seeds S'
and test examples N' as seed S/S', shared N/N', interaction SN/(S'N'). The power of the two-level test to
detect a true difference Delta is P(|T| > t_nu) for T noncentral t with noncentrality Delta/SE and the
Satterthwaite df of SE^2; :func:`detectable_difference` solves it for 80% power at alpha = 0.05,
:func:`seeds_needed` and :func:`examples_needed` for the design that detects a given difference.

Entity F1 on a resample is computed from per-sentence counts (true positives, predicted and gold
entities under strict IOB2), with the very functions the metric uses (``data.tasks.entity_counts`` and
``entity_f1``): summing the counts over the drawn sentences and taking 2 TP / (P + G) is the table's
entity F1 (``TokenTagging.score``, seqeval's strict mode) on the drawn list of sequences, to the bit on
the observed data, without a Python loop per replicate. For such a non-linear metric the variance parts
above hold for its linearization (to first order in 1/N).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

from dogetickets import methods as registry
from dogetickets.data.tasks import entity_counts, entity_f1
from dogetickets.errors import DogeError
from dogetickets.report.collect import load_predictions

ALL_DATASETS = "(mean over datasets)"  # the dataset column of the rows that bootstrap the mean over datasets
LEVEL = 0.95  # of every interval
ONE_POINT = 0.01  # the difference the power section asks about: 1 point of the metric
BOOTSTRAP_METHOD = (
    "Two-level paired bootstrap (n_boot={n_boot}, numpy default_rng({seed})): each replicate draws the test "
    "examples with replacement within each test domain, one draw shared by every seed and both methods (the "
    "test set is the same for every seed; a test domain two datasets share is drawn once for both), and the "
    "seeds with replacement within each dataset, the seed level taken exactly rather than by Monte Carlo. "
    "Statistic: mean over test domains of the metric (accuracy or strict-IOB2 entity F1), method minus "
    "baseline, each at its dev-selected configuration, averaged over seeds. Its standard error: SE^2 = "
    "s^2(d)/S + max(0, V_ex - I), where s^2(d)/S is the variance of the S per-seed differences over S (the "
    "seed-level variance, which holds the seeds' own spread and their seed-specific test noise), V_ex the "
    "replicates' variance with the seeds fixed (test-set noise) and I = mean over replicates of s^2(d*)/S "
    "minus s^2(d)/S, the seed-specific test noise that s^2(d)/S already holds: the method-of-moments estimate "
    "of the variance under seed effects + per-example effects shared by all seeds + seed-specific noise. "
    "95% CI = D +- t_nu SE and p = 2 P(t_nu > |D|/SE), with nu from the S-1 df of the seed level and the "
    "seed-level share rho of SE^2 (1/nu = rho^g/(S-1) + (1-rho)^2/(N-1), g calibrated for 95% coverage under "
    "the normal model; checked by simulation at 3 and 5 seeds). With 3 seeds a bootstrap over seeds is "
    "coarse: resampling 3 values gives 10 distinct draws, shrinks their variance by 2/3 and has normal-like "
    "tails where the t with 2 df has 4.30, so seeds enter through their variance and t quantiles, not "
    "through percentiles. 'test-set noise only': the paired bootstrap over test examples with the seeds "
    "fixed (percentile interval; p = (1 + #{{|d* - d| >= |d|}}) / (1 + n_boot)), which leaves out the "
    "seed-to-seed spread. 't over seeds': D +- t_(S-1) s(d)/sqrt(S), which leaves out the test noise the "
    "seeds share. Rows '" + ALL_DATASETS + "': the mean over datasets of the pooled differences, seeds "
    "resampled within each dataset (their seed levels add up), all datasets' test examples in the same "
    "replicates. One seed: no seed level; only the test-set noise can be shown."
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


# ---- the two-level interval: pure functions on per-seed differences (vectorized over leading axes) -----
_NODES = 400  # chi-square quantile nodes of the coverage integral in df_exponent
_RATIOS = np.r_[0.0, np.logspace(-3, 3, 31)]  # shared-example / seed-level variance ratios it calibrates over


@functools.lru_cache(maxsize=512)
def _df_exponent(k: float, level: float) -> float:
    nodes = (np.arange(_NODES) + 0.5) / _NODES
    w = sps.chi2.ppf(nodes, k)[None, :] / k  # the seed-level variance over its expectation: chi2_k / k
    r = _RATIOS[:, None]  # shared-example variance over the seed level's expectation
    rho = w / (w + r)  # the seed-level share of SE^2 in that case
    scale = np.sqrt((w + r) / (1 + r))  # SE over the true standard deviation of D
    tail = 0.5 + level / 2

    def worst(g: float) -> float:
        q = sps.t.ppf(tail, k / np.maximum(rho, 1e-300) ** g)
        coverage = (2 * sps.norm.cdf(q * scale) - 1).mean(axis=1)
        return float(np.max(np.abs(coverage - level)))

    res = optimize.minimize_scalar(worst, bounds=(0.25, 3.0), method="bounded", options={"xatol": 1e-4})
    return float(res.x)


_K_GRID = (1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32, 64, 128, 256)  # df_exponent's nodes


def df_exponent(k: float, level: float = LEVEL) -> float:
    """The exponent g of the two-level interval's df, 1/nu = rho^g/k (see the module docstring), for a
    seed-level variance with k degrees of freedom: the g whose `level` interval D +- t_nu SE covers, under the
    normal model with the shared-example variance known, as closely to `level` as one exponent allows for
    every ratio of seed-level to shared-example variance (numerical integration over chi2_k at 400 nodes,
    ratios 1e-3..1e3). 2 would be Satterthwaite's df. Computed at the k of _K_GRID, interpolated linearly
    in log k between them (k from 1 to 256; outside, the nearest end)."""
    if not k > 0:
        raise ValueError(f"degrees of freedom must be positive, got {k}")
    k = min(max(float(k), _K_GRID[0]), _K_GRID[-1])
    level = round(float(level), 6)
    j = int(np.searchsorted(_K_GRID, k))
    if _K_GRID[j] == k:
        return _df_exponent(float(k), level)
    k0, k1 = _K_GRID[j - 1], _K_GRID[j]
    f = math.log(k / k0) / math.log(k1 / k0)
    return (1 - f) * _df_exponent(float(k0), level) + f * _df_exponent(float(k1), level)


def _exponents(k: np.ndarray, level: float) -> np.ndarray:
    k = np.asarray(k, dtype=float)
    out = np.full(k.shape, np.nan)
    ok = np.isfinite(k) & (k > 0)
    for v in np.unique(np.round(k[ok], 2)):
        out[ok & (np.round(k, 2) == v)] = df_exponent(float(v), level)
    return out


def interval_df(rho: Any, k: Any, n_examples: Any, level: float = LEVEL) -> np.ndarray:
    """The two-level interval's degrees of freedom: 1/nu = rho^g(k)/k + (1-rho)^2/(n_examples-1), rho the
    seed-level share of SE^2, k the seed level's df."""
    rho, k, n = (np.asarray(x, dtype=float) for x in (rho, k, n_examples))
    g = _exponents(k, level)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(rho > 0, rho**g / k, 0.0) + (1 - rho) ** 2 / np.maximum(n - 1, 1)
        return 1.0 / inv


def _var(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.var(x, axis=axis, ddof=1) if x.shape[axis] > 1 else np.full(np.delete(x.shape, axis % x.ndim), np.nan)


def _seed_df(u_k: list[np.ndarray], seeds: list[int]) -> np.ndarray:
    """The df of the seed level sum_k U_k (the 1/K^2 cancels): Satterthwaite's, with unbiased estimates of
    the squares (E U_k^2 = (E U_k)^2 (1 + 2/f_k), f_k = S_k - 1): (sum U_k)^2 / sum U_k^2/(f_k + 2) - 2,
    within [min f_k, sum f_k]. For one split, exactly S - 1. (The plain plug-in Satterthwaite df
    underestimates the df of a sum of similar parts, over-covering to ~97% with three datasets.)"""
    f = [s - 1 for s in seeds]
    total = float(sum(f))
    if min(f) < 1:
        return np.full(np.shape(u_k[0]), np.nan)
    u = sum(u_k)
    squares = sum(x**2 / (fk + 2) for x, fk in zip(u_k, f, strict=True))
    return np.where(u > 0, np.clip(u**2 / squares - 2, float(min(f)), total), total)


def two_level(
    obs: Sequence[np.ndarray],
    boot: Sequence[np.ndarray],
    n_examples: Any,
    level: float = LEVEL,
) -> dict[str, np.ndarray]:
    """The two-level interval and the two beside it, from per-seed differences (module docstring).

    `obs[k]`: (..., S_k) the observed per-seed differences A - B of split k; `boot[k]`: (..., n_boot, S_k)
    the same on each replicate's draw of test examples (replicate b of every split on the same draw of the
    populations they share). `n_examples`: the test examples (the shared-example variance's df + 1).
    Leading axes are independent studies (the calibration simulation). Returns arrays: diff, se, df,
    ci_low, ci_high, p_value (two-level), var_seed_level (U), var_shared (X), var_interaction (I),
    seed_df, ex_ci_low, ex_ci_high, ex_p_value (test-set noise only), t_ci_low, t_ci_high, t_p_value
    (t over seeds).
    """
    if not obs or len(obs) != len(boot):
        raise DogeError("two-level bootstrap: one array of per-seed differences and one of replicates per split")
    n_splits = len(obs)
    obs = [np.asarray(o, dtype=float) for o in obs]
    boot = [np.asarray(b, dtype=float) for b in boot]
    tail = 0.5 + level / 2
    diff = sum(o.mean(axis=-1) for o in obs) / n_splits
    seeds = [o.shape[-1] for o in obs]
    u_k = [_var(o) / s for o, s in zip(obs, seeds, strict=True)]  # per split: s^2(d)/S
    i_k = [_var(b).mean(axis=-1) / s - u for b, s, u in zip(boot, seeds, u_k, strict=True)]
    u = sum(u_k) / n_splits**2
    inter = sum(i_k) / n_splits**2
    rep = sum(b.mean(axis=-1) for b in boot) / n_splits  # (..., n_boot): the replicates with the seeds fixed
    v_ex = np.var(rep, axis=-1, ddof=1)
    shared = np.maximum(v_ex - inter, 0.0)
    var = u + shared
    with np.errstate(divide="ignore", invalid="ignore"):
        seed_df = _seed_df(u_k, seeds)
        rho = np.where(var > 0, u / var, 1.0)
        nu = interval_df(rho, seed_df, n_examples, level)
        se = np.sqrt(var)
        half = sps.t.ppf(tail, nu) * se
        stat = np.abs(diff) / se
        p = np.where(var > 0, 2 * sps.t.sf(stat, nu), np.where(diff == 0, 1.0, 0.0))
        t_half = sps.t.ppf(tail, seed_df) * np.sqrt(u)
        t_p = np.where(u > 0, 2 * sps.t.sf(np.abs(diff) / np.sqrt(u), seed_df), np.where(diff == 0, 1.0, 0.0))
    lo, hi = np.percentile(rep, [100 * (1 - tail), 100 * tail], axis=-1)
    extreme = np.abs(rep - diff[..., None]) >= np.abs(diff)[..., None] - 1e-12
    ex_p = (1 + extreme.sum(axis=-1)) / (1 + rep.shape[-1])
    nan = np.isnan(var)
    return {
        "diff": diff,
        "se": se,
        "df": np.where(nan, np.nan, nu),
        "ci_low": diff - half,
        "ci_high": diff + half,
        "p_value": np.where(nan, np.nan, p),
        "var_seed_level": u,
        "var_shared": shared,
        "var_interaction": np.where(nan, np.nan, inter),
        "seed_df": np.where(nan, np.nan, seed_df),
        "ex_ci_low": lo,
        "ex_ci_high": hi,
        "ex_p_value": ex_p,
        "t_ci_low": diff - t_half,
        "t_ci_high": diff + t_half,
        "t_p_value": np.where(nan, np.nan, t_p),
    }


# ---- power ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Design:
    """The variance of a comparison's mean difference D in the design as run, in parts, and that design.

    seed: sigma_u^2/S (seed effects); shared: sigma_delta^2/N (test-example effects every seed shares);
    interaction: sigma_eps^2/(S N) (seed-specific test-example noise). n_seeds S per split, n_examples N per
    split, n_splits K (the mean over K datasets: the seed level has K (S-1) df)."""

    seed: float
    shared: float
    interaction: float
    n_seeds: float
    n_examples: float
    n_splits: int = 1

    def at(self, seeds: float | None = None, examples: float | None = None) -> tuple[float, float, float, float]:
        """(Var(D), the seed level's share rho, its df, test examples) with `seeds` seeds and `examples` test
        examples per split (default: as run)."""
        s = float(seeds if seeds is not None else self.n_seeds)
        n = float(examples if examples is not None else self.n_examples)
        fs, fn = s / self.n_seeds, n / self.n_examples
        seed_level = self.seed / fs + self.interaction / (fs * fn)
        var = seed_level + self.shared / fn
        rho = seed_level / var if var > 0 else 1.0
        return var, rho, self.n_splits * (s - 1), n * self.n_splits

    @classmethod
    def from_result(cls, res: dict[str, Any]) -> Design | None:
        """The design of a :func:`paired_bootstrap` / :func:`bootstrap_over_datasets` result (None without a
        seed level). The seed part is the seed-level variance less the interaction, floored at 0."""
        u, inter, shared = (float(res.get(k, math.nan)) for k in ("var_seed_level", "var_interaction", "var_shared"))
        if not all(map(math.isfinite, (u, inter, shared))) or res.get("n_seeds", 1) < 2:
            return None
        inter = max(inter, 0.0)
        return cls(max(u - inter, 0.0), shared, inter, float(res["n_seeds"]), float(res["n_examples_per_split"]),
                   int(res.get("n_splits", 1)))


def power(design: Design, diff: float, seeds: float | None = None, examples: float | None = None,
          alpha: float = 0.05) -> float:
    """The probability that the two-level test at level alpha (two-sided) rejects "no difference" when the
    true difference is `diff`, with `seeds` seeds and `examples` test examples per split (default: as run):
    P(|T| > t_nu) for T noncentral t (noncentrality |diff|/SE, the Satterthwaite df of SE^2), nu the
    interval's df."""
    var, rho, k, n = design.at(seeds, examples)
    if k <= 0:
        raise ValueError("power needs at least 2 seeds")
    if var <= 0:
        return 1.0 if diff != 0 else alpha
    nu = float(interval_df(rho, k, n, 1 - alpha))
    q = sps.t.ppf(1 - alpha / 2, nu)
    nu_se = 1.0 / (rho**2 / k + (1 - rho) ** 2 / max(n - 1, 1))
    lam = abs(diff) / math.sqrt(var)
    far = float(sps.nct.cdf(-q, nu_se, lam))  # the wrong side: negligible, and NaN in scipy for large lam
    return float(min(1.0, sps.nct.sf(q, nu_se, lam) + (far if math.isfinite(far) else 0.0)))


def detectable_difference(design: Design, seeds: float | None = None, examples: float | None = None,
                          alpha: float = 0.05, target: float = 0.8) -> float:
    """The smallest true difference the design detects with probability `target` (two-sided, level alpha)."""
    var, _, _, _ = design.at(seeds, examples)
    if var <= 0:
        return 0.0
    hi = math.sqrt(var)
    while power(design, hi, seeds, examples, alpha) < target:
        hi *= 2
    return float(optimize.brentq(lambda d: power(design, d, seeds, examples, alpha) - target, 0.0, hi, xtol=1e-9 * hi))


def _smallest(ok: Any, lo: int, hi: int) -> int | None:
    """The smallest integer in [lo, hi] with ok(n) (ok monotone), None if not even hi."""
    if not ok(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return lo


def seeds_needed(design: Design, diff: float = ONE_POINT, examples: float | None = None, alpha: float = 0.05,
                 target: float = 0.8, max_seeds: int = 10_000) -> int | None:
    """The fewest seeds (per split) that detect `diff` with probability `target`, at `examples` test examples
    (default: as run); None if even `max_seeds` do not (the test noise all seeds share is too large)."""
    return _smallest(lambda s: power(design, diff, s, examples, alpha) >= target, 2, max_seeds)


def examples_needed(design: Design, diff: float = ONE_POINT, seeds: float | None = None, alpha: float = 0.05,
                    target: float = 0.8, max_factor: float = 1e4) -> int | None:
    """The fewest test examples (per split) that detect `diff` with probability `target`, at `seeds` seeds
    (default: as run); None if even max_factor times the test set does not (the seed spread is too large)."""
    n = int(design.n_examples)
    return _smallest(lambda m: power(design, diff, seeds, m, alpha) >= target, 2, int(n * max_factor))


# ---- the comparisons of a report ------------------------------------------------------------------------
def _for_one_point(design: Design | None) -> dict[str, Any]:
    """Power fields: the difference detected with 80% power at alpha 0.05, and what detects 1 point."""
    out: dict[str, Any] = {"mdd": math.nan, "seeds_for_1pt": math.nan, "examples_for_1pt": math.nan, "for_1pt": ""}
    if design is None:
        return out
    s, n = int(round(design.n_seeds)), int(round(design.n_examples))
    out["mdd"] = detectable_difference(design)
    seeds, examples = seeds_needed(design), examples_needed(design)
    out["seeds_for_1pt"] = math.nan if seeds is None else seeds
    out["examples_for_1pt"] = math.nan if examples is None else examples
    ways = []
    if seeds is not None:
        ways.append(f"{seeds} seeds (at {n:,} test examples)" if seeds > s else f"{s} seeds (as run)")
    if examples is not None and examples > n:
        ways.append(f"{examples:,} test examples (at {s} seeds)")
    if not ways:
        f = 2
        while power(design, ONE_POINT, s * f, n * f) < 0.8 and f < 1 << 20:
            f *= 2
        ways.append(f"more seeds and more test examples, e.g. {s * f} seeds and {n * f:,} test examples")
    out["for_1pt"] = " or ".join(ways)
    return out


def _result(obs: list[np.ndarray], boot: list[np.ndarray], n_examples: int, per_split: float) -> dict[str, Any]:
    out: dict[str, Any] = {k: float(v) for k, v in two_level(obs, boot, n_examples).items()}
    seeds = [o.shape[-1] for o in obs]
    out.update(n_seeds=float(np.mean(seeds)), n_splits=len(obs), n_examples_per_split=float(per_split))
    design = Design.from_result(out)
    out["var_seed"] = design.seed if design is not None else math.nan
    out.update(_for_one_point(design))
    return out


def paired_bootstrap(
    pairs: list[tuple[Path, Path]],
    metric: str = "accuracy",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The two-level bootstrap of A - B over seeds (the (A, B) pairs, one per seed) and test examples.

    Returns {"diff", "ci_low", "ci_high", "p_value" (two-level), "se", "df", "ex_ci_low", "ex_ci_high",
    "ex_p_value" (test-set noise only), "t_ci_low", "t_ci_high", "t_p_value" (t over seeds), the variance
    parts, power ("mdd", "seeds_for_1pt", "examples_for_1pt", "for_1pt"), "a", "b", "n_seeds",
    "n_examples", "per_pair": [...]} where per_pair holds each pair alone (its test-set noise only, from the
    same replicates). With one pair the two-level and seed-level numbers are NaN.
    """
    return _paired(_group(pairs, metric), n_boot, seed)


def _paired(group: _Group, n_boot: int, seed: int) -> dict[str, Any]:
    pairs = group.pairs
    ((obs, boot),) = _replicates([group], n_boot, seed)
    obs_a, obs_b = obs[0::2], obs[1::2]
    d_obs, d_boot = obs_a - obs_b, boot[:, 0::2] - boot[:, 1::2]  # (pairs,), (B, pairs)
    n = int(sum(len(v) for v in group.keys.values()))
    pooled = _result([d_obs], [d_boot], n, n)
    pooled.update(a=float(obs_a.mean()), b=float(obs_b.mean()), n_examples=n)
    per_pair = []
    for k, (pa, pb) in enumerate(pairs):
        s = {key: float(v) for key, v in two_level([d_obs[k : k + 1]], [d_boot[:, k : k + 1]], n).items()}
        s.update(a=float(obs_a[k]), b=float(obs_b[k]), a_path=str(pa), b_path=str(pb))
        per_pair.append(s)
    pooled["per_pair"] = per_pair
    return pooled


def bootstrap_over_datasets(
    datasets: list[tuple[list[tuple[Path, Path]], str]],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The two-level bootstrap of the mean over datasets of A - B, each dataset's difference pooled over its
    seeds as in :func:`paired_bootstrap`. `datasets`: per dataset, its (A, B) pairs and its metric.

    Seeds are resampled within each dataset; test examples of every dataset in the same replicates (a test
    domain two datasets share with the same examples is drawn once per replicate for both, other domains
    independently). Returns the keys of :func:`paired_bootstrap` without per_pair (n_examples: distinct test
    examples).
    """
    return _over_datasets([_group(pairs, metric) for pairs, metric in datasets], n_boot, seed)


def _over_datasets(groups: list[_Group], n_boot: int, seed: int) -> dict[str, Any]:
    if not groups:
        raise DogeError("bootstrap over datasets: no dataset")
    reps = _replicates(groups, n_boot, seed)
    n = _distinct_examples(groups)
    per_split = float(np.mean([sum(len(v) for v in g.keys.values()) for g in groups]))
    out = _result([o[0::2] - o[1::2] for o, _ in reps], [b[:, 0::2] - b[:, 1::2] for _, b in reps], n, per_split)
    out.update(
        a=float(np.mean([o[0::2].mean() for o, _ in reps])),
        b=float(np.mean([o[1::2].mean() for o, _ in reps])),
        n_examples=n,
    )
    return out


_SCALED = ("diff", "se", "ci_low", "ci_high", "ex_ci_low", "ex_ci_high", "t_ci_low", "t_ci_high")


def _distinct_examples(groups: list[_Group]) -> int:
    """The test examples of `groups`, a population two groups share counted once."""
    return len({(g.populations[d], i) for g in groups for d, idx in g.keys.items() for i in idx})


def bootstrap_change(
    more: list[tuple[Path, Path]],
    fewer: list[tuple[Path, Path]],
    metric: str = "accuracy",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The two-level bootstrap of how a paired difference changes between two designs tested on the same
    test domains: (A - B of the `more` pairs) - (A - B of the `fewer` pairs), each pooled over its seeds
    (e.g. doge - ERM trained on 5 and on 3 domains: the paper's Table 4).

    The two designs' seeds are independent fine-tunings (resampled within each); their test examples are the
    same populations, drawn once per replicate for both, so the test-set noise they share cancels in the
    change rather than adding up. Computed as twice the mean over the two splits of (d_more, -d_fewer) in
    :func:`two_level`. Returns diff, se, df, ci_low, ci_high, p_value (two-level), ex_ci_low, ex_ci_high,
    ex_p_value (test-set noise only), t_ci_low, t_ci_high, t_p_value (t over seeds), n_examples.
    """
    groups = [_group(more, metric), _group(fewer, metric)]
    (o1, b1), (o2, b2) = _replicates(groups, n_boot, seed)
    obs = [o1[0::2] - o1[1::2], -(o2[0::2] - o2[1::2])]
    reps = [b1[:, 0::2] - b1[:, 1::2], -(b2[:, 0::2] - b2[:, 1::2])]
    n = _distinct_examples(groups)
    res = two_level(obs, reps, n)
    out = {k: float(v) for k, v in res.items() if k in (*_SCALED, "df", "p_value", "ex_p_value", "t_p_value")}
    for k in _SCALED:
        out[k] *= 2.0
    out["n_examples"] = n
    return out


TWO_LEVEL = ("ci_low", "ci_high", "p_value", "se", "df")
EXAMPLE_ONLY = ("ex_ci_low", "ex_ci_high", "ex_p_value")
SEED_LEVEL = ("t_ci_low", "t_ci_high", "t_p_value")
POWER = ("n_seeds", "n_examples_per_split", "var_seed_level", "var_seed", "var_shared", "var_interaction", "mdd",
         "seeds_for_1pt", "examples_for_1pt", "for_1pt")
COLUMNS = ["dataset", "comparison", "seed", "a_name", "b_name", "metric", "a", "b", "diff", *TWO_LEVEL,
           *EXAMPLE_ONLY, *SEED_LEVEL, *POWER, "n_boot", "n_examples"]


def bootstrap_table(
    selected: pd.DataFrame,
    comparisons: tuple[tuple[str, str], ...] | None = DEFAULT_COMPARISONS,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Paired comparisons between dev-selected runs (one row of `selected` per dataset, method, seed).

    One row per (dataset, comparison, seed) with that seed's difference and its test-set-noise-only
    interval, and one pooled row (seed = "mean") per (dataset, comparison) with every column (COLUMNS).
    With several datasets, a comparison made on every one of them gets a row (dataset = ALL_DATASETS,
    seed = "mean") for the mean over datasets (:func:`bootstrap_over_datasets`).
    Comparisons whose methods are missing, or whose runs have no test predictions, are skipped.
    """
    rows: list[dict[str, Any]] = []
    made: dict[tuple[str, str], list[tuple[_Group, str, str]]] = {}  # per comparison: (group, A, B names)
    n_datasets = selected["dataset"].nunique()
    pooled_keys = ("a", "b", "diff", *TWO_LEVEL, *EXAMPLE_ONLY, *SEED_LEVEL, *POWER)
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
                        **{k: pp[k] for k in ("a", "b", "diff", *EXAMPLE_ONLY)},
                        "n_seeds": 1,
                        "n_examples": res["n_examples"],
                    }
                )
            rows.append(
                {
                    **base,
                    "seed": "mean",
                    "a_name": names[0],
                    "b_name": names[1],
                    **{k: res[k] for k in pooled_keys},
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
                **{k: res[k] for k in pooled_keys},
                "n_examples": res["n_examples"],
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)

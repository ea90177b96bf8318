"""The two-level interval and the power of a design (report.stats), checked by simulation and closed forms.

The calibration simulation draws whole studies the way a run directory holds them: every seed of both
methods is scored on the same test examples (per-example difficulty shared by seeds and methods, a
method-specific per-example effect, seed effects, seed-specific per-example noise), the correctness of each
prediction is binary, the statistic is the mean over three test domains of the per-domain accuracy and the
truth is the population difference (over seeds and examples), known in closed form under the probit model.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from dogetickets.report import stats as st

N_STUDIES = 2000
N_BOOT = 200  # per simulated study: enough for V_ex and I within a few % (their Monte Carlo error ~ sqrt(2/B))
DOMAIN_OFFSETS = np.array([-0.3, 0.0, 0.4])  # three test domains of different difficulty
PER_DOMAIN = 100  # test examples per domain: 300 per study

# Probit model: example i of domain o is right for method m in seed s when
#   mu_m + o + u_ms + z_i + w_mi + e_msi > 0,
# z_i ~ N(0, tau^2) difficulty shared by seeds and methods, w_mi ~ N(0, sd_w^2) method-specific per-example
# effects (corr rho_w between the methods), u_ms ~ N(0, sd_seed^2) seed effects (corr rho_u), e_msi ~ N(0, 1)
# seed-specific noise (corr rho_e: the two methods of a seed predict alike).
REGIMES = {
    # the seeds' own spread dominates: seed sd of the difference 2.9 points, test noise ~0.8 point
    "seed-dominated": dict(sd_seed=0.08, rho_u=0.0, tau=1.0, sd_w=0.1, rho_w=0.9, rho_e=0.97),
    # seed sd of the difference 0.75 point; test noise per seed ~1.6 points, mostly seed-specific
    "realistic": dict(sd_seed=0.025, rho_u=0.3, tau=1.0, sd_w=0.2, rho_w=0.8, rho_e=0.85),
    # seed sd 0.1 point; large per-example effects every seed shares
    "example-dominated": dict(sd_seed=0.01, rho_u=0.9, tau=1.0, sd_w=0.5, rho_w=0.5, rho_e=0.9),
}
MU_A, MU_B = 0.55, 0.5  # true difference ~ 1.6 points


def _truth(sd_seed: float, tau: float, sd_w: float, offsets: np.ndarray = DOMAIN_OFFSETS, **_: float) -> float:
    k = np.sqrt(1 + sd_seed**2 + tau**2 + sd_w**2)
    return float(np.mean(sps.norm.cdf((MU_A + offsets) / k) - sps.norm.cdf((MU_B + offsets) / k)))


def _studies(rng: np.random.Generator, m: int, seeds: int, sd_seed: float, rho_u: float, tau: float, sd_w: float,
             rho_w: float, rho_e: float, offsets: np.ndarray = DOMAIN_OFFSETS) -> np.ndarray:
    """(m, seeds, examples) per-example differences (A right) - (B right) of m independent studies."""
    n = PER_DOMAIN * len(offsets)
    off = np.repeat(offsets, PER_DOMAIN)[None, None, :]
    z = rng.normal(0, tau, (m, 1, n))
    w = rng.normal(0, 1, (2, m, 1, n))
    wa, wb = sd_w * w[0], sd_w * (rho_w * w[0] + np.sqrt(1 - rho_w**2) * w[1])
    u = rng.normal(0, 1, (2, m, seeds, 1))
    ua, ub = sd_seed * u[0], sd_seed * (rho_u * u[0] + np.sqrt(1 - rho_u**2) * u[1])
    e = rng.normal(0, 1, (2, m, seeds, n))
    ea, eb = e[0], rho_e * e[0] + np.sqrt(1 - rho_e**2) * e[1]
    right_a = MU_A + off + ua + z + wa + ea > 0
    right_b = MU_B + off + ub + z + wb + eb > 0
    return right_a.astype(float) - right_b.astype(float)


def _draws(rng: np.random.Generator, m: int, n_boot: int, n_domains: int, per_domain: int = PER_DOMAIN) -> np.ndarray:
    """(m, n_boot, examples) resample counts: per domain, its examples drawn with replacement (the counts
    of uniform picks: multinomial, as report.stats draws them, but vectorized over studies)."""
    out = np.empty((m, n_boot, per_domain * n_domains))
    rows = m * n_boot
    for d in range(n_domains):
        picks = rng.integers(0, per_domain, size=(rows, per_domain)) + per_domain * np.arange(rows)[:, None]
        counts = np.bincount(picks.ravel(), minlength=rows * per_domain).reshape(m, n_boot, per_domain)
        out[:, :, d * per_domain : (d + 1) * per_domain] = counts
    return out


def _replicates(rng: np.random.Generator, diffs: np.ndarray, n_domains: int) -> tuple[np.ndarray, np.ndarray]:
    """Observed per-seed differences (m, S) and their replicates on shared example draws (m, n_boot, S):
    the statistic is the mean over domains of the per-domain accuracy (equal domain sizes: the mean)."""
    w = _draws(rng, diffs.shape[0], N_BOOT, n_domains)
    return diffs.mean(axis=-1), np.matmul(w, diffs.transpose(0, 2, 1)) / diffs.shape[-1]


def _coverage(regime: str | list[str], seeds: int, n_studies: int = N_STUDIES, seed: int = 0) -> dict[str, float]:
    """Coverage of the truth by the three intervals over simulated studies (a list of regimes: the mean over
    datasets of independent studies, one per regime, each its own test domains)."""
    rng = np.random.default_rng(seed)
    regimes = [regime] if isinstance(regime, str) else regime
    offsets = [DOMAIN_OFFSETS + 0.2 * j for j in range(len(regimes))]
    truth = float(np.mean([_truth(**REGIMES[r], offsets=o) for r, o in zip(regimes, offsets, strict=True)]))
    hits = {"two-level": 0, "test-set noise only": 0, "t over seeds": 0}
    for start in range(0, n_studies, 100):
        m = min(100, n_studies - start)
        obs, boot = zip(*(_replicates(rng, _studies(rng, m, seeds, **REGIMES[r], offsets=o), len(o))
                          for r, o in zip(regimes, offsets, strict=True)), strict=True)
        res = st.two_level(list(obs), list(boot), PER_DOMAIN * len(DOMAIN_OFFSETS) * len(regimes))
        for name, (lo, hi) in {"two-level": ("ci_low", "ci_high"), "test-set noise only": ("ex_ci_low", "ex_ci_high"),
                               "t over seeds": ("t_ci_low", "t_ci_high")}.items():
            hits[name] += int(np.sum((res[lo] <= truth) & (truth <= res[hi])))
    return {k: v / n_studies for k, v in hits.items()}


@pytest.mark.parametrize("seeds", [3, 5])
def test_two_level_interval_is_calibrated(seeds: int) -> None:
    """2,000 simulated studies per regime: the two-level 95% CI covers the truth 93-97% of the time; the
    test-set-noise-only interval falls short where seeds vary (and never does better)."""
    cov = {regime: _coverage(regime, seeds) for regime in REGIMES}
    print(f"\ncoverage, {seeds} seeds, 300 test examples, {N_STUDIES} studies:", cov)
    for regime, c in cov.items():
        assert 0.93 <= c["two-level"] <= 0.97, (regime, c)
        assert c["test-set noise only"] <= c["two-level"] + 0.01, (regime, c)
    assert cov["seed-dominated"]["test-set noise only"] < 0.80
    assert cov["realistic"]["test-set noise only"] < cov["realistic"]["two-level"] - 0.01


@pytest.mark.parametrize("regimes", [["realistic"] * 3, list(REGIMES)])
def test_two_level_interval_over_datasets_is_calibrated(regimes: list[str]) -> None:
    """The mean over three datasets, 3 seeds each, seeds resampled within each: alike, and unlike."""
    cov = _coverage(regimes, 3, n_studies=1000, seed=1)
    print(f"\ncoverage, datasets {regimes} x 3 seeds, 1000 studies:", cov)
    assert 0.93 <= cov["two-level"] <= 0.97, cov


def test_df_exponent_calibrates_where_satterthwaite_under_covers() -> None:
    """Normal model, k = 2 (3 seeds): D ~ N(0, a + x), U ~ a chi2_k/k, x known. The calibrated df covers
    within about a point for every ratio x/a; Satterthwaite's (g = 2) falls below 93% for some."""
    rng = np.random.default_rng(0)
    k, n = 2, 200_000
    z, w = rng.standard_normal(n), rng.chisquare(k, n) / k

    def coverage(g: float, r: float) -> float:
        u, x = w, r  # a = 1
        rho = u / (u + x)
        q = sps.t.ppf(0.975, 1 / (rho**g / k))
        return float(np.mean(np.abs(z) * np.sqrt(1 + x) <= q * np.sqrt(u + x)))

    g = st.df_exponent(k)
    ratios = [0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0]
    calibrated = [coverage(g, r) for r in ratios]
    assert all(0.938 <= c <= 0.962 for c in calibrated), calibrated
    assert min(coverage(2.0, r) for r in ratios) < 0.93
    assert st.df_exponent(2) < st.df_exponent(4) < st.df_exponent(50) <= 2.05  # -> Satterthwaite as k grows
    assert 1.9 < st.df_exponent(200) <= 2.05
    assert st.df_exponent(2) < st.df_exponent(2.3) < st.df_exponent(2.5)  # between nodes: interpolated


def _anova(x: np.ndarray) -> tuple[float, float, float]:
    """Two-way mean squares (seeds, examples, residual) of an (S, N) table."""
    s, n = x.shape
    g = x.mean()
    a, b = x.mean(1) - g, x.mean(0) - g
    c = x - x.mean(1, keepdims=True) - x.mean(0, keepdims=True) + g
    return n * (a**2).sum() / (s - 1), s * (b**2).sum() / (n - 1), (c**2).sum() / ((s - 1) * (n - 1))


def test_two_level_parts_are_the_anova_estimates() -> None:
    """A linear statistic on one domain: U, I and X are the two-way ANOVA mean squares over S N
    (U = MS_seed/SN; I = MS_res/SN and X + I = MS_ex/SN up to (N-1)/N and the bootstrap's Monte Carlo)."""
    rng = np.random.default_rng(2)
    s, n, b = 4, 60, 20_000
    x = rng.normal(0, 1, (s, 1)) * 0.3 + rng.normal(0, 1, (1, n)) + rng.normal(0, 1.5, (s, n))
    w = rng.multinomial(n, np.full(n, 1 / n), size=b)
    res = st.two_level([x.mean(1)], [w @ x.T / n], n)
    ms_seed, ms_ex, ms_res = _anova(x)
    assert res["var_seed_level"] == pytest.approx(ms_seed / (s * n), rel=1e-12)
    assert res["var_interaction"] == pytest.approx(ms_res / (s * n) * (n - 1) / n, rel=0.06)
    assert res["var_shared"] + res["var_interaction"] == pytest.approx(ms_ex / (s * n) * (n - 1) / n, rel=0.04)
    assert res["se"] ** 2 == pytest.approx(res["var_seed_level"] + res["var_shared"])
    t = sps.ttest_1samp(x.mean(1), 0.0)
    assert res["t_p_value"] == pytest.approx(t.pvalue)
    lo, hi = t.confidence_interval(0.95)
    assert (res["t_ci_low"], res["t_ci_high"]) == pytest.approx((lo, hi))


def test_seed_level_is_the_two_level_bootstraps_own() -> None:
    """Drawing the seeds too (Monte Carlo: seeds with replacement, then the shared example draw) has the
    variance the module takes exactly: (S-1)/S * mean of s^2(d*)/S + V_ex."""
    rng = np.random.default_rng(3)
    s, n, b = 3, 80, 40_000
    x = rng.normal(0, 1, (s, 1)) + rng.normal(0, 1, (1, n)) + rng.normal(0, 2, (s, n))
    w = rng.multinomial(n, np.full(n, 1 / n), size=b)
    per_seed = w @ x.T / n  # (b, s)
    picks = rng.multinomial(s, np.full(s, 1 / s), size=b)  # the seeds drawn, as counts
    drawn = (picks * per_seed).sum(1) / s
    res = st.two_level([x.mean(1)], [per_seed], n)
    exact = (s - 1) / s * (res["var_interaction"] + res["var_seed_level"]) + np.var(per_seed.mean(1), ddof=1)
    assert np.var(drawn, ddof=1) == pytest.approx(exact, rel=0.03)


def test_two_level_edge_cases() -> None:
    # identical methods: no difference, a zero-width interval, p = 1
    zeros = st.two_level([np.zeros(3)], [np.zeros((50, 3))], 100)
    assert zeros["diff"] == 0 and zeros["ci_low"] == zeros["ci_high"] == 0 and zeros["p_value"] == 1.0
    # one seed: no seed level, only the test-set noise
    rng = np.random.default_rng(0)
    one = st.two_level([np.array([0.02])], [0.02 + rng.normal(0, 0.01, (200, 1))], 100)
    assert np.isnan(one["ci_low"]) and np.isnan(one["p_value"]) and np.isnan(one["t_p_value"])
    assert one["ex_ci_low"] < 0.02 < one["ex_ci_high"]
    # seeds that agree exactly, test noise: the shared part alone, df = examples - 1
    same = st.two_level([np.full(3, 0.02)], [np.repeat(0.02 + rng.normal(0, 0.01, (400, 1)), 3, axis=1)], 500)
    assert same["var_seed_level"] == 0 and same["df"] == pytest.approx(499)
    assert same["se"] == pytest.approx(0.01, rel=0.1)


# ---- power ---------------------------------------------------------------------------------------------
def test_power_closed_form_when_only_shared_test_noise() -> None:
    """No seed level: the z-test, MDD = (z_0.975 + z_0.8) SE (to the t with N-1 df)."""
    design = st.Design(seed=0.0, shared=0.004**2, interaction=0.0, n_seeds=3, n_examples=100_000)
    mdd = st.detectable_difference(design)
    assert mdd == pytest.approx((sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) * 0.004, rel=1e-3)
    assert st.power(design, mdd) == pytest.approx(0.8, abs=1e-6)
    assert st.power(design, 0.0) == pytest.approx(0.05, abs=1e-3)
    # four times the test examples halve it; more seeds change nothing
    assert st.detectable_difference(design, examples=400_000) == pytest.approx(mdd / 2, rel=1e-3)
    assert st.seeds_needed(design, diff=mdd / 2) is None
    assert st.examples_needed(design, diff=mdd / 2) == pytest.approx(400_000, rel=1e-3)


def test_power_is_the_t_tests_when_only_seeds_vary() -> None:
    """Seed effects only: the two-level test is the one-sample t-test over seeds; its power at the MDD,
    brute force over 40,000 simulated t-tests, is 80%."""
    sigma, s = 0.01, 3  # sd of one seed's difference
    design = st.Design(seed=sigma**2 / s, shared=0.0, interaction=0.0, n_seeds=s, n_examples=1000)
    mdd = st.detectable_difference(design)
    rng = np.random.default_rng(0)
    d = rng.normal(mdd, sigma, (40_000, s))
    p = sps.ttest_1samp(d, 0.0, axis=1).pvalue
    assert np.mean(p < 0.05) == pytest.approx(0.8, abs=0.01)
    assert mdd == pytest.approx(3.0 * sigma, rel=0.25)  # the textbook size: ~3 sd for n = 3


def test_power_at_the_mdd_by_simulating_studies() -> None:
    """Mixed noise: studies simulated from the design's parts (normal model, 3 seeds, 200 examples), each
    tested with the two-level interval: the rejection rate at the MDD is about 80%."""
    s, n, m = 3, 200, 2000
    su, sd, se = 0.006, 0.10, 0.15  # sigma_u, sigma_delta, sigma_eps
    design = st.Design(seed=su**2 / s, shared=sd**2 / n, interaction=se**2 / (s * n), n_seeds=s, n_examples=n)
    mdd = st.detectable_difference(design)
    rng = np.random.default_rng(5)
    x = mdd + rng.normal(0, su, (m, s, 1)) + rng.normal(0, sd, (m, 1, n)) + rng.normal(0, se, (m, s, n))
    w = _draws(rng, m, N_BOOT, 1, per_domain=n)
    res = st.two_level([x.mean(-1)], [np.matmul(w, x.transpose(0, 2, 1)) / n], n)
    assert np.mean(res["p_value"] < 0.05) == pytest.approx(0.8, abs=0.04)


def test_seeds_and_examples_needed_are_the_smallest() -> None:
    design = st.Design(seed=0.006**2 / 3, shared=0.002**2, interaction=0.004**2, n_seeds=3, n_examples=3000)
    s = st.seeds_needed(design)
    assert s is not None and s > 3
    assert st.power(design, st.ONE_POINT, seeds=s) >= 0.8 > st.power(design, st.ONE_POINT, seeds=s - 1)
    n = st.examples_needed(design, seeds=s)
    assert n is not None and n <= 3000
    assert st.power(design, st.ONE_POINT, seeds=s, examples=n) >= 0.8 > st.power(design, st.ONE_POINT, seeds=s,
                                                                                   examples=n - 1)
    # the seed spread alone exceeds 1 point: no test set is large enough at 3 seeds
    wide = st.Design(seed=0.01**2, shared=0.0, interaction=0.0, n_seeds=3, n_examples=3000)
    assert st.examples_needed(wide) is None and st.seeds_needed(wide) is not None

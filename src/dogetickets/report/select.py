"""Which configuration is reported: chosen on dev, never on test.

Rule (DomainBed's training-domain validation): for every (dataset, method, seed) the run reported is
the one with the best dev score (the dev set is drawn from the training domains); ties go to the lowest
target sparsity, then the lowest achieved sparsity, then the lowest lambda, then the name.
:func:`select_dev` first drops every test column (see :func:`collect.is_test_column`), so it cannot peek,
and works on runs whose metrics.json has no "test" at all.

:func:`select_oracle` picks by best test mean instead. It exists only for the separately labelled
"oracle (test-selected)" column: an upper bound showing what peeking would have bought.
"""

from __future__ import annotations

import pandas as pd

from dogetickets import methods as registry
from dogetickets.report.collect import is_test_column

SELECTION_RULE = (
    "Each method's configuration (sparsity, lambda) is selected per seed by the best dev score "
    "(dev = held-out data of the training domains; ties: lowest sparsity, then lowest lambda); "
    "test numbers are never read for this. The 'oracle (test-selected)' column instead picks the "
    "best test mean and is an upper bound, not a result."
)

DEFAULT_KEYS = ("dataset", "method", "seed")


def dev_view(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs table without a single test column."""
    return runs.loc[:, [c for c in runs.columns if not is_test_column(str(c))]]


def _pick(frame: pd.DataFrame, score: str, keys: tuple[str, ...]) -> pd.DataFrame:
    ranked = frame.assign(
        _score=frame[score].fillna(-float("inf")),
        _lam=frame["lambda"].fillna(-float("inf")),
    ).sort_values(
        ["_score", "target_sparsity", "sparsity", "_lam", "name"],
        ascending=[False, True, True, True, True],
        kind="mergesort",
    )
    best = ranked.groupby(list(keys), sort=True, dropna=False).head(1)
    return best.drop(columns=["_score", "_lam"]).sort_values(list(keys)).reset_index(drop=True)


def select_dev(runs: pd.DataFrame, keys: tuple[str, ...] = DEFAULT_KEYS) -> pd.DataFrame:
    """One row per `keys` group: the run with the best dev score. The result has no test columns."""
    view = dev_view(runs)
    return _pick(view, "dev_score", keys)


def select_dev_in_order(runs: pd.DataFrame) -> pd.DataFrame:
    """:func:`select_dev`, its rows by dataset, then method in registry order, then seed (the report's order)."""
    sel = select_dev(runs)
    order = {m: i for i, m in enumerate(registry.ordered(sel["method"]))}
    sel = sel.assign(_o=sel["method"].map(order))
    return sel.sort_values(["dataset", "_o", "seed"], kind="mergesort").drop(columns="_o")


def select_oracle(runs: pd.DataFrame, keys: tuple[str, ...] = DEFAULT_KEYS) -> pd.DataFrame:
    """ORACLE, test-selected: one row per `keys` group, the run with the best test mean (runs without test
    numbers are never picked while another has them). Use only for the labelled oracle column."""
    return _pick(runs, "test_mean", keys)


def with_test(selected: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Attach the test numbers of the chosen runs (by run path), after the choice has been made."""
    test_cols = [c for c in runs.columns if is_test_column(str(c))]
    return selected.merge(runs[["path", *test_cols]], on="path", how="left", validate="one_to_one")

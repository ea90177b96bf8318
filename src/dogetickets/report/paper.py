"""The paper's Table 2 (BERT-base, in %), and which of its datasets a run directory is.

The numbers are the paper's (../shared/paper/doge-tickets.md, Table 2), in one place. The paper chose each
ticket's sparsity by its out-of-domain test score ("Average Sparsity is the average sparsity to achieve
best out-of-domain generalization among all sparsity levels"): beside them, the report puts our
test-selected ("oracle") numbers, the same optimistic protocol, not our dev-selected results.

A run directory is recognised by the domains of its config.toml ([data] train_domains and test_domains,
compared as sets of names with case and punctuation ignored), not by its folder name; a config whose
[data] dataset names another corpus never matches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dogetickets.run.layout import run_config


@dataclass(frozen=True)
class PaperDataset:
    key: str
    label: str  # as the paper writes it
    corpus: str  # [data] dataset of our configs
    metric: str
    train: frozenset[str]
    test: frozenset[str]


def _names(*names: str) -> frozenset[str]:
    return frozenset(_norm(n) for n in names)


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


# Paper Table 1 (domain names as the data spell them: configs/amazon_a.toml etc.).
DATASETS: dict[str, PaperDataset] = {
    d.key: d
    for d in (
        PaperDataset("amazon_a", "Amazon A", "amazon", "accuracy",
                     _names("All_Beauty", "Automotive", "Digital_Music", "Gift_Cards"),
                     _names("Industrial_and_Scientific", "Movies_and_TV", "Software")),
        PaperDataset("amazon_b", "Amazon B", "amazon", "accuracy",
                     _names("All_Beauty", "Industrial_and_Scientific", "Movies_and_TV", "Software"),
                     _names("Automotive", "Digital_Music", "Gift_Cards")),
        PaperDataset("amazon_c", "Amazon C", "amazon", "accuracy",
                     _names("Digital_Music", "Gift_Cards", "Movies_and_TV", "Software"),
                     _names("All_Beauty", "Automotive", "Industrial_and_Scientific")),
        PaperDataset("mnli", "MNLI", "mnli", "accuracy",
                     _names("fiction", "government", "slate", "telephone", "travel"),
                     _names("facetoface", "letters", "nineeleven", "oup", "verbatim")),
        PaperDataset("ontonotes", "OntoNotes", "ontonote", "entity_f1",
                     _names("bc", "bn", "mz", "nw"), _names("tc", "wb")),
    )
}

# Paper Table 2: method (our registry's base name) -> dataset key -> score in %; "average" is the paper's
# Average Score over the five datasets.
TABLE2: dict[str, dict[str, float]] = {
    "erm": {"amazon_a": 69.8, "amazon_b": 72.6, "amazon_c": 69.6, "mnli": 84.8, "ontonotes": 57.2, "average": 70.8},
    "irm": {"amazon_a": 70.4, "amazon_b": 72.5, "amazon_c": 70.7, "mnli": 84.3, "ontonotes": 56.3, "average": 70.8},
    "random": {"amazon_a": 71.4, "amazon_b": 73.3, "amazon_c": 70.1, "mnli": 84.6, "ontonotes": 57.9,
               "average": 71.5},
    "winning": {"amazon_a": 70.9, "amazon_b": 73.7, "amazon_c": 71.3, "mnli": 84.8, "ontonotes": 57.9,
                "average": 71.7},
    "doge": {"amazon_a": 71.7, "amazon_b": 73.8, "amazon_c": 72.2, "mnli": 85.0, "ontonotes": 58.5, "average": 72.2},
}
# Paper Table 2's Average Sparsity (%), over the five datasets, of the test-best sparsity.
SPARSITY: dict[str, float] = {"erm": 0.0, "irm": 0.0, "random": 12.8, "winning": 17.5, "doge": 15.0}
PAPER_MODEL = "bert-base-uncased"
PAPER_TRAIN_PER_DOMAIN = {"amazon_a": 5400, "amazon_b": 5400, "amazon_c": 5400, "mnli": 78540, "ontonotes": 16111}


# Paper Table 4 (MNLI with 5, 4 and 3 training genres, BERT-base, %, the sparsity chosen on test): method -> number
# of training genres -> score. The 4 and 3 genres were "randomly selected" from the 5; the paper does not name them.
TABLE4: dict[str, dict[int, float]] = {
    "erm": {5: 84.8, 4: 84.2, 3: 83.0},
    "winning": {5: 84.8, 4: 84.3, 3: 83.3},
    "doge": {5: 85.0, 4: 84.5, 3: 83.6},
}


def score(method: str, dataset: str) -> float | None:
    """The paper's Table 2 score (%) of a method (its base name: doge-balanced -> doge) on a dataset key."""
    from dogetickets import methods

    return TABLE2.get(methods.base(method), {}).get(dataset)


def table2_column(dataset: str) -> dict[str, float]:
    """The paper's Table 2 scores (%) on a dataset key, by method base name."""
    return {m: by[dataset] for m, by in TABLE2.items() if dataset in by}


def table4_column(n_domains: int) -> dict[str, float]:
    """The paper's Table 4 scores (%) with `n_domains` MNLI training genres, by method base name ({} for a
    number the paper did not run)."""
    return {m: by[n_domains] for m, by in TABLE4.items() if n_domains in by}


def identify(run_dir: Path) -> PaperDataset | None:
    """The paper's dataset this run directory is (by its config's training and test domains), or None."""
    raw = run_config(run_dir)
    data = raw.get("data") if raw else None
    if not isinstance(data, dict):
        return None
    try:
        train = frozenset(_norm(d) for d in data["train_domains"])
        test = frozenset(_norm(d) for d in data["test_domains"])
    except (KeyError, TypeError):
        return None
    corpus = _norm(data.get("dataset", ""))
    for d in DATASETS.values():
        if d.train == train and d.test == test and (not corpus or corpus.rstrip("s") == d.corpus.rstrip("s")):
            return d
    return None


def differences(run_dir: Path, dataset: PaperDataset) -> list[str]:
    """How a run directory's setup departs from the paper's (model, training data per domain), as phrases."""
    raw = run_config(run_dir) or {}
    out = []
    model = (raw.get("model") or {}).get("name")
    if model and model != PAPER_MODEL:
        out.append(f"model {model} (paper: {PAPER_MODEL})")
    cap = (raw.get("data") or {}).get("max_train_per_domain")
    if isinstance(cap, int) and 0 < cap < PAPER_TRAIN_PER_DOMAIN[dataset.key]:
        out.append(f"{cap:,} training examples per domain (paper: {PAPER_TRAIN_PER_DOMAIN[dataset.key]:,})")
    return out

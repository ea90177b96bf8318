"""Entity F1: the paired bootstrap counts entities exactly as the table's metric does (strict IOB2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dogetickets.data.tasks import TokenTagging, entities, entity_counts
from dogetickets.report.stats import example_stats, paired_bootstrap

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]

# (gold, pred) per domain; the predictions are where seqeval's lenient default and strict IOB2 part ways.
SENTENCES: dict[str, list[tuple[list[str], list[str]]]] = {
    "tc": [
        (["B-PER", "I-PER", "O"], ["B-PER", "I-ORG", "O"]),  # lenient: PER(0) + ORG(1); strict: PER(0-1)
        (["O", "B-LOC", "I-LOC"], ["O", "I-LOC", "I-LOC"]),  # an I- run without its B-: no entity if strict
        (["B-ORG", "O", "B-PER"], ["B-ORG", "O", "I-PER"]),
        (["O", "O", "O"], ["I-PER", "O", "O"]),
    ],
    "wb": [
        (["B-PER", "O"], ["B-PER", "O"]),
        (["B-LOC", "I-LOC", "I-LOC"], ["B-LOC", "I-LOC", "I-PER"]),
        (["O", "B-ORG"], ["I-ORG", "B-ORG"]),
    ],
}


def _write_run(folder: Path, sentences: dict[str, list[tuple[list[str], list[str]]]]) -> None:
    folder.mkdir(parents=True)
    rows = [
        {"split": "test", "domain": d, "index": i, "gold": g, "pred": p}
        for d, pairs in sentences.items()
        for i, (g, p) in enumerate(pairs)
    ]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _table_score(sentences: dict[str, list[tuple[list[str], list[str]]]]) -> float:
    """What metrics.json reports: the mean over domains of TokenTagging.score."""
    task = TokenTagging(LABELS)
    ids = {t: k for k, t in enumerate(LABELS)}
    per = [
        task.score([[ids[t] for t in g] for g, _ in pairs], [[ids[t] for t in p] for _, p in pairs])
        for pairs in sentences.values()
    ]
    return float(np.mean(per))


def test_strict_entities_by_hand() -> None:
    assert entities(["B-PER", "I-ORG", "O"]) == {("PER", 0, 1)}
    assert entities(["O", "I-LOC", "I-LOC"]) == set()
    assert entities(["B-PER", "I-PER", "B-PER"]) == {("PER", 0, 2), ("PER", 2, 3)}
    assert entity_counts(["B-PER", "I-PER", "O"], ["B-PER", "I-ORG", "O"]) == (0, 1, 1)  # span 0-1 != 0-2


def test_bootstrap_point_estimate_is_the_table_score_where_lenient_and_strict_differ(tmp_path: Path) -> None:
    from seqeval.metrics import f1_score

    perfect = {d: [(g, g) for g, _ in pairs] for d, pairs in SENTENCES.items()}
    _write_run(tmp_path / "a", SENTENCES)
    _write_run(tmp_path / "b", perfect)
    res = paired_bootstrap([(tmp_path / "a", tmp_path / "b")], metric="entity_f1", n_boot=50, seed=0)
    table = _table_score(SENTENCES)
    assert res["a"] == table  # exactly, not approximately
    assert res["b"] == _table_score(perfect) == 1.0
    # The case is one that tells the two schemes apart (per domain and on average).
    lenient = np.mean([f1_score([g for g, _ in pairs], [p for _, p in pairs]) for pairs in SENTENCES.values()])
    assert abs(lenient - table) > 0.05


def test_entity_counts_are_seqevals_strict_mode() -> None:
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2

    rng = np.random.default_rng(0)
    gold = [list(rng.choice(LABELS, size=int(rng.integers(1, 9)))) for _ in range(200)]
    pred = [[t if rng.random() < 0.6 else str(rng.choice(LABELS)) for t in g] for g in gold]
    counts = np.array([example_stats(g, p, "entity_f1") for g, p in zip(gold, pred, strict=True)]).sum(0)
    tp, n_pred, n_gold = counts
    strict = f1_score(gold, pred, mode="strict", scheme=IOB2, zero_division=0)
    assert 2 * tp / (n_pred + n_gold) == pytest.approx(strict, rel=1e-12)
    assert strict != pytest.approx(f1_score(gold, pred), abs=1e-3)  # the lenient default differs here


def _ner_config(out: Path, data_dir: Path) -> dict:
    """ERM + the three tickets at one sparsity on a few real OntoNotes sentences. With lr 1e-8 the models
    stay at their (seeded) random heads: their predictions are full of entity tags, many an I- without
    its B-, which is where seqeval's lenient default and strict IOB2 disagree."""
    return {
        "run": {"out": str(out), "seeds": [0], "baselines": ["erm"], "save_models": False},
        "model": {"max_length": 32},
        "data": {
            "task": "tagging",
            "dataset": "ontonote",
            "dir": str(data_dir),
            "train_domains": ["bc", "bn"],
            "test_domains": ["tc", "nw"],
            "max_train_per_domain": 8,
            "max_eval_per_domain": 24,
        },
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-8, "patience": 0, "warmup_ratio": 0.0,
                  "mixed_precision": "no"},
        "tickets": {"methods": ["random", "winning", "doge"], "sparsities": [0.3], "lambdas": [100.0],
                    "allocation": "global"},  # heads only: every ticket keeps predicting entity tags
    }


@pytest.mark.filterwarnings("ignore:.*cut by max_length")
def test_bootstrap_observed_equals_table_on_a_real_ner_run(tmp_path: Path, data_dir: Path) -> None:
    """Every method's bootstrap point estimate is its metrics.json test mean (the Table 2 number)."""
    from seqeval.metrics import f1_score

    from dogetickets.config import config_from_dict
    from dogetickets.run.sweep import Sweep

    out = tmp_path / "ner"
    Sweep(config_from_dict(_ner_config(out, data_dir)), show_progress=False).run()
    runs = [out / "seed0" / "erm", *sorted((out / "seed0" / "rewind").glob("*/"))]
    assert [r.name for r in runs] == ["erm", "doge-s30-l100", "random-s30", "winning-s30"]
    erm_mean = json.loads((runs[0] / "metrics.json").read_text())["test"]["mean"]
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["metric"] == "entity_f1"
        res = paired_bootstrap([(run, runs[0])], metric="entity_f1", n_boot=20, seed=0)
        assert res["a"] == pytest.approx(metrics["test"]["mean"], abs=1e-12, rel=0), run.name
        assert res["b"] == pytest.approx(erm_mean, abs=1e-12, rel=0)
        # Not a 0 == 0 agreement: entities are found, and the lenient scheme would give another number.
        rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
        by_domain: dict[str, list[dict]] = {}
        for r in rows:
            if r["split"] == "test":
                by_domain.setdefault(r["domain"], []).append(r)
        lenient = np.mean([f1_score([r["gold"] for r in v], [r["pred"] for r in v]) for v in by_domain.values()])
        assert metrics["test"]["mean"] > 0 and abs(lenient - metrics["test"]["mean"]) > 1e-4, run.name

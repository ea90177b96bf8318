"""The quickstart, shrunk, gives exactly the results it gave when they were recorded: a guard that a change
meant to keep behaviour (a refactor) keeps it, down to the last byte of results.json.

The recorded results.json (tests/golden/) names the machine it was made on (its "machine": CPU, features,
cores, torch). On such a machine the test compares bytes. Elsewhere floating point may round differently
(other matmul kernels), so it compares what does not depend on rounding: the rows, the tickets'
sparsities, the test domains, the precision; and each metric within a stated tolerance.

To record it again, on purpose (a change of behaviour, said in its commit):
    DOGE_WRITE_GOLDEN=1 .venv/bin/pytest tests/test_golden.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

GOLDEN = REPO / "tests" / "golden" / "quickstart-small.results.json"
GOLDEN_KEYS = REPO / "tests" / "golden" / "quickstart-small.settings.json"  # what each stage recorded
SETS = ["data.max_train_per_domain=24", "data.max_eval_per_domain=24", "train.epochs=1",
        'train.mixed_precision="no"', "model.max_length=64"]
TOLERANCE = 0.1  # another machine: 72 test examples, so one prediction is 1.4 points of accuracy


def _run(tmp_path, data_dir) -> str:  # noqa: ANN001
    sets = [arg for s in SETS for arg in ("--set", s)]
    res = subprocess.run([sys.executable, "-m", "dogetickets.cli", "run", str(REPO / "configs" / "quickstart.toml"),
                          "--data-dir", str(data_dir), "--out", str(tmp_path / "run"), "-q", *sets],
                         capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    return (tmp_path / "run" / "results.json").read_text(encoding="utf-8")


def _recorded(out) -> dict:  # noqa: ANN001
    """The settings every stage recorded (DONE markers; a ticket's in its file), by path in the run."""
    keys = {p.parent.relative_to(out).as_posix(): json.loads(p.read_text()) for p in sorted(out.rglob("DONE"))}
    keys |= {p.relative_to(out).as_posix(): json.loads(p.read_text())["extra"]["settings"]
             for p in sorted(out.glob("seed*/tickets/*.json"))}
    return dict(sorted(keys.items()))


def _metrics(row: dict) -> dict[str, float]:
    """dev, mean, worst and the test score of each domain."""
    out = {k: v for k, v in row.items() if isinstance(v, float) and k not in ("sparsity", "target_sparsity")}
    return {**out, **{f"test:{d}": v for d, v in (row.get("test") or {}).items()}}


def test_the_shrunk_quickstart_gives_the_recorded_results(tmp_path, data_dir):
    """Same results, and every stage keyed by the same settings (so run directories written by the code
    that recorded them are reused, not redone)."""
    got = _run(tmp_path, data_dir)
    keys = _recorded(tmp_path / "run")
    if os.environ.get("DOGE_WRITE_GOLDEN"):
        GOLDEN.write_text(got, encoding="utf-8")
        GOLDEN_KEYS.write_text(json.dumps(keys, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    assert keys == json.loads(GOLDEN_KEYS.read_text(encoding="utf-8"))
    want = GOLDEN.read_text(encoding="utf-8")
    new, old = json.loads(got), json.loads(want)
    if new["machine"] == old["machine"]:
        assert got == want, "results.json differs from tests/golden/ on the machine it was recorded on"
        return
    assert [r["row"] for r in new["rows"]] == [r["row"] for r in old["rows"]]
    assert new["test_domains"] == old["test_domains"] and new["precision"] == old["precision"]
    for a, b in zip(new["rows"], old["rows"], strict=True):
        assert a.get("sparsity") == b.get("sparsity"), a["row"]
        ma, mb = _metrics(a), _metrics(b)
        assert ma.keys() == mb.keys(), a["row"]
        assert all(abs(ma[k] - mb[k]) <= TOLERANCE for k in ma), (a["row"], ma, mb, "(another machine)")

"""`doge preview` on a tiny real run: the grid, reuse, the sparsity-0 rows against ERM, the report section."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_run_toml

from dogetickets.config import load_config
from dogetickets.errors import DogeError
from dogetickets.preview import evaluate_ticket, parse_grid, run_preview
from dogetickets.report import write_report

METHODS = ("random", "winning", "doge")


def doge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dogetickets.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=900)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """(config, run directory, the first `doge preview`): fine-tunes, scores and previews the tiny run."""
    root = tmp_path_factory.mktemp("preview")
    cfg = root / "run.toml"
    cfg.write_text(tiny_run_toml(root / "run", data_dir, methods=json.dumps(list(METHODS))))
    res = doge("preview", str(cfg), "-q")
    assert res.returncode == 0, res.stderr
    return cfg, root / "run", res


def test_parse_grid() -> None:
    assert parse_grid("0:0.6:0.05") == [round(0.05 * i, 2) for i in range(13)]
    assert parse_grid("0.3, 0,0.1") == [0.0, 0.1, 0.3]
    for bad in ("0:0.6", "a,b", "0:1:0", "0.5,1.0", ""):
        with pytest.raises(DogeError, match="--grid"):
            parse_grid(bad)


def test_preview_rows(run: tuple[Path, Path, subprocess.CompletedProcess]) -> None:
    _, out, res = run
    rows = pd.read_csv(out / "preview.csv")
    assert len(rows) == 13 * len(METHODS)
    assert list(rows.columns[:6]) == ["seed", "method", "lambda", "target_sparsity", "sparsity", "dev_score"]
    assert not [c for c in rows.columns if c.startswith("test")]  # dev only unless --test
    assert (out / "preview.png").stat().st_size > 0
    recorded = json.loads((out / "preview.json").read_text())
    assert recorded["grid"] == parse_grid("0:0.6:0.05") and recorded["seeds"] == [0] and not recorded["test"]
    assert "0" in recorded["scores"] and recorded["eval"]["test_domains"] == ["Software"]

    erm_dev = json.loads((out / "seed0" / "erm" / "metrics.json").read_text())["dev"]["score"]
    zero = rows[rows["target_sparsity"] == 0]
    assert sorted(zero["method"]) == sorted(METHODS)
    assert (zero["sparsity"] == 0).all()
    assert (zero["dev_score"] == erm_dev).all()  # the unmasked model is the ERM model, exactly
    for method, g in rows.groupby("method"):
        g = g.sort_values("target_sparsity")
        assert g["target_sparsity"].tolist() == parse_grid("0:0.6:0.05")
        assert g["sparsity"].is_monotonic_increasing, method
        # near the target (within a head where the unit sizes allow; an FFN block is 11% of MiniLM)
        assert (g["sparsity"] - g["target_sparsity"]).abs().max() < 0.05 and g["sparsity"].iloc[-1] > 0.5
    # the printed table: dev only, one column per method, and the paths
    assert "in-domain dev score" in res.stdout and "doge λ=100" in res.stdout
    assert str(out / "preview.csv") in res.stdout


def test_preview_reuse_and_recompute(run: tuple[Path, Path, subprocess.CompletedProcess]) -> None:
    cfg, out, _ = run
    csv = out / "preview.csv"
    before = csv.stat().st_mtime_ns
    res = doge("preview", str(cfg), "-q")
    assert res.returncode == 0, res.stderr
    assert "reused" in res.stdout and csv.stat().st_mtime_ns == before

    from dogetickets.run.sweep import Sweep

    sweep = Sweep(load_config(cfg), show_progress=False)
    result = run_preview(sweep, grid=[0.0, 0.25])
    assert not result.reused and csv.stat().st_mtime_ns != before
    rows = pd.read_csv(csv)
    assert len(rows) == 2 * len(METHODS) and sorted(set(rows["target_sparsity"])) == [0.0, 0.25]
    assert json.loads((out / "preview.json").read_text())["grid"] == [0.0, 0.25]

    # --test: the test domains too, in columns apart; the same dev numbers; settings recorded
    result = run_preview(sweep, grid=[0.0, 0.25], test=True)
    assert not result.reused
    tested = pd.read_csv(csv)
    assert {"test_mean", "test_worst", "test:Software"} <= set(tested.columns)
    assert tested["dev_score"].tolist() == rows["dev_score"].tolist()
    assert json.loads((out / "preview.json").read_text())["test"] is True
    erm_test = json.loads((out / "seed0" / "erm" / "metrics.json").read_text())["test"]["mean"]
    assert (tested.loc[tested["target_sparsity"] == 0, "test_mean"] == erm_test).all()


def test_pruned_equals_masked(run: tuple[Path, Path, subprocess.CompletedProcess]) -> None:
    """The preview evaluates physically pruned copies: same scores as the gated (masked) model."""
    from dogetickets.evaluate import metrics, predict
    from dogetickets.models.units import Units
    from dogetickets.run.sweep import Sweep
    from dogetickets.tickets import random_ticket, select

    cfg, out, _ = run
    pipe = Sweep(load_config(cfg), show_progress=False)
    d = pipe.ctx.data
    model = pipe.ctx.load(out / "seed0" / "erm" / "model")
    shape = pipe.stages.init.shape(0)
    tickets = [select(*pipe.stages.scores.of(0).doge(100.0), shape, 0.3, "doge", lam=100.0, seed=0),
               random_ticket(shape, 0.55, 0)]
    for ticket in tickets:
        assert ticket.pruned_ffn or ticket.pruned_heads
        pruned = evaluate_ticket(pipe, model, ticket)
        with Units(model).gated(*ticket.masks()):
            masked = [metrics(d.task, x, predict(model, d.task, x, 64, d.pad_id)) for x in (d.dev, d.test)]
        assert [pruned[0]["per_domain"], pruned[1]["per_domain"]] == [m["per_domain"] for m in masked]


def test_report_has_preview(run: tuple[Path, Path, subprocess.CompletedProcess], tmp_path: Path) -> None:
    _, out, _ = run
    md = write_report([out], out=tmp_path).read_text(encoding="utf-8")
    assert "Preview (no retraining)" in md and "![preview run](preview-run.png)" in md
    assert (tmp_path / "preview-run.png").is_file()
    assert "Preview (no retraining)" in write_report([out]).read_text(encoding="utf-8")
    assert "![preview run](preview.png)" in (out / "report.md").read_text(encoding="utf-8")

"""IRM's penalty weight chosen on a grid (irm.penalty_weights): trained with each weight on one seed, the best
in-domain dev score chosen for every seed; the choice seed's IRM is that grid run's training, to the last bit."""

from __future__ import annotations

import json

from conftest import tiny_run_toml

from dogetickets.config import load_config
from dogetickets.report import training
from dogetickets.run import settings
from dogetickets.run.plan import plan
from dogetickets.run.sweep import Sweep


def _cfg(tmp_path, data_dir, **sets):  # noqa: ANN001, ANN003, ANN202
    path = tmp_path / "c.toml"
    path.write_text(tiny_run_toml(tmp_path / "run", data_dir, seeds="[0, 1]", methods="[]", sparsities="[0.2]"))
    return load_config(path, {"run.baselines": ["erm", "irm"], "irm.anneal_steps": 1, **sets})


def test_the_grid_is_planned_once_before_every_seeds_irm(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir, **{"irm.penalty_weights": [1.0, 1000.0]})
    names = [j.name for j in plan(cfg, seeds=[1])]  # `doge run --set run.seeds=[1]`: the grid is on seed 0
    assert names[:3] == ["seed0/init", "seed0/irm-grid/w1", "seed0/irm-grid/w1000"]
    irm = next(j for j in plan(cfg) if j.name == "seed1/irm")
    assert set(irm.needs) == {"seed1/init", "seed0/irm-grid/w1", "seed0/irm-grid/w1000"}
    assert not any("irm-grid" in j.name for j in plan(_cfg(tmp_path, data_dir)))  # no grid: as before


def test_irm_without_a_grid_records_what_it_recorded_before(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir)
    assert settings.training(cfg, 0, "irm", ["a"])["irm"] == {"penalty_weight": 100.0, "anneal_steps": 1}


def test_irm_trains_every_seed_with_the_weight_best_on_the_choice_seeds_dev(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir, **{"irm.penalty_weights": [1.0, 1000.0]})
    sweep = Sweep(cfg, show_progress=False)
    results = sweep.run()
    sweep.ctx.lock.release()
    out = tmp_path / "run"
    grid = {w: json.loads((out / f"seed0/irm-grid/w{w}/metrics.json").read_text())["dev"]["score"] for w in (1, 1000)}
    chosen = max(grid, key=lambda w: (grid[w], -w))
    for seed in (0, 1):
        run = json.loads((out / f"seed{seed}/irm/metrics.json").read_text())["run"]
        assert run["penalty_weight"] == chosen and run["penalty_choice"]["chosen"] == chosen
        done = json.loads((out / f"seed{seed}/irm/DONE").read_text())
        assert done["irm"] == {"penalty_weight": chosen, "anneal_steps": 1}
    # seed 0's IRM is the grid's training with that weight: the same predictions, not trained again
    assert (out / "seed0/irm/predictions.jsonl").read_bytes() == \
        (out / f"seed0/irm-grid/w{chosen}/predictions.jsonl").read_bytes()
    assert json.loads((out / "seed0/irm/timing.json").read_text())["trained_as"] == f"w{chosen}"
    assert any("IRM: penalty weight" in n and "seed 0" in n for n in results["notes"])
    # the report shows the grid and the convergence of every ERM training
    table = training.irm_grid(["tiny"], [out])
    assert list(table["penalty_weight"]) == [1.0, 1000.0] and table["chosen"].sum() == 1
    curves = training.convergence(["tiny"], [out])
    assert sorted(set(curves["seed"])) == [0, 1] and curves["kept"].any()

    # a rerun redoes nothing; another grid (irm is not a fixed section) redoes IRM alone, not ERM
    erm = (out / "seed1/erm/DONE").stat().st_mtime_ns
    sweep = Sweep(_cfg(tmp_path, data_dir, **{"irm.penalty_weights": [1.0, 1000.0]}), show_progress=False)
    assert not sweep.pending()
    sweep.ctx.lock.release()
    sweep = Sweep(_cfg(tmp_path, data_dir, **{"irm.penalty_weights": [10.0]}), show_progress=False)
    assert [j.name for j in sweep.pending()] == ["seed0/irm-grid/w10", "seed0/irm", "seed1/irm"]
    sweep.ctx.lock.release()
    assert (out / "seed1/erm/DONE").stat().st_mtime_ns == erm

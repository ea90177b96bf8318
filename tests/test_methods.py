"""The method registry and the variants it makes one entry: allocation suffixes, the noise-corrected
variance (exact against a brute-force per-example loop), the worst-domain score, lambda chosen on dev."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_run_toml

from dogetickets import methods
from dogetickets.config import config_from_dict, load_config
from dogetickets.data.tasks import Encoded, TextClassification
from dogetickets.errors import DogeError
from dogetickets.models.units import Units
from dogetickets.run import runs, settings
from dogetickets.run.sweep import Sweep
from dogetickets.scoring import UnitScores, between_domain_var, expressive_scores
from dogetickets.tickets import Ticket, TicketSpec, ticket_name


def test_registry_variants_and_unknown_names():
    d = methods.get("doge-balanced")
    assert (d.ranking, d.allocation, d.uses_lambda) == ("domain_general", "balanced", True)
    assert methods.get("doge-nc-proportional").variance_for("paper") == "corrected"
    assert d.label == "doge tickets (balanced)"  # labels: one parenthesis for the variant and its allocation
    assert methods.get("doge-nc-balanced").label == "doge tickets (noise-corrected var., balanced)"
    assert methods.get("doge-balanced").variance_for("corrected") == "corrected"
    assert methods.get("winning").allocation_for("balanced") == "balanced"
    assert methods.get("winning-global").allocation_for("balanced") == "global"
    assert not methods.get("random").uses_scores and not methods.get("doge-worst").uses_lambda
    for bad in ("erm-balanced", "dodge", "doge-sideways"):
        with pytest.raises(KeyError, match="unknown method"):
            methods.get(bad)
    assert methods.ordered(["doge-balanced", "erm", "zzz", "doge", "random-balanced", "irm"]) == [
        "erm", "irm", "random-balanced", "doge", "doge-balanced", "zzz"]
    assert methods.comparisons(["erm", "winning", "doge", "doge-balanced", "winning-balanced", "doge-worst"]) == [
        ("doge", "erm"), ("doge", "winning"), ("doge-balanced", "erm"), ("doge-balanced", "winning-balanced"),
        ("doge-worst", "erm"), ("doge-worst", "winning")]
    assert ticket_name("doge-nc", 0.1, 100.0) == "doge-nc-s10-l100" and ticket_name("doge", 0.1) == "doge-s10"
    assert ticket_name("doge-worst", 0.3, 100.0) == "doge-worst-s30"


def _cfg(methods_list: list[str]) -> dict:
    return {"data": {"train_domains": ["a", "b"], "test_domains": ["c"]}, "tickets": {"methods": methods_list}}


def test_config_takes_registered_ticket_methods_only():
    cfg = config_from_dict(_cfg(["random", "doge-nc", "winning-balanced", "doge-worst"]))
    assert cfg.tickets.methods == ["random", "doge-nc", "winning-balanced", "doge-worst"]
    with pytest.raises(DogeError, match=r"tickets\.methods.*unknown method 'dodge'"):
        config_from_dict(_cfg(["dodge"]))
    with pytest.raises(DogeError, match=r"tickets\.methods.*'erm' is a baseline"):
        config_from_dict(_cfg(["erm"]))


def test_sampling_variance_equals_a_per_example_loop(tiny_cls):
    """DomainScores' sums of squares give each domain mean's sampling variance exactly as a loop over
    examples does (sample variance of |grad| / n)."""
    from dogetickets.data.batching import collate
    from dogetickets.scoring import per_example_gate_grads

    rng = np.random.default_rng(1)
    n = 11
    ids = [np.concatenate([[2], rng.integers(5, 100, rng.integers(3, 12)), [3]]) for _ in range(n)]
    data = Encoded(ids, [np.zeros_like(x) for x in ids], [int(rng.integers(0, 3)) for _ in range(n)],
                   np.array([i % 2 for i in range(n)]), np.arange(n), ["a", "b"])
    task = TextClassification(["x", "y", "z"])
    units = Units(tiny_cls)
    s = expressive_scores(tiny_cls, units, task, data, batch_size=4, pad_id=0, show_progress=False)
    per: list[list[np.ndarray]] = [[], []]
    for i in range(n):
        gh, gf = per_example_gate_grads(tiny_cls, units, task, collate(data, np.array([i]), 0))
        per[data.domain[i]].append(np.concatenate([gh[0].abs().numpy().ravel(), gf[0].abs().numpy()]))
    vh, vf = s.sampling_var()
    for d in (0, 1):
        x = np.stack(per[d])
        ref = x.var(0, ddof=1) / len(x)
        np.testing.assert_allclose(np.concatenate([vh[d].ravel(), vf[d]]), ref, rtol=1e-4, atol=1e-12)
    # normalized: the variance scales with the square of the normalizer of that domain's layer
    us = UnitScores.from_domain_scores(s)
    raw_h, _ = s.expressive()
    scale = us.per_domain_heads / raw_h
    np.testing.assert_allclose(us.sampling_var_heads, vh * scale**2, rtol=1e-9)
    back = UnitScores.from_json(json.loads(json.dumps(us.to_json([1.0]))))
    np.testing.assert_allclose(back.sampling_var_ffn, us.sampling_var_ffn)


def test_corrected_variance_subtracts_the_expected_noise_and_floors_at_zero():
    means = np.array([[1.0, 0.5], [3.0, 0.5], [2.0, 0.8]])  # 3 domains x 2 units
    noise = np.array([[0.3, 0.1], [0.3, 0.1], [0.3, 0.1]])
    observed = means.var(0)  # [2/3, 0.02]
    corrected = between_domain_var(means, noise)
    np.testing.assert_allclose(corrected, [2 / 3 - 2 / 3 * 0.3, 0.0])  # (D-1)/D * 0.1 > 0.02: floored
    assert (corrected <= observed).all()
    us = UnitScores(["a", "b", "c"], means[:, None, :], means[:, 0], means[0][None], means[0, :1], np.ones(3),
                    noise[:, None, :], noise[:, 0])
    h, _ = us.doge(10.0, "corrected")
    np.testing.assert_allclose(h[0], means.mean(0) - 10.0 * corrected)
    np.testing.assert_allclose(us.worst()[0][0], [1.0, 0.5])
    with pytest.raises(ValueError, match="no sampling variances"):
        UnitScores(["a"], means[:1, None], means[:1, 0], means[:1], means[0, :1], np.ones(1)).doge(1.0, "corrected")


def test_old_scores_without_sampling_variance_are_scored_again_for_doge_nc(tmp_path, data_dir):
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(tiny_run_toml(tmp_path / "run", data_dir, methods='["doge"]'))
    pipe = Sweep(load_config(cfg_path), show_progress=False)
    try:
        pipe.finetune()
        pipe.score()
        path = pipe.layout.scores(0)
        raw = json.loads(path.read_text())
        raw.pop("per_domain_sampling_var")  # as a run scored before the variance was recorded
        path.write_text(json.dumps(raw))
    finally:
        pipe.ctx.lock.release()
    pipe = Sweep(load_config(cfg_path), show_progress=False)  # doge alone: reused as is
    try:
        assert not pipe.stages.scores.of(0).has_sampling_var
    finally:
        pipe.ctx.lock.release()
    pipe = Sweep(load_config(cfg_path, {"tickets.variance": "corrected"}), show_progress=False)
    try:
        assert pipe.stages.scores.of(0).has_sampling_var
        assert "per_domain_sampling_var" in json.loads(path.read_text())
        ticket = pipe.stages.ticket.choose(0, TicketSpec("doge", 0.2, 100.0))  # the corrected variance, as doge-nc's
        nc = pipe.stages.ticket.choose(0, TicketSpec("doge-nc", 0.2, 100.0))
        assert (ticket.pruned_heads, ticket.pruned_ffn) == (nc.pruned_heads, nc.pruned_ffn)
        assert settings.ticket(pipe.cfg, 0, TicketSpec("doge", 0.2, 100.0), pipe.ctx.labels)["variance"] == "corrected"
    finally:
        pipe.ctx.lock.release()


def test_variants_and_lambda_chosen_on_dev(tmp_path, data_dir):
    """Allocation variants are ordinary methods; with lambda_choice = "preview" one ticket per sparsity is
    rewound, its lambda the best dev score of the masked fine-tuned model (recomputed here)."""
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(tiny_run_toml(tmp_path / "run", data_dir, sparsities="[0.3]",
                                      methods='["random-proportional", "winning-balanced", "doge",'
                                              ' "doge-nc-proportional"]'))
    sets = {"tickets.lambdas": [0.0, 100.0, 1e6], "tickets.lambda_choice": "preview"}
    pipe = Sweep(load_config(cfg_path, sets), show_progress=False)
    try:
        results = pipe.run()
        tickets = {p.stem: Ticket.load(p) for p in (tmp_path / "run/seed0/tickets").glob("*.json")}
        assert sorted(tickets) == ["doge-nc-proportional-s30", "doge-s30", "random-proportional-s30",
                                   "winning-balanced-s30"]
        assert tickets["winning-balanced-s30"].allocation == "balanced"
        # every variant keeps its own name, the random ones too (the report's rows are by method)
        assert tickets["random-proportional-s30"].method == "random-proportional"
        assert tickets["random-proportional-s30"].allocation == "proportional"
        assert tickets["doge-nc-proportional-s30"].allocation == "proportional"
        assert tickets["doge-s30"].allocation == methods.DEFAULT_ALLOCATION  # the run's
        model = pipe.stages.finetuned_model(0)
        for name in ("doge-s30", "doge-nc-proportional-s30"):
            t = tickets[name]
            choice = t.extra["lambda_choice"]
            dev = {}
            for lam in (0.0, 100.0, 1e6):
                cand = pipe.stages.ticket.choose(0, TicketSpec(t.method, 0.3, lam))
                dev[lam] = runs.masked_scores(pipe.ctx, model, cand, ("dev",))[0]["score"]
                assert choice["dev_score"][f"{lam:g}"] == pytest.approx(dev[lam])
            best = max(dev.values())
            assert t.lam == min(lam for lam, v in dev.items() if v == best) == choice["chosen"]
        from dogetickets.report.diagnostics import lambda_choice

        table = lambda_choice(tmp_path / "run")
        assert list(table["method"]) == ["doge", "doge-nc-proportional"]
        assert list(table["chosen"]) == [tickets["doge-s30"].lam, tickets["doge-nc-proportional-s30"].lam]
        recorded = tickets["doge-s30"].extra["lambda_choice"]["dev_score"]
        assert table.loc[0, "dev λ=100"] == pytest.approx(recorded["100"])
        assert lambda_choice(tmp_path / "run", seeds=[1]).empty  # `doge report --seeds 1`: seed 0 is not read
        rows = {r["method"]: r for r in results["rows"]}
        assert set(rows) == {"erm", "random-proportional", "winning-balanced", "doge", "doge-nc-proportional"}
        assert rows["doge"]["row"].startswith("doge 30% (dev-chosen λ:") and rows["doge"]["lambda"] is None
        assert Path(tmp_path / "run/seed0/rewind/doge-s30/DONE").is_file()
    finally:
        pipe.ctx.lock.release()


def test_a_neuron_granularity_sweep_prunes_neurons_and_exports(tmp_path, data_dir):
    """tickets.granularity = "neuron": scores per FFN neuron, tickets that prune neurons, physically smaller
    rewinds whose layers have their own intermediate sizes; block-level settings keep their old form."""
    from dogetickets.models.export import load_pruned

    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(tiny_run_toml(tmp_path / "run", data_dir, methods='["winning", "doge"]', sparsities="[0.3]"))
    pipe = Sweep(load_config(cfg_path, {"tickets.granularity": "neuron", "tickets.allocation": "balanced"}),
                    show_progress=False)
    try:
        plain = Sweep(load_config(cfg_path), show_progress=False)
        assert "granularity" not in settings.scores(plain.cfg, 0, plain.ctx.labels)
        results = pipe.run()
        assert pipe.stages.scores.of(0).has_neurons
        ticket = Ticket.load(tmp_path / "run/seed0/tickets/doge-s30-l100.json")
        assert ticket.granularity == "neuron" and sum(map(len, ticket.pruned_neurons.values())) > 0
        model = load_pruned(tmp_path / "run/seed0/rewind/doge-s30-l100/model")
        for i, layer in enumerate(model.bert.encoder.layer):
            if i not in ticket.pruned_ffn:
                kept = ticket.intermediate_size - len(ticket.pruned_neurons.get(str(i), []))
                assert layer.intermediate.dense.out_features == kept
        assert {r["method"] for r in results["rows"]} == {"erm", "winning", "doge"}
    finally:
        pipe.ctx.lock.release()


def test_a_ticket_pruning_the_same_units_reuses_that_training(tmp_path, data_dir):
    """doge and doge-nc at lambda 0 both rank by the mean score: the same units by construction, so the second
    rewind takes the first's training instead of repeating it, and what it records equals training it alone. A
    ticket of other units (the same method at another sparsity: 20 points apart, more than the largest unit's
    share, so other units whatever the scores) trains on its own."""
    def run(out: str, methods_list: str, sparsities: str) -> Sweep:
        cfg_path = tmp_path / f"{out}.toml"
        cfg_path.write_text(tiny_run_toml(tmp_path / out, data_dir, methods=methods_list, sparsities=sparsities)
                            + 'lambdas = [0.0]\nallocation = "global"\n')
        pipe = Sweep(load_config(cfg_path), show_progress=False)
        try:
            pipe.run()
        finally:
            pipe.ctx.lock.release()
        return pipe

    run("both", '["doge", "doge-nc"]', "[0.1, 0.3]")
    rewind = tmp_path / "both/seed0/rewind"
    first, second, other = rewind / "doge-s30-l0", rewind / "doge-nc-s30-l0", rewind / "doge-s10-l0"
    assert Ticket.load(first / "ticket.json").units() == Ticket.load(second / "ticket.json").units()
    assert Ticket.load(first / "ticket.json").units() != Ticket.load(other / "ticket.json").units()
    copied = json.loads((second / "metrics.json").read_text())
    assert copied["run"]["trained_as"] == "doge-s30-l0" and copied["run"]["method"] == "doge-nc"
    assert json.loads((second / "timing.json").read_text())["seconds"] == 0.0
    assert "trained_as" not in json.loads((other / "metrics.json").read_text())["run"]
    assert json.loads((rewind / "doge-nc-s10-l0/metrics.json").read_text())["run"]["trained_as"] == "doge-s10-l0"
    # doge-nc trained on its own gives exactly what the copy recorded (CPU: same seed, same numbers)
    run("alone", '["doge-nc"]', "[0.3]")
    alone = tmp_path / "alone/seed0/rewind/doge-nc-s30-l0"
    trained = json.loads((alone / "metrics.json").read_text())
    for key in ("dev", "test", "train", "eval"):
        assert copied[key] == trained[key], key
    assert (second / "predictions.jsonl").read_text() == (alone / "predictions.jsonl").read_text()
    assert "trained_as" not in trained["run"]

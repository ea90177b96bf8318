"""The training loop: rewinding holds pruned units at exactly zero; IRM's penalty and annealing."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from dogetickets.config import IRMConfig, TrainConfig, config_from_dict
from dogetickets.data.tasks import Encoded, TextClassification
from dogetickets.errors import DogeError, TrainingFailed
from dogetickets.models.units import Units
from dogetickets.training.loop import get_accelerator, train
from dogetickets.training.objectives import ERM, IRM


def _train_cfg(**train: object) -> TrainConfig:
    """A [train] section as a config file would give it; fp32 unless the test asks for a precision (the
    default "auto" would be bf16 on some CPUs and fp32 on others)."""
    train = {"mixed_precision": "no", **train}
    return config_from_dict({"data": {"train_domains": ["d0", "d1"], "test_domains": ["t"]}, "train": train}).train


def _toy_data(n: int = 24, domains: int = 2, seed: int = 0) -> Encoded:
    rng = np.random.default_rng(seed)
    ids = [np.concatenate([[2], rng.integers(5, 100, rng.integers(3, 10)), [3]]) for _ in range(n)]
    labels = [int(x[1] % 3) for x in ids]  # learnable from the first token
    dom = np.array([i % domains for i in range(n)])
    index = np.array([i // domains for i in range(n)])
    return Encoded(ids, [np.zeros_like(x) for x in ids], labels, dom, index, [f"d{k}" for k in range(domains)])


def test_rewinding_keeps_pruned_units_at_zero_and_starts_at_the_rewind_point(tiny_cls):
    init = copy.deepcopy(tiny_cls.state_dict())
    units = Units(tiny_cls)
    head, ffn = torch.ones(3, 4), torch.ones(3)
    head[0, [0, 2]] = 0.0
    head[2, 3] = 0.0
    ffn[1] = 0.0
    masks = units.weight_masks(head, ffn)
    seen_start: dict[str, torch.Tensor] = {}

    # capture the weights at the first optimizer step: unpruned = rewind point, pruned = 0
    def grab(*_args, **_kw):
        if not seen_start:
            seen_start.update({k: v.detach().clone() for k, v in tiny_cls.state_dict().items()})

    handle = tiny_cls.register_forward_pre_hook(grab)
    cfg = TrainConfig(mixed_precision="no", batch_size=4, lr=1e-2, max_steps=6, eval_every=3, patience=0,
                      warmup_ratio=0.0)
    data = _toy_data()
    train(tiny_cls, TextClassification(["a", "b", "c"]), data, data, cfg, ERM(), seed=0, pad_id=0,
          ticket_masks=(head, ffn), show_progress=False)
    handle.remove()
    params = dict(tiny_cls.named_parameters())
    for name, m in masks.items():
        assert torch.equal(params[name][m == 0], torch.zeros_like(params[name][m == 0])), name
        assert torch.equal(seen_start[name], init[name] * m), name
    for name, value in init.items():
        if name not in masks:
            assert torch.equal(seen_start[name], value), name
    # and training did move the kept weights
    assert not torch.equal(params["classifier.weight"], init["classifier.weight"])


def test_training_is_deterministic_and_keeps_best(tiny_cls):
    data = _toy_data(32)
    cfg = TrainConfig(mixed_precision="no", batch_size=8, lr=5e-3, max_steps=8, eval_every=2, patience=0)
    task = TextClassification(["a", "b", "c"])
    a = copy.deepcopy(tiny_cls)
    r1 = train(a, task, data, data, cfg, ERM(), seed=3, pad_id=0, show_progress=False)
    b = copy.deepcopy(tiny_cls)
    r2 = train(b, task, data, data, cfg, ERM(), seed=3, pad_id=0, show_progress=False)
    assert [h["dev"] for h in r1.history] == [h["dev"] for h in r2.history]
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), n
    assert r1.best_dev == max(h["dev"] for h in r1.history)


def test_early_stopping_with_patience(tiny_cls):
    data = _toy_data(16)
    cfg = TrainConfig(mixed_precision="no", batch_size=4, lr=0.0 + 1e-12, max_steps=40, eval_every=1, patience=2)
    r = train(tiny_cls, TextClassification(["a", "b", "c"]), data, data, cfg, ERM(), seed=0, pad_id=0,
              show_progress=False)
    assert r.stopped_early and r.steps == 3  # no improvement after the first evaluation, patience 2


def test_irm_penalty_closed_form():
    """Two domains, known logits: penalty_d = (d/ds CE(s * z, y) at s=1)^2 in closed form."""
    task = TextClassification(["a", "b"])
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, -1.0]], dtype=torch.double)
    y = torch.tensor([0, 0, 1, 1])
    dom = torch.tensor([0, 0, 1, 1])

    def closed(zd: torch.Tensor, yd: torch.Tensor) -> float:
        # d/ds CE(s z, y) = sum_k p_k z_k - z_y, averaged over the domain's examples
        p = torch.softmax(zd, -1)
        g = ((p * zd).sum(-1) - zd[torch.arange(len(yd)), yd]).mean()
        return float(g**2)

    for d in (0, 1):
        sel = dom == d
        assert float(IRM.penalty(task, z[sel], y[sel]).detach()) == pytest.approx(closed(z[sel], y[sel]), rel=1e-10)
    irm = IRM(IRMConfig(penalty_weight=50.0, anneal_steps=10))
    irm.num_domains = 2  # what epoch_batches sets: each batch is one block per domain, in domain order
    batch = {"labels": y, "domain": dom}
    risk = float(np.mean([float(task.per_example_loss(z[dom == d], y[dom == d]).mean()) for d in (0, 1)]))
    pen = float(np.mean([closed(z[dom == d], y[dom == d]) for d in (0, 1)]))
    assert float(irm.loss(task, z, batch, step=9).detach()) == pytest.approx(risk + pen)  # weight 1 before
    assert float(irm.loss(task, z, batch, step=10).detach()) == pytest.approx((risk + 50.0 * pen) / 50.0)  # rescaled
    assert irm.weight(9) == 1.0 and irm.weight(10) == 50.0
    assert irm.resets_optimizer(10) and not irm.resets_optimizer(9)


def test_irm_batches_hold_every_domain():
    data = _toy_data(30, domains=3)
    batches = IRM(IRMConfig()).epoch_batches(data, batch_size=9, seed=0, bucket=True)
    assert len(batches) == 4
    for b in batches:
        assert sorted(np.bincount(data.domain[b], minlength=3)) == [3, 3, 3]


def test_irm_batches_are_length_bucketed():
    """Bucketed IRM steps pad far less than unbucketed ones, and an epoch still uses each example once."""
    rng = np.random.default_rng(0)
    ids = [rng.integers(5, 100, rng.integers(5, 128)) for _ in range(400)]
    dom = np.array([i % 2 for i in range(400)])
    data = Encoded(ids, [np.zeros_like(x) for x in ids], [0] * 400, dom, np.arange(400) // 2, ["d0", "d1"])

    def padded(bucket: bool) -> int:
        batches = IRM(IRMConfig()).epoch_batches(data, batch_size=16, seed=1, bucket=bucket)
        assert sorted(np.concatenate(batches).tolist()) == list(range(400))  # 200 per domain, 25 steps of 8
        for b in batches:
            assert data.domain[b].tolist() == [0] * 8 + [1] * 8  # one block per domain, in domain order
        return sum(len(b) * int(data.lengths[b].max()) - int(data.lengths[b].sum()) for b in batches)

    assert padded(True) < 0.25 * padded(False)


class _ERMOnIRMBatches(ERM):
    """ERM's loss on IRM's batches (an equal share of every domain in each step)."""

    epoch_batches = IRM.epoch_batches


def test_irm_penalty_changes_the_trained_weights(tiny_cls):
    """Same model, data, seed and batches: penalty weight 0 trains as ERM, a positive one trains otherwise."""
    data = _toy_data(24)
    cfg = _train_cfg(batch_size=8, lr=1e-2, max_steps=6, eval_every=6, patience=0, warmup_ratio=0.0)
    task = TextClassification(["a", "b", "c"])

    def trained(objective: ERM | IRM) -> dict[str, torch.Tensor]:
        model = copy.deepcopy(tiny_cls)
        train(model, task, data, data, cfg, objective, seed=0, pad_id=0, show_progress=False)
        return model.state_dict()

    erm = trained(_ERMOnIRMBatches())
    no_penalty = trained(IRM(IRMConfig(penalty_weight=0.0, anneal_steps=0)))
    penalty = trained(IRM(IRMConfig(penalty_weight=10.0, anneal_steps=0)))
    # The mean of 2 domain means over 4 examples each weighs every example's loss by exactly 1/8, as the
    # batch mean does (powers of two: no rounding), and 0 * penalty adds nothing: identical gradients.
    for name, w in erm.items():
        assert torch.equal(no_penalty[name], w), name
    moved = max(float((penalty[n] - no_penalty[n]).abs().max()) for n in erm)
    assert moved > 1e-3
    assert not torch.equal(penalty["classifier.weight"], no_penalty["classifier.weight"])


def test_non_finite_loss_stops_the_run_naming_step_and_lr(tiny_cls, tmp_path):
    total = 20
    cfg = _train_cfg(batch_size=4, lr=1e30, max_steps=total, eval_every=total, patience=0, warmup_ratio=0.0)
    with pytest.raises(TrainingFailed) as caught:
        train(tiny_cls, TextClassification(["a", "b", "c"]), _toy_data(24), _toy_data(24), cfg, ERM(), seed=0,
              pad_id=0, log_path=tmp_path / "log.jsonl", show_progress=False, description="doge-s30-l100 s0")
    msg = str(caught.value)
    assert isinstance(caught.value, DogeError) and "\n" not in msg
    found = re.fullmatch(
        r"doge-s30-l100 s0: the training loss is (nan|inf) at step (\d+) \(lr (\S+) at that step\); .*",
        msg,
    )
    assert found, msg
    step = int(found.group(2))
    assert 2 <= step <= total  # the first step's loss is finite: the huge update breaks the next ones
    # linear decay without warm-up: step k runs at lr * (total - (k - 1)) / total
    assert found.group(3) == f"{1e30 * (total - step + 1) / total:.3g}"


def test_accelerator_has_the_requested_precision(tiny_cls):
    """A bf16 run after an fp32 one in the same process trains (and evaluates) in bf16, and back."""
    data = _toy_data(8)
    cfg = {"batch_size": 4, "lr": 1e-3, "max_steps": 2, "eval_every": 2, "patience": 0}
    for precision, dtype in (("no", torch.float32), ("bf16", torch.bfloat16), ("no", torch.float32)):
        model = copy.deepcopy(tiny_cls)
        seen: set[torch.dtype] = set()
        model.classifier.register_forward_hook(lambda _m, _i, out, seen=seen: seen.add(out.dtype))
        train(model, TextClassification(["a", "b", "c"]), data, data, _train_cfg(mixed_precision=precision, **cfg),
              ERM(), seed=0, pad_id=0, show_progress=False)
        assert seen == {dtype}, precision
        acc = get_accelerator(precision)
        assert acc.mixed_precision == precision and get_accelerator(precision) is acc


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused on CPU only")
def test_fp16_on_cpu_is_refused():
    with pytest.raises(DogeError, match="fp16.*CUDA"):
        get_accelerator("fp16")
    assert get_accelerator("no").mixed_precision == "no"

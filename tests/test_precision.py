"""Mixed precision "auto", the loss read every log_every steps, dev evaluation sharded over processes,
autocast in scoring, and `doge bench --device`."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from test_cli_errors import assert_one_line_error, doge
from test_training import _toy_data, _train_cfg

from dogetickets.bench import bench_device
from dogetickets.data.tasks import TextClassification
from dogetickets.errors import DogeError, TrainingFailed
from dogetickets.evaluate import predict, shard, unshard
from dogetickets.models.units import Units
from dogetickets.scoring import expressive_scores
from dogetickets.training import loop
from dogetickets.training.loop import get_accelerator, resolve_precision, train
from dogetickets.training.objectives import ERM

TASK = TextClassification(["a", "b", "c"])


# ---- mixed precision "auto" ------------------------------------------------------------------------------
@pytest.mark.parametrize("native, resolved", [(True, "bf16"), (False, "no")])
def test_auto_resolves_to_bf16_where_native(monkeypatch, native, resolved):
    monkeypatch.setattr(loop, "native_bf16", lambda: native)
    assert resolve_precision("auto") == resolved
    for explicit in ("no", "bf16", "fp16"):
        assert resolve_precision(explicit) == explicit


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU flags decide without CUDA")
def test_native_bf16_on_cpu_follows_the_flags(monkeypatch):
    for flags, native in (({"avx512_bf16", "avx2"}, True), ({"amx_bf16"}, True), ({"avx512f", "avx2"}, False)):
        monkeypatch.setattr(loop, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert loop.native_bf16() is native, flags


def test_cpu_flags_are_empty_off_x86(monkeypatch):
    loop.cpu_flags.cache_clear()
    monkeypatch.setattr(loop.platform, "machine", lambda: "arm64")
    try:
        assert loop.cpu_flags() == frozenset()
    finally:
        loop.cpu_flags.cache_clear()


@pytest.mark.parametrize("native, resolved", [(True, "bf16"), (False, "no")])
def test_auto_gets_the_accelerator_of_its_resolution_and_records_it(monkeypatch, tiny_cls, native, resolved):
    monkeypatch.setattr(loop, "native_bf16", lambda: native)
    try:
        acc = get_accelerator("auto")
        assert acc is get_accelerator(resolved) and acc.mixed_precision == resolved
        data = _toy_data(8)
        cfg = _train_cfg(batch_size=4, lr=1e-3, max_steps=2, eval_every=2, patience=0, mixed_precision="auto")
        result = train(tiny_cls, TASK, data, data, cfg, ERM(), seed=0, pad_id=0, show_progress=False)
        assert result.mixed_precision == resolved and result.to_dict()["mixed_precision"] == resolved
    finally:
        get_accelerator("no")


def test_auto_is_the_default_and_log_every_is_validated():
    train_cfg = _train_cfg()
    assert train_cfg.mixed_precision == "auto" and train_cfg.log_every == 10
    assert _train_cfg(log_every=1).log_every == 1
    for bad in (0, -3, 2.5, "5"):
        with pytest.raises(DogeError, match=r"train\.log_every"):
            _train_cfg(log_every=bad)


# ---- the loss read every log_every steps -----------------------------------------------------------------
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_log_every_changes_nothing_in_the_training(tiny_cls, precision):
    data = _toy_data(32)
    runs = []
    for log_every in (1, 3):
        model = copy.deepcopy(tiny_cls)
        cfg = _train_cfg(batch_size=4, lr=5e-3, max_steps=10, eval_every=4, patience=0, log_every=log_every,
                         mixed_precision=precision)
        result = train(model, TASK, data, data, cfg, ERM(), seed=1, pad_id=0, show_progress=False)
        runs.append((model.state_dict(), result.history))
    (a, history_a), (b, history_b) = runs
    assert history_a == history_b  # the same losses (each evaluation's step) and dev scores
    for name, w in a.items():
        assert torch.equal(w, b[name]), name
    get_accelerator("no")


def test_a_nan_seen_later_names_the_step_where_it_appeared(tiny_cls):
    """Read every step or every 7: the same failing step and lr (the step's own, not the reading one's)."""
    messages = []
    for log_every in (1, 7):
        cfg = _train_cfg(batch_size=4, lr=1e30, max_steps=20, eval_every=20, patience=0, warmup_ratio=0.0,
                         log_every=log_every, mixed_precision="no")
        with pytest.raises(TrainingFailed) as caught:
            train(copy.deepcopy(tiny_cls), TASK, _toy_data(24), _toy_data(24), cfg, ERM(), seed=0, pad_id=0,
                  show_progress=False, description="s0")
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    step = int(re.search(r"at step (\d+) ", messages[0]).group(1))
    assert step % 7 != 0  # with log_every = 7 it was read at a later step


# ---- dev evaluation sharded over processes -----------------------------------------------------------------
def test_shard_and_unshard_restore_the_order():
    for n in range(12):
        for count in (1, 2, 3):
            parts = [shard(n, k, count) for k in range(count)]
            assert sorted(np.concatenate(parts).tolist()) == list(range(n))
            assert unshard([[f"x{i}" for i in p] for p in parts]) == [f"x{i}" for i in range(n)]


def test_two_fake_processes_predict_what_one_does(tiny_cls):
    data = _toy_data(23)
    whole = predict(tiny_cls, TASK, data, batch_size=4, pad_id=0)
    parts = [predict(tiny_cls, TASK, data.subset(shard(len(data), k, 2)), batch_size=4, pad_id=0) for k in (0, 1)]
    assert [len(p) for p in parts] == [12, 11]
    assert unshard(parts) == whole


# ---- scoring under autocast ----------------------------------------------------------------------------------
def test_scoring_runs_under_the_given_autocast(tiny_cls):
    data = _toy_data(16)
    seen: set[torch.dtype] = set()
    handle = tiny_cls.classifier.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    fp32 = expressive_scores(tiny_cls, Units(tiny_cls), TASK, data, batch_size=4, pad_id=0, show_progress=False)
    assert seen == {torch.float32}
    seen.clear()
    bf16 = expressive_scores(tiny_cls, Units(tiny_cls), TASK, data, batch_size=4, pad_id=0, show_progress=False,
                             autocast=get_accelerator("bf16").autocast)
    handle.remove()
    get_accelerator("no")
    assert seen == {torch.bfloat16}
    assert np.array_equal(bf16.count, fp32.count)
    assert np.allclose(bf16.head_sum, fp32.head_sum, rtol=0.1, atol=1e-3 * fp32.head_sum.max())
    assert np.allclose(bf16.ffn_sum, fp32.ffn_sum, rtol=0.1, atol=1e-3 * fp32.ffn_sum.max())


# ---- doge bench --device -------------------------------------------------------------------------------------
def test_bench_device():
    assert bench_device("cpu") == torch.device("cpu")
    assert bench_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("nonsense", "cuda:x", "mps", ""):
        with pytest.raises(DogeError, match="expected auto, cpu, cuda or cuda:N"):
            bench_device(bad)
    if not torch.cuda.is_available():
        for absent in ("cuda", "cuda:1"):
            with pytest.raises(DogeError, match="no CUDA GPU"):
                bench_device(absent)


def test_bench_unknown_device_is_one_line():
    assert_one_line_error(doge("bench", "--device", "nonsense"), "device 'nonsense'", "cuda:N")

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

from dogetickets import machine
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
    monkeypatch.delenv(loop.AUTO_PRECISION_ENV, raising=False)
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
    machine.cpu_flags.cache_clear()
    monkeypatch.setattr(machine.platform, "machine", lambda: "arm64")
    try:
        assert machine.cpu_flags() == frozenset() and machine.cpu_features() == []
    finally:
        machine.cpu_flags.cache_clear()


@pytest.mark.parametrize("value, resolved", [("no", "no"), ("fp32", "no"), (" BF16 ", "bf16")])
@pytest.mark.parametrize("native", [True, False])
def test_the_environment_decides_what_auto_is(monkeypatch, value, resolved, native):
    """$DOGE_AUTO_PRECISION runs "auto" as on another machine (the suite runs once with it set to "no"); an
    explicit setting is never overridden, and the reason names the variable."""
    monkeypatch.setattr(loop, "native_bf16", lambda: native)
    monkeypatch.setenv(loop.AUTO_PRECISION_ENV, value)
    assert resolve_precision("auto") == resolved
    assert resolve_precision("no") == "no" and resolve_precision("bf16") == "bf16"
    assert loop.precision_reason("auto") == (
        f"{loop.precision_name(resolved)}: 'auto' forced by {loop.AUTO_PRECISION_ENV}={value.strip()}")
    assert loop.precision_reason("bf16") == "bf16: set by train.mixed_precision"
    monkeypatch.setenv(loop.AUTO_PRECISION_ENV, "fp8")
    with pytest.raises(DogeError, match=r"DOGE_AUTO_PRECISION='fp8': expected 'no' \(fp32\) or 'bf16'"):
        resolve_precision("auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU flags decide without CUDA")
def test_the_reason_names_the_cpu_feature_that_decided(monkeypatch):
    monkeypatch.delenv(loop.AUTO_PRECISION_ENV, raising=False)
    for flags, reason in (({"avx2", "avx512_bf16"}, "bf16: 'auto' on a CPU with avx512_bf16"),
                          ({"avx2", "avx512f"}, "fp32: 'auto' on a CPU without avx512_bf16 or amx_bf16")):
        monkeypatch.setattr(loop, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert loop.precision_reason("auto") == reason
    assert loop.precision_reason("no") == "fp32: set by train.mixed_precision"


@pytest.mark.parametrize("native, resolved", [(True, "bf16"), (False, "no")])
def test_auto_gets_the_accelerator_of_its_resolution_and_records_it(monkeypatch, tiny_cls, native, resolved):
    monkeypatch.delenv(loop.AUTO_PRECISION_ENV, raising=False)
    monkeypatch.setattr(loop, "native_bf16", lambda: native)
    try:
        acc = get_accelerator("auto")
        assert acc is get_accelerator(resolved) and acc.mixed_precision == resolved
        data = _toy_data(8)
        cfg = _train_cfg(batch_size=4, lr=1e-3, max_steps=2, eval_every=2, patience=0, mixed_precision="auto")
        result = train(tiny_cls, TASK, data, data, cfg, ERM(), seed=0, pad_id=0, show_progress=False)
        assert result.mixed_precision == resolved and result.to_dict()["mixed_precision"] == resolved
        assert result.to_dict()["precision_reason"] == loop.precision_reason("auto")
    finally:
        get_accelerator("no")


def test_auto_is_the_default_and_log_every_is_validated():
    from dogetickets.config import config_from_dict

    train_cfg = config_from_dict({"data": {"train_domains": ["d0", "d1"], "test_domains": ["t"]}}).train
    assert train_cfg.mixed_precision == "auto" and train_cfg.log_every == 10
    assert _train_cfg(log_every=1).log_every == 1
    for bad in (0, -3, 2.5, "5"):
        with pytest.raises(DogeError, match=r"train\.log_every"):
            _train_cfg(log_every=bad)


def test_a_table_names_the_precision_of_its_runs_and_why():
    from dogetickets.results import precision_line, precisions

    runs = [{"train": {"mixed_precision": "bf16", "precision_reason": "bf16: 'auto' on a CPU with avx512_bf16"}}] * 3
    runs += [{"train": {"mixed_precision": "no", "precision_reason": "fp32: set by train.mixed_precision"}},
             {"train": {"mixed_precision": "no"}}]  # written before the reason was recorded
    found = precisions(runs)
    assert found == [{"precision": "bf16", "reason": "bf16: 'auto' on a CPU with avx512_bf16", "runs": 3},
                     {"precision": "fp32", "reason": "", "runs": 1},
                     {"precision": "fp32", "reason": "fp32: set by train.mixed_precision", "runs": 1}]
    machine = {"cpu": "Some CPU", "cpu_features": ["avx2", "avx512f"], "logical_cores": 2, "cuda_devices": [],
               "torch": "2.13.0"}
    assert precision_line({"precision": found, "machine": machine}) == (
        "Trained in bf16 ('auto' on a CPU with avx512_bf16; 3 of 5 runs); fp32 (reason not recorded; 1 of 5 runs); "
        "fp32 (set by train.mixed_precision; 1 of 5 runs). Machine: Some CPU (features: avx2, avx512f), "
        "2 logical cores, no GPU; torch 2.13.0.")
    assert precision_line({"precision": found[:1]}).startswith("Trained in bf16 ('auto' on a CPU with avx512_bf16; "
                                                                "all 3 runs).")


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

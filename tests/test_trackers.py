"""Experiment trackers (run.log_with): what a real sweep logged, read back with the trackers' own readers and
compared with what the run directory recorded (log.jsonl, metrics.json, config.toml). A tiny random BERT on
a few made-up reviews: seconds per training."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from transformers import AutoTokenizer, BertModel

from dogetickets import cli
from dogetickets.config import config_from_dict, load_config
from dogetickets.errors import DogeError
from dogetickets.models import resolve
from dogetickets.run.sweep import Sweep
from dogetickets.training import trackers

JOBS = ["seed0/erm", "seed0/rewind/random-s30"]  # the trainings of the config below
TRACKER_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TAGS", "MLFLOW_NESTED_RUN",
               "MLFLOW_ALLOW_FILE_STORE", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_API_KEY")
REVIEWS = [("great, works well", 1), ("broken on arrival", 0), ("love it", 1), ("waste of money", 0)]


def _data(root: Path) -> Path:
    """Eight reviews per split of three Amazon domains, in the released layout."""
    for domain in ("All_Beauty", "Automotive", "Software"):
        for split in ("train", "dev", "test"):
            rows = [{"text": f"{t} ({domain} {i})", "label": y} for i in range(2) for t, y in REVIEWS]
            path = root / "amazon" / domain / f"{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _model(folder: Path) -> Path:
    """A tiny random BERT encoder (the task head comes with the run's labels) with the packaged model's tokenizer."""
    tok = AutoTokenizer.from_pretrained(resolve.resolve_model("minilm"))
    torch.manual_seed(0)
    BertModel(tiny_config(vocab_size=len(tok), pad_token_id=tok.pad_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("inputs")
    return _data(root / "data"), _model(root / "tiny-bert")


def _config(root: Path, inputs: tuple[Path, Path], log_with: list[str], methods: str = '["random"]') -> Path:
    data, model = inputs
    cfg = root / "c.toml"
    cfg.write_text(f"""
[run]
out = "{root / "tracked"}"
log_with = {json.dumps(log_with)}
[model]
name = "{model}"
max_length = 32
[data]
dir = "{data}"
train_domains = ["All_Beauty", "Automotive"]
test_domains = ["Software"]
[train]
epochs = 2
batch_size = 4
lr = 3e-3
eval_every = 2
mixed_precision = "no"
[tickets]
methods = {methods}
sparsities = [0.3]
""")
    return cfg


def _sweep(cfg: Path) -> Path:
    sweep = Sweep(load_config(cfg), show_progress=False)
    try:
        sweep.run()
    finally:
        sweep.ctx.lock.release()
    assert not sweep.failed, sweep.failed
    return sweep.out


def _clean_env(mp: pytest.MonkeyPatch) -> None:
    for key in TRACKER_ENV:
        mp.setenv(key, "x")  # (recorded, so that leaving the context restores what was there)
        mp.delenv(key)


def _needs(*modules: str) -> None:
    """Skip without the trackers' packages (`pip install -e '.[trackers]'`); in CI (which installs them) fail."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing and os.environ.get("CI"):
        pytest.fail(f"not installed: {', '.join(missing)} (scripts/setup.sh installs them)")
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, inputs) -> Path:
    """A finished sweep (ERM and a random ticket rewound) that logged to TensorBoard and MLflow."""
    _needs("tensorboard", "mlflow")
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        _clean_env(mp)
        mp.chdir(root)
        return _sweep(_config(root, inputs, ["tensorboard", "mlflow"]))


def _log(out: Path, job: str) -> list[dict]:
    return [json.loads(line) for line in (out / job / "log.jsonl").read_text().splitlines()]


def _test_metrics(out: Path, job: str) -> dict:
    return json.loads((out / job / "metrics.json").read_text())["test"]


def test_tensorboard_logs_each_training_as_its_log_and_metrics_record_it(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = tracked / "trackers" / "tensorboard"
    runs = sorted(p.parent.relative_to(folder).as_posix() for p in folder.rglob("events.out.tfevents.*")
                  if p.parent.parent.relative_to(folder).as_posix() not in JOBS)  # (not the hparams' subfolders)
    assert runs == JOBS
    for job in JOBS:
        acc = EventAccumulator(str(folder / job))
        acc.Reload()
        log, test = _log(tracked, job), _test_metrics(tracked, job)
        assert len(log) >= 2
        for tag, key in (("train/loss", "loss"), ("dev/score", "dev")):
            got = [(e.step, e.value) for e in acc.Scalars(tag)]
            assert got == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in log], tag
        assert [e.step for e in acc.Scalars("dev/domain/Automotive")] == [r["step"] for r in log]
        steps = json.loads((tracked / job / "metrics.json").read_text())["train"]["steps"]
        for tag, value in (("test/score", test["score"]), ("test/worst", test["worst"]),
                           ("test/domain/Software", test["per_domain"]["Software"])):
            assert [(e.step, e.value) for e in acc.Scalars(tag)] == [(steps, pytest.approx(value, rel=1e-6))]


def test_tensorboard_records_the_config_as_hyperparameters(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    job = JOBS[1]
    (sub,) = [p for p in (tracked / "trackers" / "tensorboard" / job).iterdir() if p.is_dir()
              and any(p.glob("events.out.tfevents.*"))]
    acc = EventAccumulator(str(sub))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hp = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hp["job"].string_value == job
    assert hp["method"].string_value == "random" and hp["seed"].number_value == 0
    assert hp["train.lr"].number_value == pytest.approx(3e-3)
    assert hp["train.eval_every"].number_value == 2
    assert json.loads(hp["data.train_domains"].string_value) == ["All_Beauty", "Automotive"]


def test_mlflow_has_one_run_per_training_named_after_its_job(tracked, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # (MLflow 3 reads a file store only on request)
    client = MlflowClient(tracking_uri=(tracked / "trackers" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("tracked")  # the run directory's name
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == JOBS
    cfg = load_config(tracked / "config.toml")
    for job, run in runs.items():
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert params["job"] == job and params["seed"] == "0"
        assert params["method"] == ("erm" if job == "seed0/erm" else "random")
        assert params["train.lr"] == str(cfg.train.lr) and params["run.log_with"] == '["tensorboard", "mlflow"]'
        assert params["model.max_length"] == "32" and params["train.mixed_precision"] == "no"
        log, test = _log(tracked, job), _test_metrics(tracked, job)
        for tag, key in (("train/loss", "loss"), ("dev/score", "dev")):
            got = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag)]
            assert got == [(r["step"], pytest.approx(r[key], rel=1e-12)) for r in log], tag
        assert run.data.metrics["test/score"] == pytest.approx(test["score"], rel=1e-12)
        assert run.data.metrics["test/domain/Software"] == pytest.approx(test["per_domain"]["Software"], rel=1e-12)


def test_a_failed_training_ends_its_tracker_runs_as_failed(tmp_path, monkeypatch):
    _needs("tensorboard", "mlflow")
    from mlflow.tracking import MlflowClient

    _clean_env(monkeypatch)
    with pytest.raises(RuntimeError, match="diverged"):
        with trackers.training_run(["tensorboard", "mlflow"], tmp_path, "exp", "seed0/erm", {"job": "seed0/erm"}) as t:
            t.log_eval({"step": 2, "epoch": 0, "loss": 0.5, "dev": 0.25, "dev_per_domain": {"a": 0.25}})
            raise RuntimeError("diverged")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.info.status == "FAILED" and run.info.run_name == "seed0/erm"
    assert run.data.metrics == {"train/loss": 0.5, "dev/score": 0.25, "dev/domain/a": 0.25}


@pytest.mark.parametrize("value, message", [
    (["tensorboard", "comet"], "'comet' is not one of 'tensorboard', 'mlflow' or 'wandb'"),
    (["mlflow", "mlflow"], "'mlflow' is listed twice"),
    ("mlflow", "expected a list, got 'mlflow'"),
])
def test_log_with_is_checked_in_one_line(value, message):
    raw = {"data": {"train_domains": ["a"], "test_domains": ["b"]}, "run": {"log_with": value}}
    with pytest.raises(DogeError) as info:
        config_from_dict(raw)
    assert str(info.value) == f"config key 'run.log_with': {message}"


def test_no_tracker_by_default_writes_no_tracker_file(tmp_path, inputs, monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    out = _sweep(_config(tmp_path, inputs, [], methods="[]"))
    assert (out / "seed0" / "erm" / "metrics.json").is_file()
    assert not (out / "trackers").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml", "tracked"]  # (no ./runs, ./mlruns, ./wandb)


def test_a_missing_tracker_package_is_one_line_naming_the_extra(tmp_path, inputs, monkeypatch, capsys):
    monkeypatch.setattr(trackers, "is_installed", lambda name: name != "mlflow")
    cfg = _config(tmp_path, inputs, ["tensorboard", "mlflow"])
    monkeypatch.setattr(sys, "argv", ["doge", "run", str(cfg), "-q"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: run.log_with includes 'mlflow' but mlflow is not installed: "
                   "pip install 'dogetickets[mlflow]'")
    assert not (tmp_path / "tracked").exists()  # refused before anything is written


def _wandb_records(path: Path) -> list:
    """The records of an offline run's .wandb file: wandb's protobuf Records in a LevelDB-style log (a 7-byte
    header, then 32 KiB blocks of chunks: crc32c, length, type FULL/FIRST/MIDDLE/LAST). wandb >= 0.19 reads it
    in its Go core only, so it is read here."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B", data[:7]
    records, parts, pos = [], [], 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header: zero padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        parts.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
            parts = []
    return records


def test_wandb_logs_offline_into_the_run_directory(tmp_path, inputs, monkeypatch):
    """Only where wandb is installed (it is not one of the test extras)."""
    pytest.importorskip("wandb")
    _clean_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    out = _sweep(_config(tmp_path, inputs, ["wandb"], methods="[]"))
    (run_file,) = (out / "trackers" / "wandb").glob("offline-run-*/run-*.wandb")
    history, names, config = [], [], {}
    for record in _wandb_records(run_file):
        if record.HasField("run"):
            names.append(record.run.display_name)
        if record.HasField("history"):
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        if record.HasField("config"):
            config |= {item.key: json.loads(item.value_json) for item in record.config.update}
    assert set(names) == {"seed0/erm"}
    assert config["train.lr"] == 3e-3 and config["job"] == "seed0/erm"
    log = _log(out, "seed0/erm")
    evals = [h for h in history if "dev/score" in h]
    assert [(h["_step"], h["train/loss"], h["dev/score"]) for h in evals] == [
        (r["step"], pytest.approx(r["loss"]), pytest.approx(r["dev"])) for r in log]
    (final,) = [h for h in history if "test/score" in h]
    assert final["test/score"] == pytest.approx(_test_metrics(out, "seed0/erm")["score"])

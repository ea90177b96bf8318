"""Run directories that can be trusted: every artifact is reused only under the settings that made it,
the table always matches its config, damage and concurrency end in a redo or one line, never a
silent wrong number. On a tiny real subsample (seconds per training)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_run_toml
from test_cli import _assert_one_line_error

from dogetickets.config import load_config
from dogetickets.errors import DogeError, TrainingFailed
from dogetickets.run.sweep import Sweep

DOGE = "seed0/rewind/doge-s20-l100"
RANDOM = "seed0/rewind/random-s20"


def _pipe(cfg_path: Path, out: Path, **sets: object) -> Sweep:
    return Sweep(load_config(cfg_path, {"run.out": str(out), **sets}), show_progress=False)


def _run(cfg_path: Path, out: Path, **sets: object) -> dict:
    pipe = _pipe(cfg_path, out, **sets)
    try:
        return pipe.run()
    finally:
        pipe.ctx.lock.release()


def _files(out: Path) -> dict[str, tuple[int, bytes]]:
    """Every artifact of the run directory: relative path -> (mtime, content). Not the config (it
    changes with the command line), the timings or the table."""
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("config.toml", "timing.json", ".lock")
            and not p.name.startswith("results")}


def _doge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dogetickets.cli", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def base(tmp_path_factory, data_dir) -> tuple[Path, Path, dict]:
    """A finished tiny run (ERM, random and doge tickets at 20%): its config, folder and results."""
    root = tmp_path_factory.mktemp("base")
    cfg = root / "tiny.toml"
    cfg.write_text(tiny_run_toml(root / "run", data_dir, methods='["random", "doge"]'))
    results = _run(cfg, root / "run")
    return cfg, root / "run", results


@pytest.fixture
def copy(base, tmp_path) -> tuple[Path, Path, dict]:
    """A private copy of the finished tiny run."""
    cfg, out, results = base
    shutil.copytree(out, tmp_path / "run")
    (tmp_path / "run" / ".lock").unlink(missing_ok=True)
    return cfg, tmp_path / "run", results


# ---- A1: scores and tickets are reused only under the settings that made them ------------------------
@pytest.mark.parametrize("key, value", [("tickets.normalize_heads", False), ("tickets.max_score_per_domain", 3)])
def test_a_scoring_setting_redoes_scores_tickets_and_their_rewinds(copy, key, value):
    cfg, out, _ = copy
    before = _files(out)
    _run(cfg, out, **{key: value})
    after = _files(out)
    changed = {k for k in before if after[k] != before[k]}
    setting = key.split(".")[1]
    assert json.loads((out / "seed0/scores/DONE").read_text())[setting] == value
    assert "seed0/scores/scores.json" in changed or setting == "normalize_heads"  # raw sums may coincide
    assert "seed0/scores/DONE" in changed and "seed0/tickets/doge-s20-l100.json" in changed
    assert f"{DOGE}/DONE" in changed and f"{DOGE}/metrics.json" in changed
    # what the setting does not feed is kept as it was: the fine-tuning, the random ticket and its rewind
    assert not any(k.startswith(("seed0/erm/", "seed0/init/", RANDOM, "seed0/tickets/random")) for k in changed)


def test_another_allocation_chooses_every_ticket_again(copy):
    cfg, out, _ = copy
    before = _files(out)
    _run(cfg, out, **{"tickets.allocation": "global"})
    after = _files(out)
    for name in ("doge-s20-l100", "random-s20"):
        ticket = json.loads((out / f"seed0/tickets/{name}.json").read_text())
        assert ticket["allocation"] == "global", ticket
        assert after[f"seed0/rewind/{name}/DONE"] != before[f"seed0/rewind/{name}/DONE"]
    assert all(after[k] == v for k, v in before.items() if k.startswith(("seed0/erm/", "seed0/scores/")))


def test_more_sparsities_lambdas_and_methods_reuse_everything_finished(copy):
    cfg, out, _ = copy
    before = _files(out)
    results = _run(cfg, out, **{"tickets.sparsities": [0.2, 0.3], "tickets.lambdas": [100.0, 10.0],
                                "tickets.methods": ["random", "winning", "doge"]})
    after = _files(out)
    assert all(after[k] == v for k, v in before.items())
    assert len(results["rows"]) == 1 + 2 * 4  # ERM + 2 sparsities x (random, winning, doge x 2 lambdas)


# ---- A2: the table always matches the config it prints under --------------------------------------
def test_new_test_domains_reevaluate_the_saved_models(copy):
    cfg, out, results = copy
    new = _run(cfg, out, **{"data.test_domains": ["Automotive", "Software"]})
    assert new["test_domains"] == ["Automotive", "Software"]
    assert len(new["rows"]) == len(results["rows"])
    for old_row, row in zip(results["rows"], new["rows"], strict=True):
        assert row["dev"] == old_row["dev"]  # the same models, re-evaluated (not trained again)
        assert row["test"]["Software"] == old_row["test"]["Software"]
    written = json.loads((out / "results.json").read_text())
    assert written["test_domains"] == ["Automotive", "Software"]


def test_the_report_leaves_out_runs_evaluated_on_other_test_domains(copy):
    from dogetickets.report.collect import load_runs

    cfg, out, _ = copy
    _run(cfg, out, **{"data.test_domains": ["Automotive"], "tickets.methods": ["doge"]})  # random: not re-evaluated
    runs = load_runs(out)
    assert sorted(runs["name"]) == ["doge-s20-l100", "erm"]
    assert "test:Automotive" in runs.columns and "test:Software" not in runs.columns


def test_new_test_domains_without_saved_models(tmp_path, data_dir):
    cfg = tmp_path / "c.toml"
    cfg.write_text(tiny_run_toml(tmp_path / "run", data_dir))
    out = tmp_path / "run"
    _run(cfg, out, **{"run.save_models": False})
    assert not (out / DOGE / "model").exists()
    pipe = _pipe(cfg, out, **{"run.save_models": False, "data.test_domains": ["Automotive"]})
    with pytest.raises(DogeError, match="no saved model"):
        pipe.evaluate_all()
    pipe.ctx.lock.release()
    results = _run(cfg, out, **{"run.save_models": False, "data.test_domains": ["Automotive"]})
    assert results["test_domains"] == ["Automotive"]
    assert {r["row"] for r in results["rows"]} == {"ERM", "doge 20% (λ=100)"}


# ---- A3b: the label list is the run's, fixed at its first stage ------------------------------------
def test_labels_saved_and_checked_against_every_model(copy):
    cfg, out, _ = copy
    assert json.loads((out / "labels.json").read_text())["labels"] == ["negative", "positive", "neutral"]
    conf = out / "seed0/erm/model/config.json"
    raw = json.loads(conf.read_text())
    raw["id2label"] = {"0": "positive", "1": "negative", "2": "neutral"}
    conf.write_text(json.dumps(raw))
    shutil.rmtree(out / "seed0/scores")
    pipe = _pipe(cfg, out)
    with pytest.raises(DogeError, match=r"seed0/erm/model: its labels \(positive, negative, neutral\)"):
        pipe.score()
    pipe.ctx.lock.release()


def test_a_new_test_domain_with_an_unknown_label_is_one_line(tmp_path):
    """The label list comes from the run (labels.json), not from the domains configured today."""
    rows = [{"text": f"t{i}", "label": "good" if i % 2 else "bad", "domain": d} for d in ("a", "b") for i in range(8)]
    rows += [{"text": "x", "label": "good", "domain": "c"}] * 4 + [{"text": "y", "label": "meh", "domain": "c"}]
    meh_line = len(rows)
    rows += [{"text": "z", "label": "bad" if i % 2 else "good", "domain": "a_test"} for i in range(8)]
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[run]
out = "{tmp_path / 'run'}"
[data]
source = "file"
path = "{data}"
train_domains = ["a", "b"]
test_domains = ["a_test"]
[model]
max_length = 16
[train]
epochs = 1
mixed_precision = "no"
""")
    res = _doge("finetune", str(cfg), "-q")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "run/labels.json").read_text())["labels"] == ["bad", "good"]
    res = _doge("evaluate", str(cfg), "-q", "--set", 'data.test_domains=["c"]')
    _assert_one_line_error(res, f"{data}:{meh_line}", "meh")


# ---- A7: a training that fails stops alone; the sweep goes on and names it ----------------------------
def test_a_failed_training_is_reported_and_the_sweep_goes_on(tmp_path, data_dir, monkeypatch):
    import dogetickets.run.runs as runs

    cfg = tmp_path / "c.toml"
    cfg.write_text(tiny_run_toml(tmp_path / "run", data_dir, methods='["random", "doge"]'))
    out = tmp_path / "run"
    real = runs.train

    def failing(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        if kw["description"].endswith("random-s20"):
            raise TrainingFailed(f"{kw['description']}: loss is nan at step 1 (lr 5e-05)")
        return real(*args, **kw)

    monkeypatch.setattr(runs, "train", failing)
    pipe = _pipe(cfg, out)
    results = pipe.run()
    pipe.ctx.lock.release()
    assert list(pipe.failed) == ["seed0/random-s20"]
    assert "seed0/random-s20" in str(pipe.failure()) and "step 1" in str(pipe.failure())
    assert not (out / RANDOM / "DONE").exists() and (out / DOGE / "DONE").exists()
    assert [r["row"] for r in results["rows"]] == ["ERM", "doge 20% (λ=100)"]
    monkeypatch.setattr(runs, "train", real)
    before = _files(out)
    pipe = _pipe(cfg, out)
    results = pipe.run()
    pipe.ctx.lock.release()
    assert not pipe.failed and len(results["rows"]) == 3
    assert all(_files(out)[k] == v for k, v in before.items() if not k.startswith(RANDOM))


def test_a_killed_sweep_keeps_its_wall_time_up_to_its_last_finished_job(copy, monkeypatch):
    import dogetickets.run.context as context
    import dogetickets.run.runs as runs

    _, out, _ = copy
    shutil.rmtree(out / RANDOM)
    first = json.loads((out / "timing.json").read_text())["processes"]
    assert [p["ended"] for p in first] == [True]
    real = runs.train

    def killed(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt  # the session ends while random-s20 trains

    monkeypatch.setattr(runs, "train", killed)
    calls = []
    monkeypatch.setattr(context.machine, "describe", lambda: calls.append(1) or {"git": f"call {len(calls)}"})
    pipe = _pipe(copy[0], out)
    with pytest.raises(KeyboardInterrupt):
        pipe.run()
    pipe.ctx.lock.release()
    cut = json.loads((out / "timing.json").read_text())["processes"]
    assert cut[0] == first[0] and cut[1]["ended"] is False and cut[1]["total_seconds"] > 0
    # the machine and git commit as the process started (the code it runs), not as of each job's end
    assert json.loads((out / "timing.json").read_text())["machine"] == {"git": "call 1"}
    monkeypatch.setattr(runs, "train", real)
    _run(copy[0], out)  # the next sitting: its record comes after the killed one's, which is kept
    after = json.loads((out / "timing.json").read_text())["processes"]
    assert after[:2] == cut and after[2]["ended"] is True and len(after) == 3
    assert (out / RANDOM / "DONE").exists()


def test_a_record_from_before_per_process_commits_keeps_the_commit_its_process_wrote():
    """timing.json of older code: the commit only in the top-level machine, which the last record's
    process wrote. The next process's history carries it into that record (its own machine then
    overwrites the top level); records that already have one, and earlier ones, are left as they are."""
    from dogetickets.run.layout import process_history

    old = {"total_seconds": 5.0, "command": ["doge", "run"], "machine": {"git": "aaa"}}  # before "processes"
    assert process_history(old) == [{"total_seconds": 5.0, "command": ["doge", "run"], "git": "aaa"}]
    timing = {"machine": {"git": "bbb"}, "processes": [{"total_seconds": 1.0}, {"total_seconds": 2.0}]}
    assert process_history(timing) == [{"total_seconds": 1.0}, {"total_seconds": 2.0, "git": "bbb"}]
    timing["processes"][1]["git"] = "ccc"
    assert process_history(timing)[1]["git"] == "ccc"
    assert process_history({"processes": [{"total_seconds": 1.0}]}) == [{"total_seconds": 1.0}]


def test_the_recorded_command_is_the_one_a_user_types_again():
    """timing.json and the report's "Reproduce" name `doge`, however the process was started; any other
    program's argv is kept as it was."""
    from dogetickets.run.layout import typed_command

    assert typed_command(["/home/u/.venv/bin/doge", "run", "c.toml"]) == ["doge", "run", "c.toml"]
    assert typed_command(["/work/src/dogetickets/cli.py", "report", "r"]) == ["doge", "report", "r"]
    assert typed_command(["/work/other/cli.py", "run"]) == ["/work/other/cli.py", "run"]
    assert typed_command(["python", "x.py"]) == ["python", "x.py"]


def test_a_diverging_sweep_exits_2_naming_its_runs(tmp_path, data_dir):
    cfg = tmp_path / "c.toml"
    cfg.write_text(tiny_run_toml(tmp_path / "run", data_dir, methods='["random", "doge"]'))
    res = _doge("run", str(cfg), "-q", "--set", "train.lr=1e30")
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "seed0/erm" in last and "seed0/random-s20" in last, last
    assert "lr" in last and "step" in last
    assert not list((tmp_path / "run").rglob("erm/DONE"))


# ---- B: damaged run directories: the stage is redone, or one line says what to do --------------------
@pytest.mark.parametrize("damage", [
    "seed0/erm/model/model.safetensors", "seed0/init/model.safetensors", "seed0/scores/scores.json",
    f"{DOGE}/metrics.json", "seed0/tickets/doge-s20-l100.json", f"{RANDOM}/DONE",
])
def test_a_damaged_stage_is_redone_to_the_same_result(copy, damage):
    cfg, out, results = copy
    path = out / damage
    if path.suffix == ".safetensors":
        path.unlink()
    elif path.name == "DONE":
        path.write_text("")  # a marker from before settings were recorded
    else:
        path.write_text(path.read_text()[:40])  # truncated
    assert _run(cfg, out) == results  # redone, deterministically, to the very same numbers


@pytest.mark.parametrize("damage", ["config.toml", "labels.json"])
def test_a_damaged_run_file_is_one_line(copy, damage):
    cfg, out, _ = copy
    (out / damage).write_text((out / damage).read_text()[:25])
    res = _doge("run", str(cfg), "-q", "--out", str(out))
    _assert_one_line_error(res, str(out / damage), "damaged", "delete it")


def test_a_changed_fixed_setting_names_the_key(copy):
    cfg, out, _ = copy
    res = _doge("run", str(cfg), "-q", "--out", str(out), "--set", "train.lr=3e-5")
    _assert_one_line_error(res, "train.lr", "another run.out")


def test_a_config_key_added_since_counts_as_its_default(copy):
    """A run directory from before a [train] key existed reopens when the key keeps its default."""
    cfg, out, results = copy
    text = (out / "config.toml").read_text()
    (out / "config.toml").write_text("\n".join(x for x in text.splitlines() if not x.startswith("physical")))
    assert _run(cfg, out) == results
    res = _doge("run", str(cfg), "-q", "--out", str(out), "--set", "train.physical=false")
    _assert_one_line_error(res, "train.physical")


# ---- B: one process at a time on a run directory --------------------------------------------------------
def test_a_second_run_on_a_busy_directory_is_refused_and_a_killed_one_leaves_no_lock(copy):
    cfg, out, _ = copy
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from dogetickets.run.layout import RunLock; "
        f"RunLock({str(out / '.lock')!r}).acquire(); print('locked', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = _doge("run", str(cfg), "-q", "--out", str(out))
        _assert_one_line_error(res, "in use", f"pid {holder.pid}")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    res = _doge("run", str(cfg), "-q", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]


# ---- A6: a max_length the model cannot take is refused before anything runs ----------------------------
def test_max_length_above_the_model_positions(tmp_path, data_dir):
    cfg = tmp_path / "c.toml"
    cfg.write_text(tiny_run_toml(tmp_path / "run", data_dir, max_length=1024))
    res = _doge("run", str(cfg), "-q")
    _assert_one_line_error(res, "model.max_length", "1024", "512")
    assert not list(tmp_path.rglob("DONE"))


# ---- C: the same seed gives the same bytes; another seed does not -------------------------------------
@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_other_numbers(tmp_path, data_dir):
    def run(name: str, seed: int) -> Path:
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(tiny_run_toml(tmp_path / name, data_dir, seeds=f"[{seed}]", max_length=48)
                       .replace("max_train_per_domain = 6", "max_train_per_domain = 40")
                       .replace("max_eval_per_domain = 6", "max_eval_per_domain = 40"))
        _run(cfg, tmp_path / name)
        return tmp_path / name / f"seed{seed}"

    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    files = ["tickets/doge-s20-l100.json", "scores/scores.json", "erm/metrics.json", "erm/predictions.jsonl",
             "rewind/doge-s20-l100/metrics.json", "rewind/doge-s20-l100/predictions.jsonl"]
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    ma, mc = (json.loads((x / "erm/metrics.json").read_text()) for x in (a, c))
    assert ma["dev"] != mc["dev"] or ma["test"] != mc["test"]
    assert (a / "tickets/doge-s20-l100.json").read_bytes() != (c / "tickets/doge-s20-l100.json").read_bytes()

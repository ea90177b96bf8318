"""Sweeps: a run killed with SIGKILL resumes without redoing finished runs and ends as if never killed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_run_toml


def _config(path: Path, out: Path, data_dir: Path) -> Path:
    path.write_text(tiny_run_toml(out, data_dir, seeds="[0, 1]", max_length=48, methods='["random", "doge"]',
                                  sparsities="[0.3]"))
    return path


def _run(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dogetickets.cli", "run", str(cfg), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(out: Path) -> dict[Path, int]:
    """Every file of every finished stage, with its mtime."""
    stamps = {}
    for done in out.rglob("DONE"):
        for p in done.parent.rglob("*"):
            if p.is_file():
                stamps[p] = p.stat().st_mtime_ns
    return stamps


def _strip_times(obj):  # noqa: ANN001, ANN202
    return json.loads(json.dumps(obj), object_hook=lambda d: {k: v for k, v in d.items()
                                                             if k not in ("seconds", "train_examples_per_s")})


@pytest.mark.slow
def test_killed_sweep_resumes_and_matches_an_uninterrupted_one(tmp_path, data_dir):
    ref_out = tmp_path / "ref" / "sweep"
    ref = _run(_config(tmp_path / "ref.toml", ref_out, data_dir))
    killed_out = tmp_path / "killed" / "sweep"
    cfg = _config(tmp_path / "killed.toml", killed_out, data_dir)
    proc = _run(cfg)
    deadline = time.time() + 600
    while not (killed_out / "seed0" / "rewind" / "random-s30" / "DONE").exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:] if proc.stderr else ""
        assert time.time() < deadline
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _finished(killed_out)
    assert before and not (killed_out / "results.json").exists()
    done_runs = {p.parent for p in before if p.name == "DONE"}
    contents = {p: p.read_bytes() for p in before}

    res = subprocess.run([sys.executable, "-m", "dogetickets.cli", "run", str(cfg), "-q"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    after = _finished(killed_out)
    for p, stamp in before.items():  # finished runs were neither recomputed nor rewritten
        assert after[p] == stamp, p
        assert p.read_bytes() == contents[p], p
    assert len({p.parent for p in after if p.name == "DONE"}) > len(done_runs)

    assert ref.wait(timeout=900) == 0, ref.stderr.read()[-2000:] if ref.stderr else ""
    got = _strip_times(json.loads((killed_out / "results.json").read_text()))
    want = _strip_times(json.loads((ref_out / "results.json").read_text()))
    assert got == want
    for d in (ref_out, killed_out):
        res = subprocess.run([sys.executable, "-m", "dogetickets.cli", "report", str(d), "--n-boot", "200"],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    for name in ("table2.csv", "bootstrap.csv"):
        a = list(csv.reader((ref_out / name).open()))
        b = list(csv.reader((killed_out / name).open()))
        assert a == b, name

"""The sweep as declared jobs: one declaration drives the sequential sweep, `doge jobs` + `doge run --only`
(another scheduler) and the Ray sweep (`--workers`), with the same files, resumable after a kill, and
results identical to the sequential ones on CPU. A tiny real subsample: seconds per training."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import tiny_run_toml

from dogetickets.config import load_config
from dogetickets.distributed import execute_job
from dogetickets.run.plan import Job, find, plan
from dogetickets.run.sweep import Sweep

DOGE = [sys.executable, "-m", "dogetickets.cli"]
RUNS = ("seed0/erm", "seed0/rewind/random-s20", "seed0/rewind/doge-s20-l100")


THREADS = max(1, (os.cpu_count() or 1) // 2)  # each of 2 Ray workers' torch threads; the reference uses as many


def _doge(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}  # the same float sums as the reference
    return subprocess.run([*DOGE, *args], capture_output=True, text=True, timeout=900, env=env)


def _metrics(out: Path) -> dict[str, dict]:
    return {r: json.loads((out / r / "metrics.json").read_text()) for r in RUNS}


def _done_marks(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("DONE")}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, data_dir) -> tuple[Path, Path]:
    """The tiny config and its sequential run (the reference)."""
    root = tmp_path_factory.mktemp("seq")
    cfg = root / "tiny.toml"
    cfg.write_text(tiny_run_toml(root / "run", data_dir, methods='["random", "doge"]'))
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    pipe = Sweep(load_config(cfg), show_progress=False)
    try:
        pipe.run()
    finally:
        pipe.ctx.lock.release()
        torch.set_num_threads(threads)
    return cfg, root / "run"


@pytest.fixture
def stop_ray():
    yield
    subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], capture_output=True, timeout=120)


def test_plan_declares_every_job_after_its_needs(sequential):
    cfg, _ = sequential
    jobs = plan(load_config(cfg, {"run.seeds": [0, 1], "run.baselines": ["erm", "irm"]}))
    names = [j.name for j in jobs]
    assert names[:4] == ["seed0/init", "seed0/erm", "seed0/irm", "seed0/scores"]
    assert "seed1/rewind/doge-s20-l100" in names and len(names) == len(set(names))
    for i, job in enumerate(jobs):
        assert all(names.index(n) < i for n in job.needs), job
    assert find(jobs, "seed0/tickets/random-s20/").needs == ("seed0/init",)  # random needs no scores
    assert find(jobs, "seed1/rewind/doge-s20-l100").needs == ("seed1/tickets/doge-s20-l100", "seed1/init")
    assert sum(j.is_run for j in jobs) == 2 * (2 + 2)


def test_jobs_prints_one_command_per_pending_job_that_reproduces_the_sweep(sequential, tmp_path):
    cfg, seq = sequential
    out = tmp_path / "run"
    res = _doge("jobs", str(cfg), "--out", str(out))
    assert res.returncode == 0, res.stderr
    commands = res.stdout.strip().splitlines()
    assert [shlex.split(c)[-2] for c in commands] == [j.name for j in plan(load_config(cfg))]
    bad = _doge("run", str(cfg), "--out", str(out), "--only", "seed0/rewind/doge-s20-l100", "-q")
    assert bad.returncode == 2 and "needs seed0/tickets/doge-s20-l100, which is not finished" in bad.stderr
    for command in commands:
        args = shlex.split(command)
        assert args[:2] == ["doge", "run"]
        r = _doge(*args[1:])
        assert r.returncode == 0, (command, r.stderr)
    assert _doge("jobs", str(cfg), "--out", str(out)).stdout == ""
    assert _metrics(out) == _metrics(seq)


def test_worker_that_cannot_see_the_run_directory_fails_in_one_line(sequential, tmp_path):
    cfg, _ = sequential
    cfg_dict = load_config(cfg, {"run.out": str(tmp_path / "elsewhere")}).to_dict()
    status = execute_job(cfg_dict, Job("init", 0), 1)
    assert not status["ok"] and "not a prepared run directory" in status["error"] and "\n" not in status["error"]
    blocked = execute_job(cfg_dict, Job("baseline", 0, "erm", ("seed0/init",)), 1, status)
    assert blocked["error"] == "it needs seed0/init, which failed" and blocked["cause"] == "seed0/init"


def test_ray_sweep_names_a_failed_run_goes_on_and_a_rerun_retries_only_it(sequential, tmp_path, stop_ray):
    cfg, seq = sequential
    out = tmp_path / "run"
    blocker = out / "seed0/rewind/random-s20"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")  # this run cannot write its folder
    res = _doge("run", str(cfg), "--out", str(out), "--workers", "2", "-q")
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert "1 run(s) failed: seed0/random-s20" in last and "Traceback" not in res.stderr
    assert (out / "seed0/rewind/doge-s20-l100/DONE").is_file()
    before = _done_marks(out)
    blocker.unlink()
    res = _doge("run", str(cfg), "--out", str(out), "--workers", "2", "-q")
    assert res.returncode == 0, res.stderr
    after = _done_marks(out)
    assert all(after[k] == v for k, v in before.items())  # nothing finished was recomputed
    assert _metrics(out) == _metrics(seq)  # CPU: identical to the sequential sweep


def test_ray_sweep_killed_half_way_resumes_to_the_sequential_results(sequential, tmp_path, stop_ray):
    cfg, seq = sequential
    out = tmp_path / "run"
    proc = subprocess.Popen([*DOGE, "run", str(cfg), "--out", str(out), "--workers", "2", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not (out / "seed0/erm/DONE").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # the driver only: Ray's own processes see it die
    proc.wait(timeout=60)
    assert (out / "seed0/erm/DONE").is_file()
    erm_done = (out / "seed0/erm/DONE").stat().st_mtime_ns
    time.sleep(3)  # the orphaned workers of the dead driver are stopped by Ray
    res = _doge("run", str(cfg), "--out", str(out), "--workers", "2", "-q")
    assert res.returncode == 0, res.stderr
    assert (out / "seed0/erm/DONE").stat().st_mtime_ns == erm_done
    assert _metrics(out) == _metrics(seq)
    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(
        (seq / "results.json").read_text())["rows"]


# ---- joining a cluster: --address ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    err = res.stderr.strip()
    assert res.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def ray_cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """A one-CPU Ray cluster on 127.0.0.1 with its Ray Client server and token authentication (Ray's default for
    a `ray start` cluster where a token exists): (its ray:// address, what a client's environment needs).

    `ray start --block` stays in the foreground and takes its own processes down on SIGTERM, so the teardown
    stops this cluster only (`ray stop` would stop every Ray instance of the machine). Its temp dir is its own:
    nothing else finds it as "the current cluster". Function-scoped: the other tests' `ray stop` cannot hit it."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    gcs, client = _free_port(), _free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    # without it Ray swaps a loopback --node-ip-address for the machine's outward IP: this keeps it on 127.0.0.1
    env = {**os.environ, **auth, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    log = open(Path(temp) / "start.log", "w")  # closed in the teardown
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={gcs}", f"--ray-client-server-port={client}", "--num-cpus=1", "--disable-usage-stats",
         "--include-dashboard=false", f"--temp-dir={temp}", "--object-store-memory=100000000"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (Path(temp) / "ray_current_cluster").is_file():  # written once the head is up
            assert proc.poll() is None and time.time() < deadline, (Path(temp) / "start.log").read_text()[-3000:]
            time.sleep(0.5)
        yield f"ray://127.0.0.1:{client}", auth
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: this cluster's processes only
            proc.wait(timeout=30)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_sweep_joins_a_cluster_through_the_ray_client(sequential, tmp_path, ray_cluster):
    cfg, seq = sequential
    address, auth = ray_cluster
    out = tmp_path / "run"
    res = subprocess.run([*DOGE, "run", str(cfg), "--out", str(out), "--address", address, "-q"],
                         capture_output=True, text=True, timeout=900, env={**os.environ, **auth})
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"results: {out / 'results.md'}" in res.stdout
    assert all((out / r / "DONE").is_file() for r in RUNS)
    if THREADS == 1:  # a cluster's CPU job runs one thread: the same float sums as the reference then
        assert _metrics(out) == _metrics(seq)


def test_unreachable_cluster_is_one_line_within_seconds(sequential, tmp_path):
    cfg, _ = sequential
    address = f"ray://127.0.0.1:{_free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    res = _doge("run", str(cfg), "--out", str(tmp_path / "run"), "--address", address, "-q")
    assert time.perf_counter() - t0 < 30
    _assert_one_line_error(res, f"--address {address}: no Ray Client server answers there (Connection refused)",
                           "ray start --head")
    assert not (tmp_path / "run").exists()  # refused before the run directory is touched


def test_workers_do_not_combine_with_an_address(sequential, tmp_path):
    cfg, _ = sequential
    res = _doge("run", str(cfg), "--out", str(tmp_path / "run"), "--workers", "2", "--address", "ray://127.0.0.1:1")
    _assert_one_line_error(res, "--workers 2 with --address ray://127.0.0.1:1", "give one of them")
    assert not (tmp_path / "run").exists()


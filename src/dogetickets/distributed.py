"""A sweep over many devices and machines: the declared jobs (dogetickets.run.plan) as a Ray task graph.

`doge run CONFIG --workers N` starts a local Ray instance with N CPU slots; `--address auto` (on a node of
a running cluster) or `--address ray://host:port` (its Ray Client server, from anywhere; needs
`ray[client]`) joins a cluster instead, whose nodes' CPUs and GPUs (`ray start --num-cpus/--num-gpus`)
decide how many jobs run at once, so `--workers` and `--address` do not combine. The driver first
connects (an address nothing answers on is a one-line error within seconds), then prepares and locks the
run directory exactly as the sequential `doge run` does, then submits one Ray task per job, each job's
inputs passed as the ObjectRefs of the jobs it needs, so Ray starts it when they are done. A task builds a
worker `Sweep` (no lock, no config written) and calls the same `Sweep.execute` as the sequential
sweep: same files, written atomically, DONE last; finished jobs are skipped, so a killed sweep resumes.
Each task asks Ray for one GPU where the cluster has GPUs, else for one CPU slot, and then uses cores / N
threads on a local instance, one thread on a cluster (one per CPU slot it holds). The run directory must
be on a filesystem every worker sees; a worker that does not see it fails its job with a one-line error.

A job that fails (any error) is reported by its run name with a one-line reason; the jobs that need it
are skipped, the others go on, and the driver raises one DogeError naming every failed run (a rerun
retries only those). Ray is an optional dependency (`pip install "dogetickets[ray]"`, which includes the
Ray Client; the README's set-up command installs it).
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from typing import TYPE_CHECKING, Any

from dogetickets.errors import DogeError

if TYPE_CHECKING:
    from dogetickets.run.plan import Job
    from dogetickets.run.sweep import Sweep


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]


def execute_job(cfg_dict: dict[str, Any], job: Job, threads: int, *needs: dict[str, Any]) -> dict[str, Any]:
    """Run one job in a worker process; never raises: returns {"name", "run", "ok", "error", "seconds"}.

    `needs` are the results of the jobs it needs (Ray passes them once they are done)."""
    status: dict[str, Any] = {"name": job.name, "run": job.run_name, "is_run": job.is_run, "ok": False,
                              "error": "", "cause": None, "seconds": 0.0}
    failed = next((n for n in needs if not n["ok"]), None)
    if failed is not None:
        cause = failed["cause"] or failed["run"]
        status.update(cause=cause, error=f"it needs {cause}, which failed")
        return status
    t0 = time.perf_counter()
    try:
        import torch

        from dogetickets.config import config_from_dict
        from dogetickets.run.sweep import Sweep

        if threads > 0:
            torch.set_num_threads(threads)
        sweep = Sweep(config_from_dict(cfg_dict), show_progress=False, worker=True)
        sweep.open()
        sweep.execute(job)
        status["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - a job's failure is data for the driver
        status["error"] = _one_line(exc)
    status["seconds"] = time.perf_counter() - t0
    return status


def _resources(workers: int, local: bool) -> tuple[dict[str, float], int]:
    """Ray options of one job and torch's thread count in it: a GPU each where the cluster has GPUs (0: torch
    decides), else one CPU slot with cores / `workers` threads on a local instance, one on a cluster."""
    import ray

    if ray.cluster_resources().get("GPU", 0) >= 1:
        return {"num_gpus": 1, "num_cpus": 1}, 0
    if not local:
        return {"num_cpus": 1}, 1
    cores = os.cpu_count() or 1
    return {"num_cpus": 1}, max(1, cores // max(workers, 1))


CLIENT_PORT = 10001  # the Ray Client server's port when ray://host names none (`ray start --ray-client-server-port`)
CONNECT_TIMEOUT = 5.0  # seconds for the TCP probe of a ray:// address


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """A ray:// address whose Ray Client server accepts no TCP connection is a one-line DogeError at once
    (Ray's client would retry for half a minute, then raise). Other addresses are left to Ray."""
    if not address.startswith("ray://"):
        return
    hostport = address[len("ray://"):].split("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or "]" in port:  # no port (an IPv6 literal's colons are inside its brackets)
        host, port = hostport, str(CLIENT_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DogeError(f"--address {address}: expected ray://HOST:PORT (the Ray Client server, port {CLIENT_PORT} "
                        "unless `ray start --ray-client-server-port` says otherwise)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise DogeError(f"--address {address}: no Ray Client server answers there ({why}); start the cluster "
                        f"with `ray start --head` (its client server listens on port {CLIENT_PORT}) or check "
                        "the address") from None


def _connect(workers: int, address: str | None) -> None:
    """Start a local Ray instance with `workers` CPU slots, or join the cluster at `address`; one line if not."""
    import ray

    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if not address:
        ray.init(num_cpus=workers, **kwargs)
        return
    check_reachable(address)
    try:
        with warnings.catch_warnings():  # Ray's client warns on stderr before it raises: the error says it all
            warnings.simplefilter("ignore")
            ray.init(address=address, **kwargs)
    except Exception as exc:  # noqa: BLE001 - whatever keeps us out of the cluster is one line
        hint = ""
        if address.startswith("ray://") and "timeout" in str(exc).lower():
            hint = ("; a cluster with token authentication needs RAY_AUTH_MODE=token (and its token: RAY_AUTH_TOKEN "
                    "or ~/.ray/auth_token) here too")
        raise DogeError(f"--address {address}: cannot join the Ray cluster ({_one_line(exc)}){hint}") from None


def check_options(workers: int, address: str | None) -> None:
    """--workers N (a local instance) or --address (a cluster), not both: a one-line DogeError otherwise."""
    if address and workers:
        raise DogeError(f"--workers {workers} with --address {address}: --workers starts a local Ray instance, "
                        "--address joins a cluster whose nodes' CPUs and GPUs (ray start --num-cpus/--num-gpus) "
                        "decide how many jobs run at once; give one of them")
    if not address and workers < 1:
        raise DogeError(f"--workers {workers}: needs at least 1")


def run_ray(sweep: Sweep, workers: int, address: str | None = None) -> dict[str, Any]:
    """The whole sweep of `sweep`'s config on Ray: a local instance of `workers` CPU slots, or the cluster at
    `address` (then `workers` must be 0: the cluster's resources decide); the table as `Sweep.run`
    returns it. Failed runs are in `sweep.failed` (`sweep.failure()` names them), as with the sequential sweep."""
    try:
        import ray
    except ImportError:
        raise DogeError('--workers/--address need Ray: pip install "dogetickets[ray]"') from None
    from dogetickets.progress import sweep_progress

    check_options(workers, address)
    started_here = not ray.is_initialized()
    if started_here:
        _connect(workers, address)
    try:
        sweep.open()  # the driver holds the run directory: lock, config, labels
        cfg_dict = sweep.cfg.to_dict()
        if sweep.cfg.data.source == "released":
            cfg_dict["data"]["dir"] = str(sweep.cfg.data_dir().resolve())  # workers may not share the environment
        cfg_dict["run"]["out"] = str(sweep.out.resolve())
        options, threads = _resources(workers, local=not address)
        remote = ray.remote(execute_job).options(max_retries=0, **options)
        jobs = sweep.plan()
        refs: dict[str, Any] = {}
        for job in jobs:
            refs[job.name] = remote.remote(cfg_dict, job, threads, *(refs[n] for n in job.needs))
        total = sum(j.is_run for j in jobs)
        pending = list(refs.values())
        where = f"the cluster at {address}" if address else f"Ray, {workers} workers"
        with sweep_progress(f"sweep on {where} ({total} runs)", total, sweep.ctx.show_progress) as advance:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                status = ray.get(ready[0])
                if not status["ok"] and (status["is_run"] or status["cause"] is None):
                    sweep.failed.setdefault(status["run"], status["error"])  # a ticket's own error comes first
                    if status["cause"] is None:
                        sweep.ctx.warn(f"{status['run']} failed: {status['error']}")
                if status["is_run"]:
                    advance(1, info=status["run"])
                sweep.record_time(ended=False)  # a driver killed later keeps its time up to here
    finally:
        if started_here:
            ray.shutdown()
    runs = sum(j.is_run for j in sweep.plan())
    results = sweep.results() if len(sweep.failed) < runs else {}
    sweep.report_time()
    return results

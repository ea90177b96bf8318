"""What a reader needs to judge wall times: the machine, the libraries and the code that ran.

``describe()`` returns a JSON-serializable dict (the pipeline records it in a run directory's timing.json
under "machine"); ``lines(d)`` renders one as "label: value" lines for a report. Nothing here fails: a
value that cannot be read is None (or, for the git commit, the key is absent).
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["BF16_FLAGS", "cpu_features", "cpu_flags", "describe", "lines", "precision_name"]

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # the x86 features under which train.mixed_precision "auto" is bf16
REPORTED_FLAGS = ("avx2", "avx512f", *BF16_FLAGS)  # what a report names of the CPU: they decide precision and speed

GIT_TIMEOUT = 2.0  # seconds per git call

# key -> label, in display order (see describe())
LABELS: dict[str, str] = {
    "os": "OS",
    "python": "Python",
    "cpu": "CPU",
    "cpu_features": "CPU features",
    "logical_cores": "logical cores",
    "torch_threads": "torch threads",
    "ram_gib": "RAM (GiB)",
    "cuda_devices": "CUDA devices",
    "torch": "torch",
    "transformers": "transformers",
    "accelerate": "accelerate",
    "dogetickets": "dogetickets",
    "git": "git commit",
}


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo on Linux x86); empty elsewhere or when unreadable."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_features() -> list[str]:
    """Which of `REPORTED_FLAGS` this CPU has (x86 only; empty elsewhere)."""
    flags = cpu_flags()
    return [f for f in REPORTED_FLAGS if f in flags]


def precision_name(precision: str) -> str:
    """A resolved train.mixed_precision as a reader names it: "fp32" for "no"."""
    return "fp32" if precision == "no" else precision


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("MemTotal:"):
                kib = float(line.split()[1])
                return round(kib / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _package_version() -> str | None:
    try:
        from dogetickets import __version__

        return str(__version__)
    except ImportError:
        return _version("dogetickets")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _git_commit(here: Path | None = None) -> str | None:
    """Short sha of the working tree holding this package's source (`here`: its folder), +"dirty" when that
    source has uncommitted changes (other files of the tree, e.g. a report being written, do not make the
    code dirty); None when the package is not tracked by a git working tree (e.g. an installed wheel)."""
    here = here or Path(__file__).resolve().parent
    # The package file must be tracked: a wheel installed into a venv inside some repository is not that code.
    if _git(["ls-files", "--error-unmatch", "__init__.py"], here) is None:
        return None
    sha = _git(["rev-parse", "--short", "HEAD"], here)
    status = _git(["status", "--porcelain", "--", "."], here)
    if not sha or not sha.strip() or status is None:
        return None
    return sha.strip() + ("+dirty" if status.strip() else "")


def _torch() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"torch_threads": None, "cuda_devices": [], "torch": None}
    devices: list[str] = []
    try:
        if torch.cuda.is_available():
            devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken driver must not stop a run
        devices = []
    return {"torch_threads": int(torch.get_num_threads()), "cuda_devices": devices, "torch": str(torch.__version__)}


def describe() -> dict[str, Any]:
    """The machine and software of this process.

    Keys: os, python, cpu (str or None), cpu_features (those of avx2, avx512f, avx512_bf16, amx_bf16 it
    has: they decide what train.mixed_precision "auto" is, and the speed), logical_cores (int or None),
    torch_threads (int or None), ram_gib
    (float or None), cuda_devices (list of names, empty without CUDA), torch, transformers, accelerate,
    dogetickets (versions, str or None), and git (short sha, "+dirty" if the tree has changes) only when
    the package's source is a git working tree.
    """
    t = _torch()
    out: dict[str, Any] = {
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpu": _cpu_model(),
        "cpu_features": cpu_features(),
        "logical_cores": os.cpu_count(),
        "torch_threads": t["torch_threads"],
        "ram_gib": _ram_gib(),
        "cuda_devices": t["cuda_devices"],
        "torch": t["torch"],
        "transformers": _version("transformers"),
        "accelerate": _version("accelerate"),
        "dogetickets": _package_version(),
    }
    commit = _git_commit()
    if commit is not None:
        out["git"] = commit
    return out


def _value(v: Any) -> str:
    if v is None:
        return "unknown"
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v) if v else "none"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_value(x)}" for k, x in v.items()) if v else "none"
    return str(v)


def lines(d: dict[str, Any]) -> list[str]:
    """A recorded description as "label: value" lines: known keys first (in LABELS order), then the rest."""
    keys = [k for k in LABELS if k in d] + [k for k in d if k not in LABELS]
    return [f"{LABELS.get(k, k)}: {_value(d[k])}" for k in keys]

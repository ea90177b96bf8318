"""The run directory: where every artifact lives, which settings made it, and who may write it.

    <out>/config.toml                         the resolved config (what the run directory holds)
    <out>/labels.json                         the label list, fixed at the first stage
    <out>/seed<k>/init/                       the rewind point: pretrained weights + seeded task head
    <out>/seed<k>/erm/, irm/                  baselines: model/, metrics.json, predictions.jsonl, DONE
    <out>/seed<k>/irm-grid/w<weight>/         IRM with each weight of irm.penalty_weights (on irm.choice_seed)
    <out>/seed<k>/scores/scores.json          per-domain expressive scores and the combined scores
    <out>/seed<k>/tickets/<name>.json         one ticket per method x sparsity (x lambda)
    <out>/seed<k>/rewind/<name>/              ticket.json, model/, metrics.json, predictions.jsonl, DONE
    <out>/results.json, results.md            the table
    <out>/timing.json                         wall time: a record per `doge run` process (:func:`process_history`)
    <out>/trackers/                           the experiment trackers' files (run.log_with)

A stage folder is finished when its DONE marker holds exactly the settings that the current config
asks of it (:func:`recorded`, :func:`changed_setting`); any other DONE is stale and the stage is
redone. One process at a time writes a run directory (:class:`RunLock`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dogetickets import methods as registry
from dogetickets.errors import DogeError
from dogetickets.io import DONE, flat_keys, read_json_or_none

BASELINE_FOLDERS = tuple(registry.baselines())  # each baseline trains in seed<k>/<its name>
_SEED_RE = re.compile(r"^seed(\d+)$")


@dataclass(frozen=True)
class RunLayout:
    """Every path of a run directory, in one place."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def labels(self) -> Path:
        return self.root / "labels.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def timing(self) -> Path:
        return self.root / "timing.json"

    @property
    def trackers(self) -> Path:
        """The experiment trackers' files (run.log_with; `dogetickets.training.trackers`)."""
        return self.root / "trackers"

    def seed(self, seed: int) -> Path:
        return self.root / f"seed{seed}"

    def init(self, seed: int) -> Path:
        return self.seed(seed) / "init"

    def baseline(self, seed: int, objective: str) -> Path:
        return self.seed(seed) / objective

    def scores_dir(self, seed: int) -> Path:
        return self.seed(seed) / "scores"

    def scores(self, seed: int) -> Path:
        return self.scores_dir(seed) / "scores.json"

    def ticket(self, seed: int, name: str) -> Path:
        return self.seed(seed) / "tickets" / f"{name}.json"

    def irm_grid(self, seed: int, penalty_weight: float) -> Path:
        """IRM trained with one penalty weight of the grid (irm.penalty_weights), to choose the weight on dev."""
        return self.seed(seed) / "irm-grid" / f"w{penalty_weight:g}"

    def tickets_dir(self, seed: int) -> Path:
        return self.seed(seed) / "tickets"

    def rewinds_dir(self, seed: int) -> Path:
        return self.seed(seed) / "rewind"

    def rewind(self, seed: int, name: str) -> Path:
        return self.rewinds_dir(seed) / name

    def seed_folders(self, seeds: Iterable[int] | None = None) -> list[tuple[int, Path]]:
        """(seed, folder) of the ``seed<k>`` folders present, by seed; only those of `seeds` unless None."""
        wanted = None if seeds is None else {int(s) for s in seeds}
        found = []
        for child in self.root.iterdir() if self.root.is_dir() else []:
            m = _SEED_RE.match(child.name)
            if m and child.is_dir() and (wanted is None or int(m.group(1)) in wanted):
                found.append((int(m.group(1)), child))
        return sorted(found)

    def run_folders(self, seed: int) -> list[Path]:
        """Every training folder of a seed present on disk: the baselines, then the rewound tickets by name."""
        folders = [self.baseline(seed, b) for b in BASELINE_FOLDERS if self.baseline(seed, b).is_dir()]
        rewinds = self.rewinds_dir(seed)
        return folders + (sorted(c for c in rewinds.iterdir() if c.is_dir()) if rewinds.is_dir() else [])

    def ticket_files(self, seed: int) -> list[Path]:
        """The ticket files of a seed present on disk, by name."""
        folder = self.tickets_dir(seed)
        return sorted(folder.glob("*.json")) if folder.is_dir() else []


def recorded(folder: Path) -> dict[str, Any] | None:
    """The settings a finished stage recorded in its DONE marker; None if not finished.

    A DONE that is empty (written before settings were recorded) or unreadable records nothing ({}),
    which matches no settings: the stage is redone."""
    path = Path(folder) / DONE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


NOT_STARTED = "not started"  # what `unfinished` says of a stage with no DONE marker: nothing to redo


def unfinished(folder: Path, settings: dict[str, Any], files: tuple[str, ...] = ()) -> str | None:
    """Why the stage in `folder` is not finished under exactly `settings` with its `files` intact: NOT_STARTED
    without a DONE marker, else what makes its DONE stale; None when it is finished. Warns nobody, changes
    nothing: the caller decides what to say and to redo."""
    rec = recorded(folder)
    if rec is None:
        return NOT_STARTED
    if not rec:
        return "its DONE marker records no settings"
    if (change := changed_setting(rec, settings)) is not None:
        return f"a setting changed: {change}"
    if bad := [f for f in files if not intact(folder / f)]:
        return f"{folder / bad[0]} is missing or damaged"
    return None


def canonical(value: Any) -> str:
    """A settings record (or any JSON value) as one comparable string."""
    return json.dumps(value, sort_keys=True, default=str)


def intact(path: Path) -> bool:
    """The file exists, is not empty and, if JSON, parses."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    return path.suffix != ".json" or read_json_or_none(path) is not None


def changed_setting(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first dotted setting whose value differs between two settings records, as 'key (a -> b)'."""
    a, b = flat_keys(old), flat_keys(new)
    for key in [*b, *(k for k in a if k not in b)]:
        if key not in a:
            return f"{key} (not recorded -> {b[key]!r})"
        if key not in b:
            return f"{key} ({a[key]!r} -> not set)"
        if a[key] != b[key]:
            return f"{key} ({a[key]!r} -> {b[key]!r})"
    return None


class RunLock:
    """An exclusive lock on a run directory, held while a process writes it.

    `flock` on `<out>/.lock`: the operating system releases it when the holder exits, however it
    exits, so a killed run never leaves it stuck. The holder's pid is written into the file so a
    second process can say who holds it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DogeError(
                f"{self.path.parent}: in use by another doge process (pid {holder}); "
                "wait for it to finish or use another run.out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def run_config(run_dir: Path) -> dict[str, Any] | None:
    """A run directory's resolved config (config.toml) as parsed TOML, or None when it has no readable one."""
    try:
        raw = tomllib.loads(RunLayout(Path(run_dir)).config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return raw if isinstance(raw, dict) else None


def typed_command(argv: list[str]) -> list[str]:
    """The command as a user types it again: `doge ...` whether it ran as the `doge` script or as
    `python -m dogetickets.cli` (whose argv[0] is the module's file, a path of this machine)."""
    first = Path(argv[0]) if argv else Path()
    if first.name == "doge" or (first.name == "cli.py" and first.parent.name == "dogetickets"):
        return ["doge", *argv[1:]]
    return list(argv)


def process_history(timing: Any) -> list[dict[str, Any]]:
    """The records of the earlier `doge run` processes on a run directory, from its timing.json: its
    "processes" list, or, for a timing.json written before that list, its one process.

    A record from before records kept their git commit gets the top-level machine's: the last writer of
    timing.json wrote it, and that is the last record's process (processes append in order). Without
    this, the next process's machine would overwrite the only trace of that commit."""
    if not isinstance(timing, dict):
        return []
    records: list[dict[str, Any]] = []
    if isinstance(timing.get("processes"), list):
        records = [p for p in timing["processes"] if isinstance(p, dict)]
    elif isinstance(timing.get("total_seconds"), (int, float)):
        records = [{k: timing[k] for k in ("total_seconds", "outside_model_seconds", "command") if k in timing}]
    machine = timing.get("machine")
    if records and "git" not in records[-1] and isinstance(machine, dict) and machine.get("git"):
        records[-1] = {**records[-1], "git": machine["git"]}
    return records

"""Where the report's numbers come from: the "Wall time and machine" section (each run directory's
timing.json: its `doge run` processes, the training its reported runs recorded, the precision they trained
in, the machine and the code) and the "Reproduce" section (the commands that make the directories and the
report again). The wall time is each directory's whole, whatever seeds the report reads."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from dogetickets import machine, methods
from dogetickets.io import read_json_or_none
from dogetickets.report.document import DEFAULT_TITLE, Document
from dogetickets.results import precision_text, precisions
from dogetickets.run.layout import RunLayout, process_history, typed_command

__all__ = ["commits", "duration", "recorded_command", "reproduce", "training", "wall_time"]

_WALL_TIME = (
    "From each run directory's timing.json. 'doge run total' is the wall time of the `doge run` processes "
    "that worked on the directory, summed (timing.json keeps one record per process, so a study resumed "
    "over several sittings counts every sitting; a process that was killed or is still running counts up "
    "to its last finished job; a directory written before those records counts only its last process, "
    "and baselines from an earlier `doge finetune` are not in it). 'outside the model': "
    "reading, tokenizing, batching and saving, within that total. Training columns: the seconds recorded "
    "by each reported run (training with its dev evaluations), summed; scoring and ticket choice are not "
    "timed apart (they are in the process total). 'trained in': the precision each reported run recorded "
    "(train.mixed_precision resolved) and why: the setting, $DOGE_AUTO_PRECISION, or the CPU feature that "
    "decided 'auto' (bf16 with avx512_bf16 or amx_bf16, else fp32); the machine's CPU features are listed below."
)


def duration(seconds: float) -> str:
    """'5400 s (1.50 h)', '200 s (3.3 min)' or '54.0 s'."""
    if seconds >= 3600:
        return f"{seconds:.0f} s ({seconds / 3600:.2f} h)"
    if seconds >= 60:
        return f"{seconds:.0f} s ({seconds / 60:.1f} min)"
    return f"{seconds:.1f} s"


def training(paths: list[str]) -> tuple[str, float]:
    """The summed training seconds recorded by these runs (as shown, and the number)."""
    if not paths:
        return "-", 0.0
    timings = [read_json_or_none(Path(p) / "timing.json") or {} for p in paths]
    secs = [t.get("seconds") for t in timings]
    known = [float(x) for x in secs if isinstance(x, (int, float))]
    if not known:
        return "not recorded", 0.0
    missing = len(paths) - len(known)
    twins = sum(bool(t.get("trained_as")) for t in timings)
    text = f"{duration(sum(known))} in {len(known)} run{'s' if len(known) != 1 else ''}" + (
        f"; {missing} without timing" if missing else ""
    ) + (f"; {twins} of them took the training of a run with the same units (trained_as)" if twins else "")
    return text, sum(known)


def _processes_note(processes: list[dict[str, Any]]) -> str:
    """' in 3 processes (1 not ended: up to its last finished job)' after a directory's summed wall time."""
    cut = sum(p.get("ended") is False for p in processes)
    note = f" in {len(processes)} processes" if len(processes) > 1 else ""
    if cut:
        note += f" ({cut} not ended: up to {'its' if cut == 1 else 'their'} last finished job)"
    return note


def commits(processes: list[dict[str, Any]]) -> list[str]:
    """The distinct git commits of a directory's `doge run` processes, oldest first (each record's, as
    `run.layout.process_history` reads them)."""
    found = [p.get("git") for p in processes] or [None]
    unknown = sum(not c for c in found)
    known = list(dict.fromkeys(str(c) for c in found if c))
    return ([f"{unknown} process{'es' if unknown > 1 else ''} not recorded"] if unknown and known else []) + known


# ----------------------------------------------------------------------------------- wall time and machine


def _timing(run_dir: Path) -> dict[str, Any]:
    timing = read_json_or_none(RunLayout(run_dir).timing)
    return timing if isinstance(timing, dict) else {}


def _totals(timing: dict[str, Any]) -> tuple[Any, Any, list[dict[str, Any]]]:
    """The directory's recorded total and outside-the-model seconds (summed over its processes when it
    records them), and those process records."""
    total, outside = timing.get("total_seconds"), timing.get("outside_model_seconds")
    processes = [p for p in process_history(timing) if isinstance(p.get("total_seconds"), (int, float))]
    if processes:
        total = sum(float(p["total_seconds"]) for p in processes)
        outside = sum(float(p.get("outside_model_seconds") or 0.0) for p in processes)
    return total, outside, processes


def _row(name: str, sub: pd.DataFrame, timing: dict[str, Any]) -> tuple[dict[str, str], bool]:
    """A directory's row of the wall-time table, and whether its runs recorded more training than its
    processes lasted."""
    total, outside, processes = _totals(timing)
    ticket = sub["method"].map(lambda m: methods.is_known(m) and methods.get(m).is_ticket)
    base_text, base_s = training(list(sub.loc[~ticket, "path"]))
    ticket_text, ticket_s = training(list(sub.loc[ticket, "path"]))
    earlier = isinstance(total, (int, float)) and base_s + ticket_s > total
    trained = [read_json_or_none(Path(x) / "metrics.json") for x in sub["path"]]
    row = {
        "run directory": name,
        "trained in": precision_text(precisions([m for m in trained if isinstance(m, dict)])),
        "doge run total": (
            duration(float(total)) + _processes_note(processes) if isinstance(total, (int, float)) else "not recorded"
        ),
        "outside the model": (
            f"{duration(float(outside))} ({float(outside) / float(total) if total else 0.0:.1%})"
            if isinstance(outside, (int, float)) and isinstance(total, (int, float))
            else ""
        ),
        "baseline training": base_text,
        "ticket training": ticket_text,
    }
    return row, earlier


def _machines(doc: Document, names: list[str], timings: dict[str, dict[str, Any]]) -> None:
    """Each distinct machine the directories recorded (and which used it), then each one's code."""
    machines: dict[str, tuple[dict, list[str]]] = {}
    unrecorded: list[str] = []
    for name, timing in timings.items():
        desc = timing.get("machine")
        if isinstance(desc, dict) and desc:
            desc = {k: v for k, v in desc.items() if k != "git"}  # the code: per process, below
            machines.setdefault(json.dumps(desc, sort_keys=True, default=str), (desc, []))[1].append(name)
        else:
            unrecorded.append(name)
    for i, (desc, used) in enumerate(machines.values(), 1):
        which = "all run directories" if len(used) == len(names) else ", ".join(used)
        doc.p(f"Machine{f' {i}' if len(machines) > 1 else ''} ({which}):")
        doc.items(machine.lines(desc))
    if unrecorded:
        doc.p(f"Machine not recorded: {', '.join(unrecorded)}.")
    code = {name: commits(_totals(timing)[2]) for name, timing in timings.items()}
    if any(code.values()):
        doc.p("The code (git commit; '+dirty': uncommitted changes to the package's source) each directory's "
              "processes ran, oldest first:")
        doc.items([f"{name}: {', '.join(c) if c else 'not recorded'}" for name, c in code.items()])


def wall_time(doc: Document, names: list[str], run_dirs: list[Path], runs: pd.DataFrame) -> None:
    """The "Wall time and machine" section: per directory its processes' total, the training its reported
    runs recorded and their precision; the machines and the code."""
    doc.h(2, "Wall time and machine")
    doc.p(_WALL_TIME)
    timings = {name: _timing(d) for name, d in zip(names, run_dirs, strict=True)}
    rows: list[dict[str, str]] = []
    earlier: list[str] = []  # more training recorded than the last process lasted
    for name, timing in timings.items():
        row, more = _row(name, runs[runs["dataset"] == name], timing)
        rows.append(row)
        if more:
            earlier.append(name)
    doc.table(pd.DataFrame(rows))
    if earlier:
        doc.p(
            f"In {', '.join(earlier)}, the recorded training seconds exceed the recorded process total: not all "
            "of those runs were trained by the recorded processes, so the total is not the directory's whole cost."
        )
    _machines(doc, names, timings)


# ------------------------------------------------------------------------------------------- reproduce


def recorded_command(run_dir: Path) -> str | None:
    """`doge run` of the original config, when the run directory's timing.json records its path
    ("config_path") or the command itself ("command": a string or an argument list)."""
    timing = read_json_or_none(RunLayout(run_dir).timing)
    if not isinstance(timing, dict):
        return None
    cmd = timing.get("command")
    if isinstance(cmd, str) and cmd.strip():
        return cmd.strip()
    if isinstance(cmd, list) and cmd and all(isinstance(x, str) for x in cmd):
        return shlex.join(typed_command(cmd))
    cfg = timing.get("config_path")
    if isinstance(cfg, str) and cfg.strip():
        return shlex.join(["doge", "run", cfg.strip(), "--out", str(run_dir)])
    return None


def reproduce(
    doc: Document, run_dirs: list[Path], out: Path | None, n_boot: int, seed: int, title: str,
    commands: list[str] | None, seeds: Iterable[int] | None = None,
) -> None:
    """The "Reproduce" section: `commands` verbatim when given, else each directory's `doge run` and this
    `doge report` (`out` as given: None when the report went into the first directory)."""
    doc.h(2, "Reproduce")
    if commands:
        doc.code(commands)
        return
    doc.p(
        "Each run directory's config.toml is the exact resolved config of its runs (data.dir as recorded there, "
        "or --data-dir / $DOGE_DATA_DIR); `doge run` skips the stages a directory has already finished with the "
        "same settings."
    )
    lines = [recorded_command(d) or shlex.join(["doge", "run", str(RunLayout(d).config), "--out", str(d)])
             for d in run_dirs]
    report = ["doge", "report", *(str(d) for d in run_dirs)]
    if out is not None:
        report += ["--out", str(out)]
    report += ["--n-boot", str(n_boot), "--seed", str(seed)]
    for k in seeds or []:
        report += ["--seeds", str(k)]
    if title != DEFAULT_TITLE:
        report += ["--title", title]
    doc.code([*lines, shlex.join(report)])

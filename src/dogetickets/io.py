"""Atomic files and stage markers: a run cut off mid-write is never mistaken for a finished one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

DONE = "DONE"
_writer = [True]  # False on the non-main processes of a multi-process (Accelerate) run
_recording: ContextVar[set[Path] | None] = ContextVar("_recording", default=None)


def set_writer(is_writer: bool) -> None:
    """Under `accelerate launch` only the main process writes; the others compute alike and read."""
    _writer[0] = is_writer


def is_writer() -> bool:
    return _writer[0]


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    if not is_writer():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _record(path)


def atomic_replace(tmp: Path, path: Path) -> None:
    """Rename a finished temporary file (a figure saved beside `path`) over `path`."""
    Path(tmp).replace(path)
    _record(Path(path))


@contextmanager
def recording_writes() -> Iterator[set[Path]]:
    """The paths that `atomic_write_text` and `atomic_replace` write within the block (a report's own files)."""
    written: set[Path] = set()
    token = _recording.set(written)
    try:
        yield written
    finally:
        _recording.reset(token)


def _record(path: Path) -> None:
    if (written := _recording.get()) is not None:
        written.add(path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_json_or_none(path: Path) -> Any:
    """The JSON in `path`, or None if it is missing or damaged (truncated, not JSON, not UTF-8)."""
    try:
        return read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def is_done(folder: Path) -> bool:
    return (Path(folder) / DONE).is_file()


def mark_done(folder: Path, settings: dict[str, Any] | None = None) -> None:
    """The completion marker, written last; it records the settings that produced the stage."""
    atomic_write_text(Path(folder) / DONE, json.dumps(settings or {}, indent=1, sort_keys=True) + "\n")


def clear_done(folder: Path) -> None:
    if not is_writer():
        return
    (Path(folder) / DONE).unlink(missing_ok=True)


def flat_keys(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as dotted keys ({"train": {"lr": 1e-4}} -> {"train.lr": 1e-4}); an empty table adds no key."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat_keys(v, f"{prefix}.{k}" if prefix else str(k)))
    return out

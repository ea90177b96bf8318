"""Download the paper's released data, verified against the packaged SHA256 table.

Files live at `<base_url>/<task>/<domain>/<file>.json`; each is streamed to a temporary file in
its destination folder and renamed into place only once its sha256 matches, so an interrupted
or corrupted download is never mistaken for a complete one. Files already present with the
right checksum are skipped, so a cut-off `fetch` can simply be run again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from importlib.resources import files
from pathlib import Path

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from dogetickets.errors import DogeError

DEFAULT_BASE_URL = "https://raw.githubusercontent.com/Ylily1015/DogeTickets/main/datasets"
TASKS = ("amazon", "mnli", "ontonote")
_TABLE = "sha256sums.txt"
_CHUNK = 1 << 16


def _read_table() -> dict[str, str]:
    text = (files("dogetickets") / "data" / _TABLE).read_text(encoding="utf-8")
    table: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DogeError(f"{_TABLE} line {lineno}: expected '<sha256>  ./<task>/<domain>/<file>'")
        digest, rel = parts
        rel = rel.strip().lstrip("*")
        rel = rel[2:] if rel.startswith("./") else rel
        table[rel] = digest.lower()
    return table


def _check_task(task: str) -> None:
    if task != "all" and task not in TASKS:
        raise DogeError(f"unknown task {task!r} (known: {', '.join((*TASKS, 'all'))})")


def checksums(task: str | None = None) -> dict[str, str]:
    """Relative path (e.g. `amazon/All_Beauty/train.json`) -> sha256 of the packaged table.

    `task` None or "all" gives every task; an unknown task raises DogeError.
    """
    table = _read_table()
    if task is None or task == "all":
        return table
    _check_task(task)
    return {rel: digest for rel, digest in table.items() if rel.split("/", 1)[0] == task}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _short(digest: str) -> str:
    return digest[:12] + ".."


def _download(
    url: str,
    rel: str,
    dest: Path,
    expected: str,
    timeout: float,
    bar: Progress,
    task_id: TaskID,
) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                bar.update(task_id, total=int(length) if length and length.isdigit() else None, completed=0)
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    bar.advance(task_id, len(chunk))
                out.flush()
                os.fsync(out.fileno())
        except urllib.error.HTTPError as e:
            raise DogeError(f"{url}: HTTP {e.code} {e.reason}".strip()) from None
        except urllib.error.URLError as e:
            raise DogeError(f"{url}: {e.reason}") from None
        except (TimeoutError, OSError) as e:
            msg = f"{rel}: {type(e).__name__}: {e} (while downloading {url})"
            raise DogeError(" ".join(msg.split())) from None
        got = h.hexdigest()
        if got != expected:
            raise DogeError(
                f"{rel}: sha256 mismatch (expected {_short(expected)}, got {_short(got)}) from {url}"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _AmountColumn(ProgressColumn):
    """`3/25 files` for the overall task, `1.2/4.5 MB` for the file being downloaded."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes = DownloadColumn()

    def render(self, task: Task) -> RenderableType:
        if task.fields.get("files"):
            return Text(f"{int(task.completed)}/{int(task.total or 0)} files", style="progress.download")
        return self._bytes.render(task)


class _SpeedColumn(TransferSpeedColumn):
    def render(self, task: Task) -> Text:
        return Text("") if task.fields.get("files") else super().render(task)


def fetch(
    task: str,
    to: Path,
    base_url: str = DEFAULT_BASE_URL,
    progress: bool = True,
    timeout: float = 60,
) -> list[Path]:
    """Download every file of `task` (`amazon`, `mnli`, `ontonote` or `all`) into `to/<task>/<domain>/<file>`.

    Returns the paths of all the task's files (downloaded or already present). Raises DogeError
    (one line naming the file or URL) on an unknown task, an HTTP/network error or a checksum mismatch.
    """
    _check_task(task)
    table = checksums(task)
    to = Path(to)
    base = base_url.rstrip("/")
    paths: list[Path] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        _AmountColumn(),
        _SpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        overall = bar.add_task(f"fetch {task}", total=len(table), files=True)
        current = bar.add_task("", total=None, visible=False, files=False)
        for rel, expected in table.items():
            dest = to / rel
            paths.append(dest)
            if not (dest.is_file() and _sha256(dest) == expected):
                bar.update(current, description=f"  {rel}", visible=True)
                _download(f"{base}/{rel}", rel, dest, expected, timeout, bar, current)
            bar.advance(overall)
        bar.update(current, visible=False)
    return paths

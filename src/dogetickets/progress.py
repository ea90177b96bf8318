"""Rich progress bars with ETA for every long loop.

One live display at a time: inside `sweep_progress` (the overall bar of `doge run`), every loop's bar
is added to the same display and removed when its loop ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
_shared: list[Progress] = []


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """`with progress_bar("train", n) as advance: advance(k, info="loss 0.3")`."""
    if not enabled:
        yield lambda n=1, info="": None
        return
    if _shared:
        prog = _shared[-1]
        task = prog.add_task(description, total=total, info="")
        try:
            yield lambda n=1, info="": prog.update(task, advance=n, info=info)
        finally:
            prog.remove_task(task)
        return
    with make_progress() as prog:
        task = prog.add_task(description, total=total, info="")
        yield lambda n=1, info="": prog.update(task, advance=n, info=info)


@contextmanager
def sweep_progress(description: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """The overall bar of a sweep; loops inside it show their bars beneath it."""
    if not enabled:
        yield lambda n=1, info="": None
        return
    with make_progress() as prog:
        task = prog.add_task(description, total=total, info="")
        _shared.append(prog)
        try:
            yield lambda n=1, info="": prog.update(task, advance=n, info=info)
        finally:
            _shared.pop()

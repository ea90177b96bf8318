"""One handle on a run: its config, its directory, its data (read and tokenized once), the device and
precision, the messages it prints and the time it spends. Every stage reads the run through it.

`open()` prepares the run directory before any stage writes: it checks that the directory holds this run
(the config's fixed sections and the label list), locks it for this process and writes the config.
"""

from __future__ import annotations

import shutil
import sys
import time
import tomllib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from dogetickets import machine
from dogetickets.config import Config
from dogetickets.data.sources import Splits, load_splits
from dogetickets.data.tasks import Encoded, Task, make_task
from dogetickets.errors import DogeError
from dogetickets.io import atomic_write_text, is_writer, read_json_or_none, set_writer, write_json
from dogetickets.models.resolve import load_saved, load_tokenizer
from dogetickets.progress import console
from dogetickets.run import settings
from dogetickets.run.layout import RunLayout, RunLock, changed_setting, process_history, typed_command
from dogetickets.run.plan import ticket_specs
from dogetickets.training import trackers
from dogetickets.training.loop import get_accelerator, resolve_precision


@dataclass
class Prepared:
    """The run's data, tokenized once."""

    splits: Splits
    task: Task
    tokenizer: Any
    train: Encoded
    dev: Encoded
    test: Encoded

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)


class ProcessClock:
    """This process's wall time on a run directory, and where it went outside the model (reading,
    tokenizing, batching, saving), recorded in timing.json after the earlier processes' records."""

    def __init__(self, layout: RunLayout, worker: bool) -> None:
        self.layout = layout
        self.parts: dict[str, float] = {}  # seconds outside the model, by kind
        self.started = time.perf_counter()
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # the machine and the code (git commit) this process started with, for its timing record
        self.machine: dict[str, Any] = {} if worker else machine.describe()
        self._earlier: list[dict[str, Any]] | None = None  # the earlier processes' records

    def add(self, kind: str, seconds: float) -> None:
        self.parts[kind] = self.parts.get(kind, 0.0) + seconds

    def outside_parts(self) -> dict[str, float]:
        """Seconds of this process outside the model, by kind."""
        from dogetickets.data.batching import COLLATE_SECONDS

        parts = {k: v for k, v in self.parts.items() if k != "save models"}
        return {**parts, "batching": COLLATE_SECONDS[0], "save models": self.parts.get("save models", 0.0)}

    def record(self, ended: bool = True) -> dict[str, Any]:
        """Write this process's wall time into timing.json, after the earlier processes' records (read once,
        before this process first writes): where it went outside the model, the command and the machine. A
        sweep rewrites it after every job (`ended` false), so a process killed mid-sweep (a session's end, a
        crash) keeps its time up to its last finished job."""
        if self._earlier is None:
            self._earlier = process_history(read_json_or_none(self.layout.timing))
        total = time.perf_counter() - self.started
        parts = self.outside_parts()
        outside = sum(parts.values())
        command = typed_command(sys.argv)
        this = {"started": self.started_at, "total_seconds": total, "outside_model_seconds": outside,
                "command": command, "ended": ended, "git": self.machine.get("git")}
        share = {"total_seconds": total, "outside_model_seconds": outside,
                 "outside_model_share": outside / total if total else 0.0, **parts,
                 "command": command, "machine": self.machine, "processes": [*self._earlier, this]}
        write_json(self.layout.timing, share)
        return share


class RunContext:
    """The run on one directory, as every stage sees it (see the module docstring).

    `worker=True`: a process that executes single jobs of a sweep whose driver holds the run directory
    (`dogetickets.distributed`): it neither locks the directory nor writes its config. `finetuned`: a model
    fine-tuned elsewhere (`doge prune --finetuned`), scored and pruned in place of seed<k>/erm."""

    def __init__(self, cfg: Config, show_progress: bool = True, worker: bool = False,
                 finetuned: Path | None = None) -> None:
        self.cfg = cfg
        self.worker = worker
        self.finetuned = Path(finetuned) if finetuned is not None else None
        self.layout = RunLayout(Path(cfg.run.out))
        acc = get_accelerator(cfg.train.mixed_precision)
        set_writer(acc.is_main_process)
        self.show_progress = show_progress and acc.is_main_process
        self.clock = ProcessClock(self.layout, worker)
        self.lock = RunLock(self.layout.lock)

    # ---- messages ------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        """Progress messages: on the main process, unless quiet."""
        if self.show_progress:
            console.print(message, soft_wrap=True)

    def warn(self, message: str) -> None:
        """What the user must know even when quiet (a stage redone, a run failed): one line on stderr."""
        if is_writer():
            print(f"note: {message}", file=sys.stderr, flush=True)

    # ---- device ----------------------------------------------------------------------------------
    def sync(self) -> None:
        """All processes agree on what is done before a stage starts (no-op on one process)."""
        get_accelerator(self.cfg.train.mixed_precision).wait_for_everyone()

    @property
    def device(self) -> torch.device:
        return get_accelerator(self.cfg.train.mixed_precision).device

    def autocast(self) -> Any:
        """The training precision's autocast, for scoring and evaluation alike (None in fp32)."""
        acc = get_accelerator(self.cfg.train.mixed_precision)
        return acc.autocast if resolve_precision(self.cfg.train.mixed_precision) != "no" else None

    # ---- data ------------------------------------------------------------------------------------
    @cached_property
    def data(self) -> Prepared:
        cfg = self.cfg
        t0 = time.perf_counter()
        splits = load_splits(cfg, labels=self._saved_labels())
        task = make_task(cfg.data.task, splits.labels)
        tok = load_tokenizer(cfg.model.name)
        check_model(cfg, self.finetuned)
        self.clock.add("read data", time.perf_counter() - t0)
        n = cfg.model.max_length
        t0 = time.perf_counter()
        prepared = Prepared(splits, task, tok, task.encode(tok, splits.train, n), task.encode(tok, splits.dev, n),
                            task.encode(tok, splits.test, n))
        self.clock.add("tokenize", time.perf_counter() - t0)
        sizes = splits.sizes()
        self.say(f"data: {cfg.data.task} task, {len(splits.labels)} labels; "
                 + "; ".join(f"{k} {sum(v.values())} ({len(v)} domains)" for k, v in sizes.items()))
        return prepared

    @property
    def labels(self) -> list[str]:
        return self.data.splits.labels

    def _saved_labels(self) -> list[str] | None:
        """The label list the run directory fixed at its first stage, if any."""
        path = self.layout.labels
        if not path.is_file():
            return None
        raw = read_json_or_none(path)
        if not isinstance(raw, dict) or not isinstance(raw.get("labels"), list) or not raw["labels"]:
            raise DogeError(f"{path}: damaged; delete it (the labels are derived again from the data and "
                            "checked against every saved model's id2label)")
        return [str(x) for x in raw["labels"]]

    @cached_property
    def finetuned_settings(self) -> dict[str, Any] | None:
        """`settings.external` of the model fine-tuned elsewhere; None when the run fine-tunes its own."""
        return settings.external(self.cfg, self.finetuned) if self.finetuned is not None else None

    # ---- models ----------------------------------------------------------------------------------
    def load(self, folder: Path) -> torch.nn.Module:
        """A model this run saved, checked against the run's label list."""
        model = load_saved(folder, self.cfg.data.task)
        n = int(model.config.num_labels)
        got = [str(model.config.id2label.get(i, model.config.id2label.get(str(i), i))) for i in range(n)]
        if got != self.labels:
            raise DogeError(f"{folder}: its labels ({', '.join(got)}) are not the run's ({', '.join(self.labels)}, "
                            f"in {self.layout.labels})")
        return model

    def save_model(self, model: torch.nn.Module, folder: Path) -> None:
        """save_pretrained (safetensors) + tokenizer, into a temporary folder renamed at the end."""
        if not is_writer():
            return
        t0 = time.perf_counter()
        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        self.data.tokenizer.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        self.clock.add("save models", time.perf_counter() - t0)

    # ---- the run directory -----------------------------------------------------------------------
    def open(self) -> None:
        """Create (or reopen) the run directory: lock it, check it holds this run, write config and labels.
        A worker only checks that it sees the directory its driver prepared. A tracker of run.log_with whose
        package is missing is refused first."""
        out = self.layout.root
        trackers.check_installed(self.cfg.run.log_with)
        if self.worker and not (self.layout.config.is_file() and self.layout.labels.is_file()):
            raise DogeError(f"{out}: not a prepared run directory (no config.toml/labels.json): a worker "
                            "needs the directory its driver prepared, on a filesystem every worker shares")
        self.data  # noqa: B018 - read and check the data before anything is written
        path = self.layout.config
        if path.is_file():
            self._check_same_run(path)
        if self.worker:
            return
        if is_writer():
            self.lock.acquire()
        if not self.layout.labels.is_file():
            write_json(self.layout.labels, {"task": self.cfg.data.task, "labels": self.labels})
        text = self.cfg.to_toml()
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)

    def _check_same_run(self, path: Path) -> None:
        """The run directory's config.toml has this config's fixed sections (settings.FIXED_SECTIONS)."""
        try:
            old = tomllib.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise DogeError(f"{path}: damaged ({str(exc).splitlines()[0]}); delete it to adopt this config "
                            "(finished stages are kept where their recorded settings still match)") from None
        new = self.cfg.to_dict()
        for section in settings.FIXED_SECTIONS:
            # a key the old config does not have (added to the tool since) counts as its default
            defaults = type(getattr(self.cfg, section)).model_construct().model_dump()
            why = changed_setting({section: settings.comparable({**defaults, **(old.get(section) or {})})},
                                  {section: settings.comparable(new.get(section))})
            if why:
                raise DogeError(f"{self.layout.root}: holds a run whose {why} differs from this config; "
                                "use another run.out (or delete the folder)")


def check_model(cfg: Config, finetuned: Path | None = None) -> None:
    """The model fits the config, checked before any stage writes: model.max_length within its position
    embeddings (else the first long example crashes) and, when the config asks for tickets, an architecture
    with a unit table (else e.g. a GPT-2 would be fine-tuned for nothing, and refused only at pruning)."""
    from transformers import AutoConfig

    from dogetickets.models.resolve import check_prunable, position_limit, resolve_model

    config = AutoConfig.from_pretrained(resolve_model(cfg.model.name))
    limit = position_limit(config)
    if limit is not None and cfg.model.max_length > limit:
        raise DogeError(f"config key 'model.max_length': {cfg.model.max_length} is more than model "
                        f"'{cfg.model.name}' can take ({limit} positions)")
    if ticket_specs(cfg):
        check_prunable(cfg.model.name, config, "tickets.methods")
    if finetuned is not None and str(finetuned) != cfg.model.name:  # (`doge prune --finetuned` makes them one)
        check_prunable(str(finetuned), AutoConfig.from_pretrained(resolve_model(str(finetuned))),
                       "tickets.methods")

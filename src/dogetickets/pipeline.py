"""The protocol as stages with artifacts in a run directory (its layout: `dogetickets.rundir`).

Every stage records the settings that produced it in its DONE marker, written last, and is reused
only under exactly those settings: a killed run resumes where it stopped, a changed setting redoes
what it feeds, and adding seeds, sparsities, lambdas or methods reuses everything finished. Data
flow: data -> units -> scores -> tickets -> training -> evaluation -> report.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dogetickets import machine
from dogetickets import methods as registry
from dogetickets.config import Config
from dogetickets.data.sources import Splits, load_splits
from dogetickets.data.tasks import Encoded, Task, make_task
from dogetickets.errors import DogeError, TrainingFailed
from dogetickets.evaluate import metrics, predict, prediction_rows
from dogetickets.io import (
    atomic_write_text,
    clear_done,
    is_done,
    is_writer,
    mark_done,
    read_json,
    read_json_or_none,
    set_writer,
    write_json,
)
from dogetickets.models.export import export_pruned, is_pruned
from dogetickets.models.resolve import load_model, load_saved, load_tokenizer
from dogetickets.models.units import Units
from dogetickets.progress import console, sweep_progress
from dogetickets.rundir import RunLayout, RunLock, changed_setting, process_history, recorded
from dogetickets.scoring import UnitScores, expressive_scores
from dogetickets.stages import Job, TicketSpec, plan, ticket_specs
from dogetickets.tickets import Shape, Ticket, random_ticket, select, ticket_name
from dogetickets.training.loop import get_accelerator, resolve_precision, train
from dogetickets.training.objectives import make_objective

SAVE_SECONDS = [0.0]  # time spent saving models in this process (for the time report)

# Sections whose change makes earlier results incomparable; the rest (tickets, seeds) may grow.
FIXED_SECTIONS = ("model", "data", "train", "irm")
RUN_FILES = ("model/model.safetensors", "metrics.json", "predictions.jsonl")  # a finished training's files
INIT_FILES = ("config.json", "model.safetensors")
TIMING_KEYS = ("seconds", "train_examples_per_s")  # kept out of metrics.json, which is deterministic


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


class Pipeline:
    """The protocol on one run directory: each stage (see dogetickets.stages) computed once under its settings.

    `worker=True`: a process that executes single jobs of a sweep whose driver holds the run directory
    (`dogetickets.distributed`): it neither locks the directory nor writes its config."""

    def __init__(self, cfg: Config, show_progress: bool = True, worker: bool = False,
                 finetuned: Path | None = None) -> None:
        self.cfg = cfg
        self.worker = worker
        # a model fine-tuned elsewhere (`doge prune --finetuned`): scored and pruned in place of seed<k>/erm
        self.finetuned = Path(finetuned) if finetuned is not None else None
        self.layout = RunLayout(Path(cfg.run.out))
        self.out = self.layout.root
        acc = get_accelerator(cfg.train.mixed_precision)
        set_writer(acc.is_main_process)
        self.show_progress = show_progress and acc.is_main_process
        self.timing: dict[str, float] = {}  # seconds outside the model, by kind (this process)
        self.started = time.perf_counter()
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._earlier: list[dict[str, Any]] | None = None  # the earlier processes' timing records
        # the machine and the code (git commit) this process started with, for its timing record
        self._machine: dict[str, Any] = {} if worker else machine.describe()
        self.failed: dict[str, str] = {}  # run -> why, for the runs of a sweep that failed
        self._lock = RunLock(self.layout.lock)
        self._scores: dict[int, UnitScores] = {}  # per seed, once computed or read
        self._shapes: dict[int, Shape] = {}
        self._erm_model: tuple[int, torch.nn.Module] | None = None  # (seed, model) for lambda choice by dev

    def _say(self, message: str) -> None:
        """Progress messages: on the main process, unless quiet."""
        if self.show_progress:
            console.print(message, soft_wrap=True)

    def _warn(self, message: str) -> None:
        """What the user must know even when quiet (a stage redone, a run failed): one line on stderr."""
        if is_writer():
            print(f"note: {message}", file=sys.stderr, flush=True)

    def _sync(self) -> None:
        """All processes agree on what is done before a stage starts (no-op on one process)."""
        get_accelerator(self.cfg.train.mixed_precision).wait_for_everyone()

    # ---- set-up ------------------------------------------------------------------------------
    def init_dir(self) -> None:
        """Create (or reopen) the run directory: lock it, check it holds this run, write config and labels.
        A worker only checks that it sees the directory its driver prepared."""
        if self.worker and not (self.layout.config.is_file() and self.layout.labels.is_file()):
            raise DogeError(f"{self.out}: not a prepared run directory (no config.toml/labels.json): a worker "
                            "needs the directory its driver prepared, on a filesystem every worker shares")
        self.data  # noqa: B018 - read and check the data before anything is written
        path = self.layout.config
        new = self.cfg.to_dict()
        if path.is_file():
            try:
                old = tomllib.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise DogeError(f"{path}: damaged ({str(exc).splitlines()[0]}); delete it to adopt this config "
                                "(finished stages are kept where their recorded settings still match)") from None
            for section in FIXED_SECTIONS:
                # a key the old config does not have (added to the tool since) counts as its default
                defaults = type(getattr(self.cfg, section)).model_construct().model_dump()
                why = changed_setting({section: _comparable({**defaults, **(old.get(section) or {})})},
                                      {section: _comparable(new.get(section))})
                if why:
                    raise DogeError(f"{self.out}: holds a run whose {why} differs from this config; "
                                    "use another run.out (or delete the folder)")
        if self.worker:
            return
        if is_writer():
            self._lock.acquire()
        if not self.layout.labels.is_file():
            write_json(self.layout.labels, {"task": self.cfg.data.task, "labels": self.labels})
        text = self.cfg.to_toml()
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)

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
    def data(self) -> Prepared:
        cfg = self.cfg
        t0 = time.perf_counter()
        splits = load_splits(cfg, labels=self._saved_labels())
        task = make_task(cfg.data.task, splits.labels)
        tok = load_tokenizer(cfg.model.name)
        _check_model(cfg, self.finetuned)
        self.timing["read data"] = time.perf_counter() - t0
        n = cfg.model.max_length
        t0 = time.perf_counter()
        prepared = Prepared(
            splits,
            task,
            tok,
            task.encode(tok, splits.train, n),
            task.encode(tok, splits.dev, n),
            task.encode(tok, splits.test, n),
        )
        self.timing["tokenize"] = time.perf_counter() - t0
        sizes = splits.sizes()
        self._say(
            f"data: {cfg.data.task} task, {len(splits.labels)} labels; "
            + "; ".join(f"{k} {sum(v.values())} ({len(v)} domains)" for k, v in sizes.items())
        )
        return prepared

    @property
    def labels(self) -> list[str]:
        return self.data.splits.labels

    def _autocast(self) -> Any:
        """The training precision's autocast, for scoring and evaluation alike (None in fp32)."""
        acc = get_accelerator(self.cfg.train.mixed_precision)
        return acc.autocast if resolve_precision(self.cfg.train.mixed_precision) != "no" else None

    @property
    def device(self) -> torch.device:
        return get_accelerator(self.cfg.train.mixed_precision).device

    # ---- the settings each artifact records (and is reused under only) ----------------------------
    def _init_settings(self, seed: int) -> dict[str, Any]:
        return {"model": self.cfg.model.name, "task": self.cfg.data.task, "labels": self.labels, "seed": seed}

    def _train_settings(self, seed: int, objective: str) -> dict[str, Any]:
        """A training: its starting point, its data, its hyper-parameters and objective."""
        cfg = self.cfg
        train = {k: v for k, v in _comparable(cfg.to_dict()["train"]).items() if k not in ("objective", "physical")}
        train["mixed_precision"] = resolve_precision(cfg.train.mixed_precision)  # what "auto" is on this machine
        out = {"init": self._init_settings(seed), "data": _comparable(cfg.to_dict()["data"]),
               "max_length": cfg.model.max_length, "train": train, "objective": objective}
        if objective == "irm":
            out["irm"] = cfg.to_dict()["irm"]
        return out

    def _scores_settings(self, seed: int) -> dict[str, Any]:
        t = self.cfg.tickets
        source = self._external_settings() if self.finetuned else self._train_settings(seed, "erm")
        out = {"finetuned": source, "normalize_heads": t.normalize_heads,
               "normalize_ffn": t.normalize_ffn, "max_score_per_domain": t.max_score_per_domain}
        if t.granularity != "block":  # (block-level settings as before the key existed: their runs stay valid)
            out["granularity"] = t.granularity
        return out

    def _ticket_settings(self, seed: int, spec: TicketSpec) -> dict[str, Any]:
        method, sparsity, lam = spec
        m = registry.get(method)
        source = self._scores_settings(seed) if m.uses_scores else self._init_settings(seed)
        out = {"method": method, "target_sparsity": sparsity, "lambda": lam, "seed": seed,
               "allocation": m.allocation_for(self.cfg.tickets.allocation), "from": source}
        if self.cfg.tickets.granularity != "block":
            out["granularity"] = self.cfg.tickets.granularity
        if m.uses_lambda and m.variance_for(self.cfg.tickets.variance) != "paper":
            out["variance"] = m.variance_for(self.cfg.tickets.variance)
        if m.uses_lambda and lam is None:  # chosen on dev among these, by the masked fine-tuned model
            out["lambda_choice"] = {"by": "preview", "lambdas": list(self.cfg.tickets.lambdas),
                                    "eval_batch_size": self.cfg.train.eval_batch_size}
        return out

    def _eval_settings(self) -> dict[str, Any]:
        """What the test numbers of metrics.json were computed on (may change on a finished run)."""
        return {"test_domains": list(self.cfg.data.test_domains), "test_split": self.cfg.data.test_split}

    def _finished(self, folder: Path, settings: dict[str, Any], files: tuple[str, ...] = (),
                  redo: bool = True) -> bool:
        """True when the stage in `folder` is done under exactly `settings` with its `files` intact.

        Otherwise (with `redo`) says why the stage is done again, and clears its DONE marker."""
        rec = recorded(folder)
        if rec is None:
            return False
        if not rec:
            why = "its DONE marker records no settings"
        elif (change := changed_setting(rec, settings)) is not None:
            why = f"a setting changed: {change}"
        elif bad := [f for f in files if not _intact(folder / f)]:
            why = f"{folder / bad[0]} is missing or damaged"
        else:
            return True
        if redo:
            self._warn(f"{folder}: redoing this stage ({why})")
            clear_done(folder)
        return False

    def _load(self, folder: Path) -> torch.nn.Module:
        """A model this run saved, checked against the run's label list."""
        model = load_saved(folder, self.cfg.data.task)
        n = int(model.config.num_labels)
        got = [str(model.config.id2label.get(i, model.config.id2label.get(str(i), i))) for i in range(n)]
        if got != self.labels:
            raise DogeError(f"{folder}: its labels ({', '.join(got)}) are not the run's ({', '.join(self.labels)}, "
                            f"in {self.layout.labels})")
        return model

    # ---- stages ------------------------------------------------------------------------------
    # ---- the stages as declared (dogetickets.stages) -------------------------------------------------
    def plan(self, seeds: list[int] | None = None) -> list[Job]:
        """Every job the config declares, each after the ones it needs."""
        return plan(self.cfg, seeds)

    def folder(self, job: Job) -> Path:
        """Where a job writes (a file for a ticket)."""
        return self.layout.root / (job.name + (".json" if job.stage == "ticket" else ""))

    def _settings(self, job: Job) -> dict[str, Any] | None:
        """The settings a job's output is keyed by (a rewind's: None until its ticket is chosen)."""
        if job.stage == "init":
            return self._init_settings(job.seed)
        if job.stage == "baseline":
            return self._train_settings(job.seed, job.arg)
        if job.stage == "scores":
            return self._scores_settings(job.seed)
        if job.stage == "ticket":
            return self._ticket_settings(job.seed, job.arg)
        try:
            ticket = Ticket.load(self.folder(Job("ticket", job.seed, job.arg)))
        except DogeError:
            return None
        return self._rewind_settings(job.seed, ticket)

    def finished(self, job: Job) -> bool:
        """Whether the job's output is there under exactly its settings (no side effect: nothing is redone)."""
        settings, folder = self._settings(job), self.folder(job)
        if settings is None:
            return False
        if job.stage == "ticket":
            try:
                return changed_setting(Ticket.load(folder).extra.get("settings") or {}, settings) is None
            except DogeError:
                return False
        files = {"init": INIT_FILES, "scores": ("scores.json",), "baseline": RUN_FILES,
                 "rewind": ("ticket.json", *self._run_files())}[job.stage]
        if not self._finished(folder, settings, files, redo=False):
            return False
        if job.is_run:
            return (read_json_or_none(folder / "metrics.json") or {}).get("eval") == self._eval_settings()
        return True

    def execute(self, job: Job) -> Path:
        """Compute one job (its needs must be finished; they are checked, not computed, by a worker)."""
        if self.worker:
            missing = [n for n in job.needs if not self.finished(self._job(n))]
            if missing:
                raise DogeError(f"{job.name} needs {missing[0]}, which is not finished: run it first")
        if job.stage == "init":
            return self.rewind_point(job.seed)
        if job.stage == "baseline":
            return self.baseline(job.seed, job.arg)
        if job.stage == "scores":
            self.scores(job.seed)
            return self.folder(job)
        if job.stage == "ticket":
            return self.ticket(job.seed, job.arg)
        return self.rewind(job.seed, self.folder(Job("ticket", job.seed, job.arg)))

    def _job(self, name: str) -> Job:
        from dogetickets.stages import find

        job = find(self.plan(), name)
        if job is None:
            examples = ", ".join(t.name for t in self.plan()[:4])
            raise DogeError(f"{name!r}: no such job in this config (jobs are run-directory paths, e.g. {examples})")
        return job

    def _stage(self, folder: Path, settings: dict[str, Any], files: tuple[str, ...], build: Any,
               evaluated: bool = False) -> Path:
        """The bookkeeping every stage shares: all processes in step, reuse when finished under `settings`
        (a run's test numbers on the current test domains too), else `build()` (which writes DONE last)."""
        self._sync()
        if self._finished(folder, settings, files) and (not evaluated or self._evaluated(folder, settings)):
            return folder
        build()
        return folder

    def _run_files(self) -> tuple[str, ...]:
        return RUN_FILES if self.cfg.run.save_models else RUN_FILES[1:]

    def rewind_point(self, seed: int) -> Path:
        """Pretrained weights + the task head initialised from `seed`, saved before any training."""
        folder, settings = self.layout.init(seed), self._init_settings(seed)

        def build() -> None:
            model = load_model(self.cfg.model.name, self.cfg.data.task, self.labels, seed)
            _save_model(model, self.data.tokenizer, folder)
            mark_done(folder, settings)

        return self._stage(folder, settings, INIT_FILES, build)

    def baseline(self, seed: int, objective: str) -> Path:
        """Fine-tune from the rewind point with an objective (erm, irm), then evaluate."""
        folder, settings = self.layout.baseline(seed, objective), self._train_settings(seed, objective)

        def build() -> None:
            model = self._load(self.rewind_point(seed))
            info = {"name": objective, "method": objective, "objective": objective, "seed": seed,
                    "target_sparsity": 0.0, "sparsity": 0.0, "lambda": None}
            self._train_and_evaluate(model, folder, info, seed, objective, None, True, settings)

        return self._stage(folder, settings, RUN_FILES, build, evaluated=True)

    def scores(self, seed: int) -> UnitScores:
        """Per-domain expressive scores of the fine-tuned (ERM) model on the training domains."""
        self._sync()
        if seed in self._scores:
            return self._scores[seed]
        folder = self.layout.scores_dir(seed)
        settings = self._scores_settings(seed)
        if self._finished(folder, settings, ("scores.json",)):
            try:
                scores = UnitScores.from_json(read_json(self.layout.scores(seed)))
                if ((scores.has_sampling_var or not self._needs_sampling_var())
                        and (scores.has_neurons or self.cfg.tickets.granularity == "block")):
                    self._scores[seed] = scores
                    return scores
                self._warn(f"{self.layout.scores(seed)}: lacks the sampling variances or neuron scores this "
                           "config needs; scoring again")
            except (KeyError, TypeError, ValueError):
                self._warn(f"{self.layout.scores(seed)}: damaged; scoring again")
        if self.finetuned is None:
            erm = self.layout.baseline(seed, "erm")
            if not self._finished(erm, self._train_settings(seed, "erm"), RUN_FILES, redo=False):
                raise DogeError(f"{erm}: no fine-tuned model yet (run `doge finetune` first)")
        clear_done(folder)
        scores = self._score_model(self._load(self._finetuned_folder(seed)), seed)
        write_json(self.layout.scores(seed), scores.to_json(self.cfg.tickets.lambdas))
        mark_done(folder, settings)
        self._scores[seed] = scores
        return scores

    def _needs_sampling_var(self) -> bool:
        t = self.cfg.tickets
        return any(registry.get(m).variance_for(t.variance) == "corrected" for m in t.methods)

    def _score_model(self, model: torch.nn.Module, seed: int) -> UnitScores:
        model.to(self.device)
        data = self.data.train
        cap = self.cfg.tickets.max_score_per_domain
        if cap > 0:
            rng = np.random.default_rng(seed)
            keep = np.concatenate([
                rng.permutation(np.nonzero(data.domain == d)[0])[:cap] for d in range(len(data.domain_names))
            ])
            data = data.subset(np.sort(keep))
        raw = expressive_scores(
            model, Units(model), self.data.task, data, self.cfg.tickets.score_batch_size,
            self.data.pad_id, self.device, self.show_progress, autocast=self._autocast(),
            granularity=self.cfg.tickets.granularity,
        )
        t = self.cfg.tickets
        return UnitScores.from_domain_scores(raw, t.normalize_heads, t.normalize_ffn)

    def shape(self, seed: int) -> Shape:
        """The model's units and parameter counts (read once per seed)."""
        if seed not in self._shapes:
            self._shapes[seed] = Shape.of(Units(self._load(self.rewind_point(seed))))
        return self._shapes[seed]

    def ticket(self, seed: int, spec: TicketSpec) -> Path:
        """The ticket of one method x sparsity (x lambda), saved as JSON with the settings that chose it."""
        method, sparsity, lam = spec
        path = self.layout.ticket(seed, ticket_name(method, sparsity, lam))
        settings = self._ticket_settings(seed, spec)
        if path.is_file():
            try:
                change = changed_setting(Ticket.load(path).extra.get("settings") or {}, settings)
                if change is None:
                    return path
                why = f"a setting changed: {change}"
            except DogeError:
                why = "the file is damaged"
            self._warn(f"{path}: choosing this ticket again ({why})")
        ticket = self.choose_ticket(seed, spec)
        ticket.extra["settings"] = settings
        ticket.save(path)
        return path

    def choose_ticket(self, seed: int, spec: TicketSpec) -> Ticket:
        """The ticket of one method x sparsity (x lambda) from this seed's scores (none for random), as the
        method registry says (dogetickets.methods). A method that takes a lambda, given none, has it chosen
        on dev: the candidate whose ticket, removed from the fine-tuned model, scores best (ties: lowest)."""
        method, sparsity, lam = spec
        m = registry.get(method)
        shape, allocation = self.shape(seed), m.allocation_for(self.cfg.tickets.allocation)
        g = self.cfg.tickets.granularity
        if m.ranking == "random":
            return random_ticket(shape, sparsity, seed, allocation=allocation, granularity=g, method=method)
        if m.uses_lambda and lam is None:
            return self._lambda_by_preview(seed, spec)
        scores = self.scores(seed)
        if m.ranking == "pooled":
            head, ffn = scores.winning(g)
        elif m.ranking == "worst":
            head, ffn = scores.worst(g)
        else:
            head, ffn = scores.doge(lam or 0.0, m.variance_for(self.cfg.tickets.variance), granularity=g)
        return select(head, ffn, shape, sparsity, method, lam=lam, seed=seed, allocation=allocation, granularity=g)

    def _lambda_by_preview(self, seed: int, spec: TicketSpec) -> Ticket:
        method, sparsity, _ = spec
        model = self._finetuned(seed)
        dev: dict[float, float] = {}
        best: Ticket | None = None
        for lam in sorted(self.cfg.tickets.lambdas):
            ticket = self.choose_ticket(seed, (method, sparsity, lam))
            dev[lam] = self.masked_scores(model, ticket, ("dev",))[0]["score"]
            if best is None or dev[lam] > dev[best.lam]:  # type: ignore[index]
                best = ticket
        assert best is not None
        best.extra["lambda_choice"] = {"by": "dev score of the fine-tuned model with the ticket removed",
                                       "dev_score": {f"{k:g}": v for k, v in dev.items()}, "chosen": best.lam}
        return best

    def _finetuned(self, seed: int) -> torch.nn.Module:
        """This seed's fine-tuned ERM model on the device (loaded once)."""
        if self._erm_model is None or self._erm_model[0] != seed:
            if self.finetuned is None and not self.worker:  # (a worker's job needs are finished already)
                self.baseline(seed, "erm")
            self._erm_model = (seed, self._load(self._finetuned_folder(seed)).to(self.device))
        return self._erm_model[1]

    def _finetuned_folder(self, seed: int) -> Path:
        return self.finetuned or self.layout.baseline(seed, "erm") / "model"

    def _external_settings(self) -> dict[str, Any]:
        """What identifies a model fine-tuned elsewhere: its folder and the sha256 of its weights."""
        import hashlib

        assert self.finetuned is not None
        weights = sorted(self.finetuned.glob("*.safetensors")) or sorted(self.finetuned.glob("*.bin"))
        if not weights:
            raise DogeError(f"{self.finetuned}: no model weights (*.safetensors or *.bin) there")
        digest = hashlib.sha256()
        for w in weights:
            with open(w, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
        return {"external": str(self.finetuned.resolve()), "sha256": digest.hexdigest(),
                "data": _comparable(self.cfg.to_dict()["data"]), "max_length": self.cfg.model.max_length}

    def masked_scores(self, model: torch.nn.Module, ticket: Ticket,
                      splits: tuple[str, ...] = ("dev", "test")) -> list[dict[str, Any]]:
        """Metrics of `model` with the ticket's units removed (a pruned copy; `model` is untouched), on
        each of `splits`, evaluated as training evaluates dev."""
        pruned = export_pruned(copy.deepcopy(model), ticket) if ticket.pruned_params else model
        out = []
        for split in splits:
            data = getattr(self.data, split)
            preds = predict(pruned, self.data.task, data, self.cfg.train.eval_batch_size, self.data.pad_id,
                            self.device, autocast=self._autocast())
            out.append(metrics(self.data.task, data, preds))
        return out

    def rewind(self, seed: int, ticket_path: Path) -> Path:
        """Reset to the rewind point, hold the ticket's pruned units at zero, train again, evaluate."""
        ticket = Ticket.load(ticket_path)
        folder = self.layout.rewind(seed, ticket_path.stem)
        settings = self._rewind_settings(seed, ticket)
        return self._stage(folder, settings, ("ticket.json", *self._run_files()),
                           lambda: self._train_ticket(seed, ticket, ticket_path, folder, settings), evaluated=True)

    def _rewind_settings(self, seed: int, ticket: Ticket) -> dict[str, Any]:
        return {"ticket": ticket.extra.get("settings"),
                "trained": self._train_settings(seed, self.cfg.train.objective), "physical": self.cfg.train.physical}

    def _train_ticket(self, seed: int, ticket: Ticket, ticket_path: Path, folder: Path,
                      settings: dict[str, Any]) -> None:
        objective, physical = self.cfg.train.objective, self.cfg.train.physical
        clear_done(folder)
        ticket.save(folder / "ticket.json")
        info = {"name": ticket_path.stem, "method": ticket.method, "objective": objective,
                "seed": seed, "target_sparsity": ticket.target_sparsity, "sparsity": ticket.sparsity,
                "lambda": ticket.lam, "physical": physical}
        if "lambda_choice" in ticket.extra:
            info["lambda_chosen_on_dev"] = True
        twin = self._trained_twin(ticket, folder, settings)
        if twin is not None:
            self._copy_training(twin, folder, info, settings)
            return
        model = self._load(self.rewind_point(seed))
        # The physically pruned model computes what the gated one computes on the kept weights (pruned
        # units get zero gradient there), only smaller; gated training stays for comparison.
        masks = None if physical else ticket.masks()
        if physical:
            export_pruned(model, ticket, where=str(ticket_path))
        self._train_and_evaluate(model, folder, info, seed, objective, masks, self.cfg.run.save_models, settings)

    def _trained_twin(self, ticket: Ticket, folder: Path, settings: dict[str, Any]) -> Path | None:
        """A finished rewind of this seed that pruned the same units under the same training settings (and
        evaluated on the same data): its training is this ticket's, to the last bit. None if there is none."""
        def canon(x: Any) -> str:
            return json.dumps(x, sort_keys=True, default=str)

        same = canon({k: settings[k] for k in ("trained", "physical")})
        units = canon(ticket.units())
        for other in sorted(p for p in folder.parent.iterdir() if p.is_dir() and p != folder):
            rec = recorded(other)
            if not rec or canon({k: rec.get(k) for k in ("trained", "physical")}) != same:
                continue
            if not all(_intact(other / f) for f in ("ticket.json", *self._run_files())):
                continue
            metrics_json = read_json_or_none(other / "metrics.json")
            if not isinstance(metrics_json, dict) or metrics_json.get("eval") != self._eval_settings():
                continue
            if canon(Ticket.load(other / "ticket.json").units()) == units:
                return other
        return None

    def _copy_training(self, twin: Path, folder: Path, info: dict[str, Any], settings: dict[str, Any]) -> None:
        """This rewind's results from its twin's training (same seed, units and settings), not trained again:
        its model, log and predictions as they are, its metrics under this run's name with `trained_as`."""
        self._say(f"[bold]{info['name']}[/bold]: prunes the units {twin.name} pruned: its training is reused")
        if is_writer():
            for name in ("log.jsonl", "predictions.jsonl"):
                shutil.copyfile(twin / name, folder / name)
            if self.cfg.run.save_models:
                shutil.rmtree(folder / "model", ignore_errors=True)
                shutil.copytree(twin / "model", folder / "model")
            metrics_json = read_json(twin / "metrics.json")
            metrics_json["run"] = {**info, "trained_as": twin.name}
            write_json(folder / "metrics.json", metrics_json)
            write_json(folder / "timing.json", {"seconds": 0.0, "trained_as": twin.name})
        mark_done(folder, settings)

    def _evaluated(self, folder: Path, settings: dict[str, Any]) -> bool:
        """A finished run's test numbers are on the config's test domains; if not, its saved model is
        evaluated on them now. False when there is no saved model to do so (the run must be redone)."""
        metrics_json = read_json_or_none(folder / "metrics.json")
        if isinstance(metrics_json, dict) and metrics_json.get("eval") == self._eval_settings():
            return True
        if not (folder / "model" / "model.safetensors").is_file():
            self._warn(f"{folder}: no saved model to evaluate on the current test domains: training it again")
            clear_done(folder)
            return False
        self._reevaluate(folder, settings)
        return True

    def _reevaluate(self, folder: Path, settings: dict[str, Any]) -> None:
        old = read_json_or_none(folder / "metrics.json")
        if not isinstance(old, dict) or not isinstance(old.get("run"), dict):
            raise DogeError(f"{folder / 'metrics.json'}: damaged; delete {folder} to train this run again")
        model = self._load(folder / "model")
        gated = (folder / "ticket.json").is_file() and not is_pruned(model)  # a full-size model trained gated
        masks = Ticket.load(folder / "ticket.json").masks() if gated else None
        clear_done(folder)
        self._evaluate(model, folder, old["run"], masks, old.get("train", {}))
        mark_done(folder, settings)

    def _train_and_evaluate(
        self,
        model: torch.nn.Module,
        folder: Path,
        info: dict[str, Any],
        seed: int,
        objective: str,
        masks: tuple[torch.Tensor, torch.Tensor] | None,
        keep_model: bool,
        settings: dict[str, Any],
    ) -> None:
        clear_done(folder)
        if is_writer():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "log.jsonl").unlink(missing_ok=True)
        d = self.data
        self._say(f"[bold]seed {seed}: {info['name']}[/bold] ({objective}, sparsity {info['sparsity']:.1%})")
        result = train(
            model, d.task, d.train, d.dev, self.cfg.train, make_objective(objective, self.cfg.irm), seed,
            d.pad_id, ticket_masks=masks, log_path=folder / "log.jsonl" if is_writer() else None,
            show_progress=self.show_progress,
            description=f"seed{seed}/{info['name']}",
        )
        if keep_model:
            _save_model(model, d.tokenizer, folder / "model")
        train_info = result.to_dict()
        write_json(folder / "timing.json", {k: train_info.pop(k) for k in TIMING_KEYS})
        self._evaluate(model, folder, info, masks, train_info, dev_predictions=result.best_dev_predictions)
        mark_done(folder, settings)

    def _evaluate(
        self,
        model: torch.nn.Module,
        folder: Path,
        info: dict[str, Any],
        masks: tuple[torch.Tensor, torch.Tensor] | None,
        train_info: dict[str, Any],
        dev_predictions: list | None = None,
    ) -> dict[str, Any]:
        """Dev and test predictions and metrics of a trained model -> predictions.jsonl, metrics.json."""
        d = self.data
        model.to(self.device)
        out: dict[str, Any] = {"run": info, "metric": d.task.metric, "eval": self._eval_settings()}
        rows: list[dict[str, Any]] = []
        gates = (Units(model).gated(*(m.to(self.device) for m in masks)) if masks is not None
                 else contextlib.nullcontext())
        with gates:
            for split, data in (("dev", d.dev), ("test", d.test)):
                if split == "dev" and dev_predictions is not None:
                    preds = dev_predictions  # the kept checkpoint was chosen on exactly these
                else:
                    preds = predict(model, d.task, data, self.cfg.train.eval_batch_size, d.pad_id,
                                    self.device, self.show_progress, f"evaluate {split}", autocast=self._autocast())
                m = metrics(d.task, data, preds)
                out[split] = m if split == "test" else {"score": m["score"], "per_domain": m["per_domain"]}
                rows += prediction_rows(d.task, data, preds, split)
        out["train"] = {k: v for k, v in train_info.items() if k not in TIMING_KEYS}
        if d.test.truncated_words or d.dev.truncated_words:
            out["truncated_words"] = {"dev": d.dev.truncated_words, "test": d.test.truncated_words}
        atomic_write_text(folder / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        write_json(folder / "metrics.json", out)
        return out

    def _ticket_specs(self) -> list[TicketSpec]:
        return ticket_specs(self.cfg)

    def _runs(self) -> list[tuple[int, Path]]:
        """(seed, folder) of every run the config declares: baselines, then one rewind per ticket."""
        return [(job.seed, self.folder(job)) for job in self.plan() if job.is_run]

    # ---- commands ----------------------------------------------------------------------------
    def _execute_stages(self, *stages: str) -> list[Path]:
        """Every declared job of these stages, in order (what `doge finetune`, `score`, `prune` and
        `rewind` do; `doge run` does them all)."""
        self.init_dir()
        return [self.execute(job) for job in self.plan() if job.stage in stages]

    def finetune(self) -> None:
        self._execute_stages("init", "baseline")

    def score(self) -> None:
        self._execute_stages("scores")

    def prune(self) -> list[Path]:
        return self._execute_stages("ticket")

    def rewind_all(self) -> None:
        self.init_dir()
        jobs = [job for job in self.plan() if job.stage == "rewind"]
        missing = [self.folder(Job("ticket", j.seed, j.arg)) for j in jobs
                   if not self.folder(Job("ticket", j.seed, j.arg)).is_file()]
        if missing:
            raise DogeError(f"{missing[0]}: ticket not found (run `doge prune` first)")
        self._execute_stages("rewind")

    def evaluate_all(self) -> None:
        """Re-evaluate every finished run of the config on its current dev and test data."""
        self.init_dir()
        runs = [(job, self.folder(job)) for job in self.plan() if job.is_run and is_done(self.folder(job))]
        # a run that keeps its model (a baseline; a rewind with run.save_models) and lost it: its numbers
        # would be for a model that is not there, so nothing is evaluated
        lost = [folder / "model" / "model.safetensors" for job, folder in runs
                if (job.stage == "baseline" or self.cfg.run.save_models)
                and not (folder / "model" / "model.safetensors").is_file()]
        if lost:
            more = f" (and {len(lost) - 1} more finished runs' models)" if len(lost) > 1 else ""
            raise DogeError(f"{lost[0]}: missing{more}, so its finished run cannot be evaluated: nothing was "
                            "evaluated; `doge run` trains it again")
        without_model = []
        for _, folder in runs:
            if (folder / "model" / "model.safetensors").is_file():
                self._reevaluate(folder, recorded(folder) or {})
            elif (read_json_or_none(folder / "metrics.json") or {}).get("eval") != self._eval_settings():
                without_model.append(folder)
        if without_model:
            raise DogeError(f"{len(without_model)} finished runs have no saved model (run.save_models = false) to "
                            f"evaluate on the current test domains, e.g. {without_model[0]}: `doge run` trains them "
                            "again")

    def run(self) -> dict[str, Any]:
        """The whole protocol: ERM (and IRM), scores, tickets, rewinding, evaluation, the table.

        One fine-tuning and one scoring pass per seed serve every ticket of that seed. A training that
        fails (TrainingFailed) is reported in `self.failed` and the sweep goes on without it."""
        self.init_dir()
        jobs = self.plan()
        total = sum(t.is_run for t in jobs)
        broken: dict[str, str] = {}  # job name -> the failed run it comes from
        with sweep_progress(f"sweep ({total} runs)", total, self.show_progress) as advance:
            for job in jobs:
                cause = next((broken[n] for n in job.needs if n in broken), None)
                if cause is not None:
                    broken[job.name] = cause
                    if job.is_run:
                        self.failed[job.run_name] = f"it needs {cause}, which failed"
                else:
                    try:
                        self.execute(job)
                    except TrainingFailed as exc:
                        broken[job.name] = job.run_name
                        self.failed[job.run_name] = str(exc)
                        self._warn(f"{job.run_name} failed: {exc}")
                if job.is_run:
                    advance(1, info=job.run_name)
                self.record_time(ended=False)  # a process killed later keeps its time up to here
        results = self.results() if len(self.failed) < total else {}
        self.report_time()
        return results

    def run_one(self, name: str) -> Path:
        """Exactly one job (`doge run --only`), in a directory `doge jobs` (or a run) prepared; its needs
        must be finished. Does not lock the directory, so several may run at once (e.g. a SLURM array)."""
        self.init_dir()
        return self.execute(self._job(name))

    def pending(self) -> list[Job]:
        """The declared jobs not finished under their current settings, in dependency order."""
        self.init_dir()
        return [job for job in self.plan() if not self.finished(job)]

    def failure(self) -> DogeError | None:
        """One error naming every failed run of the last `run()`, or None."""
        if not self.failed:
            return None
        first, why = next(iter(self.failed.items()))
        return DogeError(f"{len(self.failed)} run(s) failed: {', '.join(self.failed)} (first: {first}: {why}); "
                         "a rerun retries only these")

    def _outside_parts(self) -> dict[str, float]:
        """Seconds of this process outside the model, by kind."""
        from dogetickets.data.batching import COLLATE_SECONDS

        return {**self.timing, "batching": COLLATE_SECONDS[0], "save models": SAVE_SECONDS[0]}

    def record_time(self, ended: bool = True) -> dict[str, Any]:
        """Write this process's wall time into timing.json, after the earlier processes' records (read once,
        before this process first writes): where it went outside the model (tokenizing, batching, reading,
        saving), the command and the machine. A sweep rewrites it after every job (`ended` false), so a
        process killed mid-sweep (a session's end, a crash) keeps its time up to its last finished job."""
        if self._earlier is None:
            self._earlier = process_history(read_json_or_none(self.layout.timing))
        total = time.perf_counter() - self.started
        parts = self._outside_parts()
        outside = sum(parts.values())
        command = ["doge", *sys.argv[1:]] if Path(sys.argv[0]).name == "doge" else list(sys.argv)
        this = {"started": self.started_at, "total_seconds": total, "outside_model_seconds": outside,
                "command": command, "ended": ended, "git": self._machine.get("git")}
        share = {"total_seconds": total, "outside_model_seconds": outside,
                 "outside_model_share": outside / total if total else 0.0, **parts,
                 "command": command, "machine": self._machine, "processes": [*self._earlier, this]}
        write_json(self.layout.timing, share)
        return share

    def report_time(self) -> dict[str, Any]:
        """Record this process's wall time as ended (`record_time`) and say where it went."""
        share = self.record_time(ended=True)
        parts = self._outside_parts()
        self._say(f"time: {share['total_seconds']:.0f}s, outside the model {share['outside_model_seconds']:.1f}s "
                  f"({share['outside_model_share']:.1%}: " + ", ".join(f"{k} {v:.1f}s" for k, v in parts.items())
                  + ")")
        return share

    def analyze(self, seed: int, finetuned: Path | None = None) -> tuple[list[Path], dict[str, int]]:
        """Fig. 4 (scores across domains) and Fig. 1/6 (pilot study) of a fine-tuned model: the given
        one, or this run's ERM model of `seed` (fine-tuned first if need be)."""
        from dogetickets.analysis import activation_frequencies
        from dogetickets.report.figures import plot_pilot, plot_scores

        self.init_dir()
        if finetuned is not None:
            model = load_saved(finetuned, self.cfg.data.task)
            if model.config.num_labels != len(self.labels):
                raise DogeError(f"{finetuned}: a head with {model.config.num_labels} labels, the data has "
                                f"{len(self.labels)}")
            scores = self._score_model(model, seed)
        else:
            self.rewind_point(seed)
            self.baseline(seed, "erm")
            scores = self.scores(seed)
            model = self._load(self.layout.baseline(seed, "erm") / "model")
        folder = self.out  # beside the run's report, which then shows the pilot study too
        scores_png, classes = plot_scores(scores.to_json(self.cfg.tickets.lambdas), folder)
        counts = activation_frequencies(model.to(self.device), self.data.train, self.cfg.train.eval_batch_size,
                                        self.data.pad_id, device=self.device, show_progress=self.show_progress)
        pilot_png = plot_pilot(counts, folder)
        return [scores_png, pilot_png], classes

    def results(self) -> dict[str, Any]:
        """The table of the config's finished runs, all evaluated on its current test domains."""
        from dogetickets.results import collect_results, write_results

        folders = []
        for _, folder in self._runs():
            m = read_json_or_none(folder / "metrics.json")
            if is_done(folder) and isinstance(m, dict) and m.get("eval") == self._eval_settings():
                folders.append(folder)
        results = collect_results(self.out, folders, notes=self._notes(), machine=self._machine or machine.describe())
        write_results(self.out, results)
        return results

    def _notes(self) -> list[str]:
        """The config's notes, then what the data set-up changes for particular domains."""
        d = self.cfg.data
        notes = list(d.notes)
        for dom in d.train_domains:
            parts = []
            if dom in d.train_split_overrides:
                parts.append(f"trains on its '{d.train_split_overrides[dom]}' split")
            if dom in d.dev_from_train:
                parts.append(f"its dev set is a seeded {d.dev_from_train[dom]:.0%} carved from that training data")
            if parts:
                notes.append(f"{dom}: " + "; ".join(parts))
        return notes


# What may change between invocations on one run directory: where the data lives, the test domains
# (training never sees them; finished runs are evaluated on new ones), and how often the loss is read.
FREE_KEYS = ("dir", "test_domains", "test_split", "notes", "log_every")


def _comparable(section: dict[str, Any] | None) -> dict[str, Any] | None:
    if section is None:
        return None
    return {k: v for k, v in section.items() if k not in FREE_KEYS}


def _intact(path: Path) -> bool:
    """The file exists and, if JSON, parses."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    return path.suffix != ".json" or read_json_or_none(path) is not None


def _check_model(cfg: Config, finetuned: Path | None = None) -> None:
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


def _save_model(model: torch.nn.Module, tokenizer: Any, folder: Path) -> None:
    """save_pretrained (safetensors) + tokenizer, into a temporary folder renamed at the end."""
    if not is_writer():
        return
    t0 = time.perf_counter()
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    SAVE_SECONDS[0] += time.perf_counter() - t0

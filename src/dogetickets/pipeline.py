"""The protocol as stages with artifacts in a run directory; completed stages are skipped.

    <out>/config.toml                         the resolved config
    <out>/seed<k>/init/                       the rewind point: pretrained weights + seeded task head
    <out>/seed<k>/erm/, irm/                  baselines: model/, metrics.json, predictions.jsonl, DONE
    <out>/seed<k>/scores/scores.json          per-domain expressive scores and the combined scores
    <out>/seed<k>/tickets/<name>.json         one ticket per method x sparsity (x lambda)
    <out>/seed<k>/rewind/<name>/              ticket.json, model/, metrics.json, predictions.jsonl, DONE
    <out>/results.json, results.md            the table

Every stage folder gets its DONE marker last, and files are written atomically, so a killed run
resumes where it stopped and never takes a half-written stage for a finished one. Data flow:
data -> units -> scores -> tickets -> training -> evaluation -> report.
"""

from __future__ import annotations

import json
import shutil
import time
import tomllib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dogetickets.config import Config
from dogetickets.data.sources import Splits, load_splits
from dogetickets.data.tasks import Encoded, Task, make_task
from dogetickets.errors import DogeError
from dogetickets.evaluate import metrics, predict, prediction_rows
from dogetickets.io import (
    atomic_write_text,
    clear_done,
    is_done,
    is_writer,
    mark_done,
    read_json,
    set_writer,
    write_json,
)
from dogetickets.models.resolve import load_model, load_saved, load_tokenizer
from dogetickets.models.units import Units
from dogetickets.progress import console, sweep_progress
from dogetickets.scoring import UnitScores, expressive_scores
from dogetickets.tickets import Shape, Ticket, random_ticket, select, ticket_name
from dogetickets.training.loop import get_accelerator, train
from dogetickets.training.objectives import make_objective

SAVE_SECONDS = [0.0]  # time spent saving models in this process (for the time report)

# Sections whose change makes earlier results incomparable; the rest (tickets, seeds) may grow.
FIXED_SECTIONS = ("model", "data", "train", "irm")


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
    def __init__(self, cfg: Config, show_progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(cfg.run.out)
        acc = get_accelerator(cfg.train.mixed_precision)
        set_writer(acc.is_main_process)
        self.show_progress = show_progress and acc.is_main_process
        self.timing: dict[str, float] = {}  # seconds outside the model, by kind (this process)
        self.started = time.perf_counter()

    def _say(self, message: str) -> None:
        """Progress messages: on the main process, unless quiet."""
        if self.show_progress:
            console.print(message, soft_wrap=True)

    def _sync(self) -> None:
        """All processes agree on what is done before a stage starts (no-op on one process)."""
        get_accelerator(self.cfg.train.mixed_precision).wait_for_everyone()

    # ---- set-up ------------------------------------------------------------------------------
    def init_dir(self) -> None:
        """Create the run directory with its config; refuse a directory holding another run."""
        self.data  # noqa: B018 - read and check the data before anything is written
        path = self.out / "config.toml"
        new = self.cfg.to_dict()
        if path.is_file():
            old = tomllib.loads(path.read_text(encoding="utf-8"))
            for section in FIXED_SECTIONS:
                if _comparable(old.get(section)) != _comparable(new.get(section)):
                    raise DogeError(
                        f"{self.out}: holds a run whose [{section}] differs from this config; "
                        "use another run.out (or delete the folder)"
                    )
        if is_writer():
            self.out.mkdir(parents=True, exist_ok=True)
        text = self.cfg.to_toml()
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)

    @cached_property
    def data(self) -> Prepared:
        cfg = self.cfg
        t0 = time.perf_counter()
        splits = load_splits(cfg)
        task = make_task(cfg.data.task, splits.labels)
        tok = load_tokenizer(cfg.model.name)
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
    def device(self) -> torch.device:
        return get_accelerator(self.cfg.train.mixed_precision).device

    def seed_dir(self, seed: int) -> Path:
        return self.out / f"seed{seed}"

    # ---- stages ------------------------------------------------------------------------------
    def rewind_point(self, seed: int) -> Path:
        """Pretrained weights + the task head initialised from `seed`, saved before any training."""
        self._sync()
        folder = self.seed_dir(seed) / "init"
        if not is_done(folder):
            model = load_model(self.cfg.model.name, self.cfg.data.task, self.data.splits.labels, seed)
            _save_model(model, self.data.tokenizer, folder)
            mark_done(folder)
        return folder

    def baseline(self, seed: int, objective: str) -> Path:
        """Fine-tune from the rewind point with an objective (erm, irm), then evaluate."""
        self._sync()
        folder = self.seed_dir(seed) / objective
        if is_done(folder):
            return folder
        init = self.rewind_point(seed)
        model = load_saved(init, self.cfg.data.task)
        info = {"name": objective, "method": objective, "objective": objective, "seed": seed,
                "target_sparsity": 0.0, "sparsity": 0.0, "lambda": None}
        self._train_and_evaluate(model, folder, info, seed, objective, None, keep_model=True)
        return folder

    def scores(self, seed: int) -> UnitScores:
        """Per-domain expressive scores of the fine-tuned (ERM) model on the training domains."""
        self._sync()
        folder = self.seed_dir(seed) / "scores"
        path = folder / "scores.json"
        if is_done(folder):
            return UnitScores.from_json(read_json(path))
        erm = self.seed_dir(seed) / "erm"
        if not is_done(erm):
            raise DogeError(f"{erm}: no fine-tuned model yet (run `doge finetune` first)")
        scores = self._score_model(load_saved(erm / "model", self.cfg.data.task), seed)
        write_json(path, scores.to_json(self.cfg.tickets.lambdas))
        mark_done(folder)
        return scores

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
            self.data.pad_id, self.device, self.show_progress,
        )
        t = self.cfg.tickets
        return UnitScores.from_domain_scores(raw, t.normalize_heads, t.normalize_ffn)

    def shape(self, seed: int) -> Shape:
        model = load_saved(self.rewind_point(seed), self.cfg.data.task)
        return Shape.of(Units(model))

    def tickets(self, seed: int) -> list[Path]:
        """One ticket per method x sparsity (x lambda for doge), saved as JSON."""
        t = self.cfg.tickets
        self._sync()
        folder = self.seed_dir(seed) / "tickets"
        wanted = self._ticket_specs()
        paths = [folder / f"{ticket_name(m, s, lam)}.json" for m, s, lam in wanted]
        if all(p.is_file() for p in paths):
            return paths
        scores = self.scores(seed) if any(m != "random" for m, _, _ in wanted) else None
        shape = self.shape(seed)
        for (method, sparsity, lam), path in zip(wanted, paths, strict=True):
            if path.is_file():
                continue
            if method == "random":
                ticket = random_ticket(shape, sparsity, seed)
            elif method == "winning":
                assert scores is not None
                ticket = select(*scores.winning(), shape, sparsity, "winning", seed=seed)
            else:
                assert scores is not None and lam is not None
                ticket = select(*scores.doge(lam), shape, sparsity, "doge", lam=lam, seed=seed)
            ticket.extra["normalize_heads"] = t.normalize_heads
            ticket.extra["normalize_ffn"] = t.normalize_ffn
            ticket.save(path)
        return paths

    def rewind(self, seed: int, ticket_path: Path) -> Path:
        """Reset to the rewind point, hold the ticket's pruned units at zero, train again, evaluate."""
        self._sync()
        ticket = Ticket.load(ticket_path)
        folder = self.seed_dir(seed) / "rewind" / ticket_path.stem
        if is_done(folder):
            return folder
        model = load_saved(self.rewind_point(seed), self.cfg.data.task)
        ticket.save(folder / "ticket.json")
        info = {"name": ticket_path.stem, "method": ticket.method, "objective": self.cfg.train.objective,
                "seed": seed, "target_sparsity": ticket.target_sparsity, "sparsity": ticket.sparsity,
                "lambda": ticket.lam}
        self._train_and_evaluate(
            model, folder, info, seed, self.cfg.train.objective, ticket.masks(), self.cfg.run.save_models
        )
        return folder

    def _train_and_evaluate(
        self,
        model: torch.nn.Module,
        folder: Path,
        info: dict[str, Any],
        seed: int,
        objective: str,
        masks: tuple[torch.Tensor, torch.Tensor] | None,
        keep_model: bool,
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
            description=f"{info['name']} s{seed}",
        )
        if keep_model:
            _save_model(model, d.tokenizer, folder / "model")
        self._evaluate(model, folder, info, masks, result.to_dict(), dev_predictions=result.best_dev_predictions)

    def _evaluate(
        self,
        model: torch.nn.Module,
        folder: Path,
        info: dict[str, Any],
        masks: tuple[torch.Tensor, torch.Tensor] | None,
        train_info: dict[str, Any],
        dev_predictions: list | None = None,
    ) -> dict[str, Any]:
        d = self.data
        model.to(self.device)
        units = Units(model)
        head, ffn = masks if masks is not None else (torch.ones(units.num_layers, units.num_heads),
                                                      torch.ones(units.num_layers))
        out: dict[str, Any] = {"run": info, "metric": d.task.metric}
        rows: list[dict[str, Any]] = []
        with units.gated(head.to(self.device), ffn.to(self.device)):
            for split, data in (("dev", d.dev), ("test", d.test)):
                if split == "dev" and dev_predictions is not None:
                    preds = dev_predictions  # the kept checkpoint was chosen on exactly these
                else:
                    preds = predict(model, d.task, data, self.cfg.train.eval_batch_size, d.pad_id,
                                    self.device, self.show_progress, f"evaluate {split}")
                m = metrics(d.task, data, preds)
                out[split] = m if split == "test" else {"score": m["score"], "per_domain": m["per_domain"]}
                rows += prediction_rows(d.task, data, preds, split)
        out["train"] = train_info
        if d.test.truncated_words or d.dev.truncated_words:
            out["truncated_words"] = {"dev": d.dev.truncated_words, "test": d.test.truncated_words}
        atomic_write_text(folder / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        write_json(folder / "metrics.json", out)
        mark_done(folder)
        return out

    def _ticket_specs(self) -> list[tuple[str, float, float | None]]:
        t = self.cfg.tickets
        specs: list[tuple[str, float, float | None]] = []
        for s in t.sparsities:
            for m in t.methods:
                if m == "doge":
                    specs += [("doge", s, lam) for lam in t.lambdas]
                else:
                    specs.append((m, s, None))
        return specs

    # ---- commands ----------------------------------------------------------------------------
    def finetune(self) -> None:
        self.init_dir()
        for seed in self.cfg.run.seeds:
            self.rewind_point(seed)
            self.baseline(seed, "erm")
            for b in self.cfg.run.baselines:
                if b != "erm":
                    self.baseline(seed, b)

    def score(self) -> None:
        self.init_dir()
        for seed in self.cfg.run.seeds:
            self.scores(seed)

    def prune(self) -> list[Path]:
        self.init_dir()
        return [p for seed in self.cfg.run.seeds for p in self.tickets(seed)]

    def rewind_all(self) -> None:
        self.init_dir()
        for seed in self.cfg.run.seeds:
            folder = self.seed_dir(seed) / "tickets"
            wanted = [folder / f"{ticket_name(m, s, lam)}.json" for m, s, lam in self._ticket_specs()]
            missing = [p for p in wanted if not p.is_file()]
            if missing:
                raise DogeError(f"{missing[0]}: ticket not found (run `doge prune` first)")
            for path in wanted:
                self.rewind(seed, path)

    def evaluate_all(self) -> None:
        """Re-evaluate every saved model of the run on the config's current dev and test data."""
        self.init_dir()
        for folder in sorted(self.out.glob("seed*/*/")) + sorted(self.out.glob("seed*/rewind/*/")):
            if not (folder / "model" / "config.json").is_file() or not (folder / "metrics.json").is_file():
                continue
            old = read_json(folder / "metrics.json")
            masks = Ticket.load(folder / "ticket.json").masks() if (folder / "ticket.json").is_file() else None
            model = load_saved(folder / "model", self.cfg.data.task)
            self._evaluate(model, folder, old["run"], masks, old.get("train", {}))

    def run(self) -> dict[str, Any]:
        """The whole protocol: ERM (and IRM), scores, tickets, rewinding, evaluation, the table.

        One fine-tuning and one scoring pass per seed serve every ticket of that seed."""
        self.init_dir()
        cfg = self.cfg
        baselines = ["erm", *(b for b in cfg.run.baselines if b != "erm")]
        with_tickets = bool(cfg.tickets.sparsities and cfg.tickets.methods)
        specs = self._ticket_specs() if with_tickets else []
        total = len(cfg.run.seeds) * (len(baselines) + len(specs))
        with sweep_progress(f"sweep ({total} runs)", total, self.show_progress) as advance:
            for seed in cfg.run.seeds:
                self.rewind_point(seed)
                for b in baselines:
                    self.baseline(seed, b)
                    advance(1, info=f"seed {seed} {b}")
                if with_tickets:
                    for path in self.tickets(seed):
                        self.rewind(seed, path)
                        advance(1, info=f"seed {seed} {path.stem}")
        results = self.results()
        self.report_time()
        return results

    def report_time(self) -> dict[str, float]:
        """Where this process's wall time went outside the model (tokenizing, batching, reading, saving)."""
        from dogetickets.data.batching import COLLATE_SECONDS

        total = time.perf_counter() - self.started
        parts = {**self.timing, "batching": COLLATE_SECONDS[0], "save models": SAVE_SECONDS[0]}
        outside = sum(parts.values())
        share = {"total_seconds": total, "outside_model_seconds": outside,
                 "outside_model_share": outside / total if total else 0.0, **parts}
        self._say(f"time: {total:.0f}s, outside the model {outside:.1f}s ({share['outside_model_share']:.1%}: "
                      + ", ".join(f"{k} {v:.1f}s" for k, v in parts.items()) + ")")
        write_json(self.out / "timing.json", share)
        return share

    def analyze(self, seed: int, finetuned: Path | None = None) -> tuple[list[Path], dict[str, int]]:
        """Fig. 4 (scores across domains) and Fig. 1/6 (pilot study) of a fine-tuned model: the given
        one, or this run's ERM model of `seed` (fine-tuned first if need be)."""
        from dogetickets.analysis import activation_frequencies
        from dogetickets.report.figures import plot_pilot, plot_scores

        self.init_dir()
        if finetuned is not None:
            model = load_saved(finetuned, self.cfg.data.task)
            if model.config.num_labels != len(self.data.splits.labels):
                raise DogeError(f"{finetuned}: a head with {model.config.num_labels} labels, the data has "
                                f"{len(self.data.splits.labels)}")
            scores = self._score_model(model, seed)
        else:
            self.rewind_point(seed)
            self.baseline(seed, "erm")
            scores = self.scores(seed)
            model = load_saved(self.seed_dir(seed) / "erm" / "model", self.cfg.data.task)
        folder = self.out  # beside the run's report, which then shows the pilot study too
        scores_png, classes = plot_scores(scores.to_json(self.cfg.tickets.lambdas), folder)
        counts = activation_frequencies(model.to(self.device), self.data.train, self.cfg.train.eval_batch_size,
                                        self.data.pad_id, device=self.device, show_progress=self.show_progress)
        pilot_png = plot_pilot(counts, folder)
        return [scores_png, pilot_png], classes

    def results(self) -> dict[str, Any]:
        from dogetickets.results import collect_results, write_results

        results = collect_results(self.out, notes=self._notes())
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


# What may change between invocations on one run directory: where the data lives, and the test
# domains (training never sees them; `doge evaluate` re-evaluates the saved models on new ones).
FREE_KEYS = ("dir", "test_domains", "test_split", "notes")


def _comparable(section: dict[str, Any] | None) -> dict[str, Any] | None:
    if section is None:
        return None
    return {k: v for k, v in section.items() if k not in FREE_KEYS}


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

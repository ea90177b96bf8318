"""What each stage computes, which settings key its output and when it counts as finished: one small class
per stage of `dogetickets.run.plan`, behind one interface.

    stage.folder(job)          where the job writes (a ticket: its file)
    stage.settings(job)        what its output is keyed by (`dogetickets.run.settings`)
    stage.unfinished(job)      why it is not finished (None: it is), without side effects
    stage.build(job, settings) computes it, writing its DONE marker (a ticket: its settings) last
    stage.reuse_or_build(job)  the output, reused when finished, else built (saying why it is redone)

`Stages` holds one instance of each for a run (`Stages.of(job)` looks a job's up by its kind) and what the
stages share within a process: the scores, the model shape and the fine-tuned model of a seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from dogetickets import methods as registry
from dogetickets import tickets
from dogetickets.errors import DogeError
from dogetickets.io import clear_done, mark_done, read_json, write_json
from dogetickets.models.export import export_pruned
from dogetickets.models.resolve import load_model
from dogetickets.models.units import Units
from dogetickets.run import runs, settings
from dogetickets.run.context import RunContext
from dogetickets.run.layout import NOT_STARTED, canonical, changed_setting, intact, recorded, unfinished
from dogetickets.run.plan import Job
from dogetickets.scoring import UnitScores, expressive_scores
from dogetickets.tickets import Shape, Ticket, TicketSpec

INIT_FILES = ("config.json", "model.safetensors")
OTHER_TEST_DATA = "its test numbers are on other test data"  # a run's one defect that needs no retraining


class Stage:
    """One stage (see the module docstring). A subclass sets `kind` (a stage of `plan.STAGES`) and defines
    `folder`, `settings` and `build`; `files` and `unfinished` when it has more to check."""

    kind: ClassVar[str]
    redo_note: ClassVar[str] = "redoing this stage"
    kinds: ClassVar[dict[str, type[Stage]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            Stage.kinds[cls.kind] = cls

    def __init__(self, ctx: RunContext, stages: Stages) -> None:
        self.ctx = ctx
        self.stages = stages

    def folder(self, job: Job) -> Path:
        raise NotImplementedError

    def settings(self, job: Job) -> dict[str, Any] | None:
        raise NotImplementedError

    def files(self, job: Job) -> tuple[str, ...]:
        return ()

    def build(self, job: Job, record: dict[str, Any] | None) -> None:
        raise NotImplementedError

    def unfinished(self, job: Job) -> str | None:
        """Why the job's output is not there under exactly its settings (None: it is). No side effects."""
        s = self.settings(job)
        return NOT_STARTED if s is None else unfinished(self.folder(job), s, self.files(job))

    def finished(self, job: Job) -> bool:
        return self.unfinished(job) is None

    def reuse_or_build(self, job: Job) -> Path:
        """The job's output: reused when finished under its settings, else built (after saying why a
        finished-looking output is redone)."""
        self.ctx.sync()
        folder = self.folder(job)
        why = self.unfinished(job)
        if why is None or (why != NOT_STARTED and self.repair(job, why)):
            return folder
        if why != NOT_STARTED:
            self.discard(job, why)
        self.build(job, self.settings(job))
        return folder

    def ensure(self, seed: int, arg: Any = None) -> Path:
        """The output of this stage for `seed` (and `arg`), reused or built."""
        return self.reuse_or_build(Job(self.kind, seed, arg))

    def repair(self, job: Job, why: str) -> bool:
        """Make a nearly finished output finished in place; False when it must be built again."""
        return False

    def discard(self, job: Job, why: str) -> None:
        self.ctx.warn(f"{self.folder(job)}: {self.redo_note} ({why})")
        clear_done(self.folder(job))


class InitStage(Stage):
    """The rewind point: pretrained weights + the task head initialised from the seed, saved before training."""

    kind = "init"

    def __init__(self, ctx: RunContext, stages: Stages) -> None:
        super().__init__(ctx, stages)
        self._shapes: dict[int, Shape] = {}

    def folder(self, job: Job) -> Path:
        return self.ctx.layout.init(job.seed)

    def settings(self, job: Job) -> dict[str, Any]:
        return settings.init(self.ctx.cfg, job.seed, self.ctx.labels)

    def files(self, job: Job) -> tuple[str, ...]:
        return INIT_FILES

    def build(self, job: Job, record: dict[str, Any] | None) -> None:
        ctx = self.ctx
        model = load_model(ctx.cfg.model.name, ctx.cfg.data.task, ctx.labels, job.seed)
        ctx.save_model(model, self.folder(job))
        mark_done(self.folder(job), record)

    def shape(self, seed: int) -> Shape:
        """The model's units and parameter counts (read once per seed)."""
        if seed not in self._shapes:
            self._shapes[seed] = Shape.of(Units(self.ctx.load(self.ensure(seed))))
        return self._shapes[seed]


class RunStage(Stage):
    """A stage that trains and evaluates a model (a row of the table): finished only when its test numbers
    are on the config's test data; one evaluated on other test data is evaluated again from its saved model,
    or trained again without one."""

    def unfinished(self, job: Job) -> str | None:
        why = super().unfinished(job)
        if why is None and runs.evaluated_on(self.folder(job)) != settings.evaluation(self.ctx.cfg):
            return OTHER_TEST_DATA
        return why

    def repair(self, job: Job, why: str) -> bool:
        folder = self.folder(job)
        if why != OTHER_TEST_DATA or not (folder / "model" / "model.safetensors").is_file():
            return False
        runs.reevaluate(self.ctx, folder)
        mark_done(folder, self.settings(job))
        return True

    def discard(self, job: Job, why: str) -> None:
        if why != OTHER_TEST_DATA:
            super().discard(job, why)
            return
        self.ctx.warn(f"{self.folder(job)}: no saved model to evaluate on the current test domains: training it "
                      "again")
        clear_done(self.folder(job))


class IrmGridStage(RunStage):
    """IRM trained with one penalty weight of the grid (irm.penalty_weights) on irm.choice_seed, evaluated:
    IRM's penalty weight is the grid's best on in-domain dev (`Stages.irm_penalty`)."""

    kind = "irm_grid"

    def folder(self, job: Job) -> Path:
        return self.ctx.layout.irm_grid(job.seed, job.arg)

    def settings(self, job: Job) -> dict[str, Any]:
        return settings.training(self.ctx.cfg, job.seed, "irm", self.ctx.labels, penalty_weight=job.arg)

    def files(self, job: Job) -> tuple[str, ...]:
        return runs.RUN_FILES

    def build(self, job: Job, record: dict[str, Any] | None) -> None:
        seed, w, folder = job.seed, job.arg, self.folder(job)
        model = self.ctx.load(self.stages.init.ensure(seed))
        info = {"name": f"irm-w{w:g}", "method": "irm", "objective": "irm", "seed": seed, "target_sparsity": 0.0,
                "sparsity": 0.0, "lambda": None, "penalty_weight": w}
        runs.train_and_evaluate(self.ctx, model, folder, info, seed, "irm", None, True, penalty_weight=w)
        mark_done(folder, record)


class BaselineStage(RunStage):
    """Fine-tuning from the rewind point with an objective (erm, irm), then evaluation. IRM with a grid of
    penalty weights trains with the grid's choice; on the seed the grid ran on, it takes that training."""

    kind = "baseline"

    def folder(self, job: Job) -> Path:
        return self.ctx.layout.baseline(job.seed, job.arg)

    def settings(self, job: Job) -> dict[str, Any] | None:
        """None while IRM's penalty weight is still to be chosen (its grid not finished)."""
        weight = None
        if job.arg == "irm" and self.ctx.cfg.irm.penalty_weights:
            choice = self.stages.irm_penalty()
            if choice is None:
                return None
            weight = choice["chosen"]
        return settings.training(self.ctx.cfg, job.seed, job.arg, self.ctx.labels, penalty_weight=weight)

    def files(self, job: Job) -> tuple[str, ...]:
        return runs.RUN_FILES

    def build(self, job: Job, record: dict[str, Any] | None) -> None:
        seed, objective, folder = job.seed, job.arg, self.folder(job)
        info = {"name": objective, "method": objective, "objective": objective, "seed": seed,
                "target_sparsity": 0.0, "sparsity": 0.0, "lambda": None}
        weight = None
        if objective == "irm" and self.ctx.cfg.irm.penalty_weights:
            choice = self.stages.irm_penalty()
            if choice is None:
                raise DogeError(f"{folder}: IRM's penalty weight is chosen on the grid of seed "
                                f"{self.ctx.cfg.irm.choice_seed}, which is not finished: run it first")
            weight = choice["chosen"]
            info |= {"penalty_weight": weight, "penalty_choice": choice}
            grid = self.ctx.layout.irm_grid(seed, weight)
            if seed == self.ctx.cfg.irm.choice_seed:  # that training is this one, to the last bit
                clear_done(folder)
                self.ctx.say(f"[bold]seed {seed}: irm[/bold]: the grid's training with penalty weight {weight:g}")
                runs.copy_training(self.ctx, grid, folder, info, keep_model=True)
                mark_done(folder, record)
                return
        model = self.ctx.load(self.stages.init.ensure(seed))
        runs.train_and_evaluate(self.ctx, model, folder, info, seed, objective, None, True, penalty_weight=weight)
        mark_done(folder, record)


class ScoresStage(Stage):
    """Per-domain expressive scores of the fine-tuned model (this seed's ERM, or one fine-tuned elsewhere)
    on the training domains."""

    kind = "scores"

    def __init__(self, ctx: RunContext, stages: Stages) -> None:
        super().__init__(ctx, stages)
        self._scores: dict[int, UnitScores] = {}  # per seed, once computed or read

    def folder(self, job: Job) -> Path:
        return self.ctx.layout.scores_dir(job.seed)

    def settings(self, job: Job) -> dict[str, Any]:
        return settings.scores(self.ctx.cfg, job.seed, self.ctx.labels, self.ctx.finetuned_settings)

    def files(self, job: Job) -> tuple[str, ...]:
        return ("scores.json",)

    def unfinished(self, job: Job) -> str | None:
        why = super().unfinished(job)
        if why is not None:
            return why
        try:
            scores = UnitScores.from_json(read_json(self.ctx.layout.scores(job.seed)))
        except (KeyError, TypeError, ValueError):
            return "scores.json is damaged"
        if not ((scores.has_sampling_var or not settings.needs_sampling_var(self.ctx.cfg))
                and (scores.has_neurons or self.ctx.cfg.tickets.granularity == "block")):
            return "its scores lack the sampling variances or neuron scores this config needs"
        return None

    def of(self, seed: int) -> UnitScores:
        """This seed's scores (computed, or read once)."""
        if seed not in self._scores:
            self.reuse_or_build(Job(self.kind, seed))
        if seed not in self._scores:
            self._scores[seed] = UnitScores.from_json(read_json(self.ctx.layout.scores(seed)))
        return self._scores[seed]

    def build(self, job: Job, record: dict[str, Any] | None) -> None:
        ctx, seed = self.ctx, job.seed
        if ctx.finetuned is None:
            erm = Job("baseline", seed, "erm")
            if self.stages.baseline.unfinished(erm) not in (None, OTHER_TEST_DATA):
                raise DogeError(f"{self.stages.baseline.folder(erm)}: no fine-tuned model yet (run `doge finetune` "
                                "first)")
        clear_done(self.folder(job))
        scores = self.score(ctx.load(self.stages.finetuned_folder(seed)), seed)
        write_json(ctx.layout.scores(seed), scores.to_json(ctx.cfg.tickets.lambdas))
        mark_done(self.folder(job), record)
        self._scores[seed] = scores

    def score(self, model: torch.nn.Module, seed: int) -> UnitScores:
        """The expressive scores of `model` on the training data (at most tickets.max_score_per_domain
        examples per domain, drawn from `seed`)."""
        ctx, t = self.ctx, self.ctx.cfg.tickets
        model.to(ctx.device)
        data = ctx.data.train
        if t.max_score_per_domain > 0:
            rng = np.random.default_rng(seed)
            keep = np.concatenate([rng.permutation(np.nonzero(data.domain == d)[0])[:t.max_score_per_domain]
                                   for d in range(len(data.domain_names))])
            data = data.subset(np.sort(keep))
        raw = expressive_scores(model, Units(model), ctx.data.task, data, t.score_batch_size, ctx.data.pad_id,
                                ctx.device, ctx.show_progress, autocast=ctx.autocast(), granularity=t.granularity)
        return UnitScores.from_domain_scores(raw, t.normalize_heads, t.normalize_ffn)


class TicketStage(Stage):
    """One ticket (method x sparsity (x lambda)) from the seed's scores (random: from the seed alone), saved
    as JSON with the settings that chose it. A method that takes a lambda, given none, has it chosen on dev:
    the candidate whose ticket, removed from the fine-tuned model, scores best (ties: the lowest)."""

    kind = "ticket"
    redo_note = "choosing this ticket again"

    def folder(self, job: Job) -> Path:
        return self.ctx.layout.ticket(job.seed, job.spec.name)

    def settings(self, job: Job) -> dict[str, Any]:
        return settings.ticket(self.ctx.cfg, job.seed, job.spec, self.ctx.labels, self.ctx.finetuned_settings)

    def unfinished(self, job: Job) -> str | None:
        path = self.folder(job)
        if not path.is_file():
            return NOT_STARTED
        try:
            change = changed_setting(Ticket.load(path).extra.get("settings") or {}, self.settings(job))
        except DogeError:
            return "the file is damaged"
        return None if change is None else f"a setting changed: {change}"

    def discard(self, job: Job, why: str) -> None:
        self.ctx.warn(f"{self.folder(job)}: {self.redo_note} ({why})")  # (the file is replaced)

    def build(self, job: Job, record: dict[str, Any] | None) -> None:
        ticket = self.choose(job.seed, job.spec)
        ticket.extra["settings"] = record
        ticket.save(self.folder(job))

    def choose(self, seed: int, spec: TicketSpec) -> Ticket:
        """The ticket of `spec` for this seed, as the method registry ranks it (`tickets.choose`)."""
        method, sparsity, lam = spec
        m, t = registry.get(method), self.ctx.cfg.tickets
        shape = self.stages.init.shape(seed)
        if m.uses_lambda and lam is None:
            return self._lambda_by_dev(seed, spec)
        scores = self.stages.scores.of(seed) if m.uses_scores else None
        return tickets.choose(method, sparsity, shape, scores, lam, seed=seed, allocation=t.allocation,
                              variance=t.variance, granularity=t.granularity)

    def _lambda_by_dev(self, seed: int, spec: TicketSpec) -> Ticket:
        model = self.stages.finetuned_model(seed)
        lams = sorted(self.ctx.cfg.tickets.lambdas)
        candidates = [self.choose(seed, TicketSpec(spec.method, spec.sparsity, lam)) for lam in lams]
        scores = runs.masked_scores_many(self.ctx, model, candidates, ("dev",))
        dev: dict[float, float] = {lam: s[0]["score"] for lam, s in zip(lams, scores, strict=True)}
        best: Ticket | None = None
        for lam, ticket in zip(lams, candidates, strict=True):
            if best is None or dev[lam] > dev[best.lam]:  # type: ignore[index]
                best = ticket
        assert best is not None
        best.extra["lambda_choice"] = {"by": "dev score of the fine-tuned model with the ticket removed",
                                       "dev_score": {f"{k:g}": v for k, v in dev.items()}, "chosen": best.lam}
        return best


class RewindStage(RunStage):
    """A ticket rewound: reset to the rewind point, the ticket's units removed (or held at zero: gated),
    trained again, evaluated. A ticket that prunes the units another finished rewind of the seed pruned,
    under the same training settings, takes that training (its "twin") instead of repeating it."""

    kind = "rewind"

    def folder(self, job: Job) -> Path:
        return self.ctx.layout.rewind(job.seed, job.spec.name)

    def ticket_path(self, job: Job) -> Path:
        return self.ctx.layout.ticket(job.seed, job.spec.name)

    def settings(self, job: Job) -> dict[str, Any] | None:
        """None until its ticket is chosen."""
        try:
            ticket = Ticket.load(self.ticket_path(job))
        except DogeError:
            return None
        return settings.rewind(self.ctx.cfg, job.seed, ticket.extra.get("settings"), self.ctx.labels)

    def files(self, job: Job) -> tuple[str, ...]:
        return ("ticket.json", *runs.run_files(self.ctx.cfg.run.save_models))

    def build(self, job: Job, record: dict[str, Any] | None) -> None:
        ctx, seed, folder = self.ctx, job.seed, self.folder(job)
        ticket_path = self.ticket_path(job)
        ticket = Ticket.load(ticket_path)
        objective, physical = ctx.cfg.train.objective, ctx.cfg.train.physical
        clear_done(folder)
        ticket.save(folder / "ticket.json")
        info = {"name": ticket_path.stem, "method": ticket.method, "objective": objective,
                "seed": seed, "target_sparsity": ticket.target_sparsity, "sparsity": ticket.sparsity,
                "lambda": ticket.lam, "physical": physical}
        if "lambda_choice" in ticket.extra:
            info["lambda_chosen_on_dev"] = True
        twin = self.twin(job, ticket, record or {})
        if twin is not None:
            ctx.say(f"[bold]{info['name']}[/bold]: prunes the units {twin.name} pruned: its training is reused")
            runs.copy_training(ctx, twin, folder, info, ctx.cfg.run.save_models)
        else:
            model = ctx.load(self.stages.init.ensure(seed))
            # The physically pruned model computes what the gated one computes on the kept weights (pruned
            # units get zero gradient there), only smaller; gated training stays for comparison.
            masks = None if physical else ticket.masks()
            if physical:
                export_pruned(model, ticket, where=str(ticket_path))
            runs.train_and_evaluate(ctx, model, folder, info, seed, objective, masks, ctx.cfg.run.save_models)
        mark_done(folder, record)

    def twin(self, job: Job, ticket: Ticket, record: dict[str, Any]) -> Path | None:
        """A finished rewind of this seed that pruned the same units under the same training settings (and
        evaluated on the same data): its training is this ticket's, to the last bit. None if there is none."""
        folder = self.folder(job)
        same = canonical({k: record.get(k) for k in ("trained", "physical")})
        units = canonical(ticket.units())
        for other in self.ctx.layout.run_folders(job.seed):
            if other.parent != folder.parent or other == folder:
                continue
            rec = recorded(other)
            if not rec or canonical({k: rec.get(k) for k in ("trained", "physical")}) != same:
                continue
            if not all(intact(other / f) for f in self.files(job)):
                continue
            if runs.evaluated_on(other) != settings.evaluation(self.ctx.cfg):
                continue
            if canonical(Ticket.load(other / "ticket.json").units()) == units:
                return other
        return None


class Stages:
    """One instance of every stage class for a run, and what they share within a process."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.by_kind = {kind: cls(ctx, self) for kind, cls in Stage.kinds.items()}
        self.init: InitStage = self.by_kind["init"]  # type: ignore[assignment]
        self.baseline: BaselineStage = self.by_kind["baseline"]  # type: ignore[assignment]
        self.scores: ScoresStage = self.by_kind["scores"]  # type: ignore[assignment]
        self.ticket: TicketStage = self.by_kind["ticket"]  # type: ignore[assignment]
        self._finetuned: tuple[int, torch.nn.Module] | None = None  # (seed, model) for lambda choice by dev

    def of(self, job: Job) -> Stage:
        """The stage that computes `job`."""
        return self.by_kind[job.stage]

    def irm_penalty(self) -> dict[str, Any] | None:
        """IRM's penalty weight chosen on the grid (irm.penalty_weights): the best in-domain dev score of
        irm.choice_seed's grid runs, ties to the smallest weight; with the seed and every weight's dev score.
        None while a grid run is not finished."""
        irm, stage = self.ctx.cfg.irm, self.by_kind["irm_grid"]
        dev: dict[float, float] = {}
        for w in sorted(irm.penalty_weights):
            job = Job("irm_grid", irm.choice_seed, w)
            if not stage.finished(job):
                return None
            dev[w] = float(read_json(stage.folder(job) / "metrics.json")["dev"]["score"])
        best = max(dev, key=lambda w: (dev[w], -w))
        return {"by": "in-domain dev score", "seed": irm.choice_seed,
                "dev_score": {f"{w:g}": s for w, s in dev.items()}, "chosen": best}

    def finetuned_folder(self, seed: int) -> Path:
        """The fine-tuned model that is scored: this seed's ERM, or the one fine-tuned elsewhere."""
        return self.ctx.finetuned or self.ctx.layout.baseline(seed, "erm") / "model"

    def finetuned_model(self, seed: int) -> torch.nn.Module:
        """This seed's fine-tuned model on the device (fine-tuned first if need be; loaded once)."""
        if self._finetuned is None or self._finetuned[0] != seed:
            if self.ctx.finetuned is None and not self.ctx.worker:  # (a worker's job needs are finished already)
                self.baseline.reuse_or_build(Job("baseline", seed, "erm"))
            self._finetuned = (seed, self.ctx.load(self.finetuned_folder(seed)).to(self.ctx.device))
        return self._finetuned[1]

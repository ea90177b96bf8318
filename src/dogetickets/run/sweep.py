"""The sweep: the loop that `doge run` (and its stage commands), `doge jobs` and the Ray sweep drive.

    sweep = Sweep(cfg)
    sweep.run()      # open the run directory, then every declared job in order (plan), then the table

Each job is computed by its stage (`dogetickets.run.stages`): reused when finished under its settings,
else built. A training that fails (TrainingFailed) is reported in `sweep.failed` and the jobs that need it
are skipped; the others go on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dogetickets import machine
from dogetickets.config import Config
from dogetickets.errors import DogeError, TrainingFailed
from dogetickets.io import is_done, mark_done
from dogetickets.progress import sweep_progress
from dogetickets.run import runs, settings
from dogetickets.run.context import RunContext
from dogetickets.run.layout import RunLayout, recorded
from dogetickets.run.plan import Job, find, plan
from dogetickets.run.stages import Stages


class Sweep:
    """The protocol on one run directory (see the module docstring). `worker=True`: a process that executes
    single jobs of a sweep whose driver holds the run directory (`dogetickets.distributed`). `finetuned`: a
    model fine-tuned elsewhere, scored and pruned in place of seed<k>/erm (`doge prune --finetuned`)."""

    def __init__(self, cfg: Config, show_progress: bool = True, worker: bool = False,
                 finetuned: Path | None = None) -> None:
        self.ctx = RunContext(cfg, show_progress, worker, finetuned)
        self.stages = Stages(self.ctx)
        self.failed: dict[str, str] = {}  # run -> why, for the runs of a sweep that failed

    @property
    def cfg(self) -> Config:
        return self.ctx.cfg

    @property
    def layout(self) -> RunLayout:
        return self.ctx.layout

    @property
    def out(self) -> Path:
        return self.ctx.layout.root

    def open(self) -> None:
        """Prepare the run directory (RunContext.open)."""
        self.ctx.open()

    # ---- jobs ------------------------------------------------------------------------------------
    def plan(self, seeds: list[int] | None = None) -> list[Job]:
        """Every job the config declares, each after the ones it needs."""
        return plan(self.cfg, seeds)

    def job(self, name: str) -> Job:
        """The declared job called `name` (its path in the run directory)."""
        job = find(self.plan(), name)
        if job is None:
            examples = ", ".join(t.name for t in self.plan()[:4])
            raise DogeError(f"{name!r}: no such job in this config (jobs are run-directory paths, e.g. {examples})")
        return job

    def folder(self, job: Job) -> Path:
        """Where a job writes (a file for a ticket)."""
        return self.stages.of(job).folder(job)

    def finished(self, job: Job) -> bool:
        """Whether the job's output is there under exactly its settings (no side effect: nothing is redone)."""
        return self.stages.of(job).finished(job)

    def execute(self, job: Job) -> Path:
        """Compute one job (its needs must be finished; they are checked, not computed, by a worker)."""
        if self.ctx.worker:
            missing = [n for n in job.needs if not self.finished(self.job(n))]
            if missing:
                raise DogeError(f"{job.name} needs {missing[0]}, which is not finished: run it first")
        return self.stages.of(job).reuse_or_build(job)

    # ---- the loop --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """The whole protocol: ERM (and IRM), scores, tickets, rewinding, evaluation, the table.

        One fine-tuning and one scoring pass per seed serve every ticket of that seed."""
        self.open()
        jobs = self.plan()
        total = sum(t.is_run for t in jobs)
        broken: dict[str, str] = {}  # job name -> the failed run it comes from
        with sweep_progress(f"sweep ({total} runs)", total, self.ctx.show_progress) as advance:
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
                        self.ctx.warn(f"{job.run_name} failed: {exc}")
                if job.is_run:
                    advance(1, info=job.run_name)
                self.ctx.clock.record(ended=False)  # a process killed later keeps its time up to here
        results = self.results() if len(self.failed) < total else {}
        self.report_time()
        return results

    def run_one(self, name: str) -> Path:
        """Exactly one job (`doge run --only`), in a directory `doge jobs` (or a run) prepared; its needs
        must be finished. Does not lock the directory, so several may run at once (e.g. a SLURM array)."""
        self.open()
        return self.execute(self.job(name))

    def pending(self) -> list[Job]:
        """The declared jobs not finished under their current settings, in dependency order."""
        self.open()
        return [job for job in self.plan() if not self.finished(job)]

    def failure(self) -> DogeError | None:
        """One error naming every failed run of the last `run()`, or None."""
        if not self.failed:
            return None
        first, why = next(iter(self.failed.items()))
        return DogeError(f"{len(self.failed)} run(s) failed: {', '.join(self.failed)} (first: {first}: {why}); "
                         "a rerun retries only these")

    # ---- the stage commands (`doge finetune`, `score`, `prune`, `rewind`, `evaluate`) -------------
    def execute_stages(self, *stages: str) -> list[Path]:
        """Every declared job of these stages, in order."""
        self.open()
        return [self.execute(job) for job in self.plan() if job.stage in stages]

    def finetune(self) -> None:
        self.execute_stages("init", "baseline")

    def score(self) -> None:
        self.execute_stages("scores")

    def prune(self) -> list[Path]:
        return self.execute_stages("ticket")

    def rewind_all(self) -> None:
        self.open()
        tickets = [self.stages.ticket.folder(job) for job in self.plan() if job.stage == "ticket"]
        missing = [path for path in tickets if not path.is_file()]
        if missing:
            raise DogeError(f"{missing[0]}: ticket not found (run `doge prune` first)")
        self.execute_stages("rewind")

    def evaluate_all(self) -> None:
        """Re-evaluate every finished run of the config on its current dev and test data."""
        self.open()
        done = [(job, self.folder(job)) for job in self.plan() if job.is_run and is_done(self.folder(job))]
        # a run that keeps its model (a baseline; a rewind with run.save_models) and lost it: its numbers
        # would be for a model that is not there, so nothing is evaluated
        lost = [folder / "model" / "model.safetensors" for job, folder in done
                if (job.stage == "baseline" or self.cfg.run.save_models)
                and not (folder / "model" / "model.safetensors").is_file()]
        if lost:
            more = f" (and {len(lost) - 1} more finished runs' models)" if len(lost) > 1 else ""
            raise DogeError(f"{lost[0]}: missing{more}, so its finished run cannot be evaluated: nothing was "
                            "evaluated; `doge run` trains it again")
        without_model = []
        for _, folder in done:
            if (folder / "model" / "model.safetensors").is_file():
                record = recorded(folder) or {}
                runs.reevaluate(self.ctx, folder)
                mark_done(folder, record)
            elif runs.evaluated_on(folder) != settings.evaluation(self.cfg):
                without_model.append(folder)
        if without_model:
            raise DogeError(f"{len(without_model)} finished runs have no saved model (run.save_models = false) to "
                            f"evaluate on the current test domains, e.g. {without_model[0]}: `doge run` trains them "
                            "again")

    def analyze(self, seed: int, finetuned: Path | None = None) -> tuple[list[Path], dict[str, int]]:
        """Fig. 4 (scores across domains) and Fig. 1/6 (pilot study) of a fine-tuned model: the given one, or
        this run's ERM model of `seed` (fine-tuned first if need be), drawn beside the run's report."""
        from dogetickets.analysis import activation_frequencies
        from dogetickets.models.resolve import load_saved
        from dogetickets.report.figures import plot_pilot, plot_scores

        self.open()
        ctx = self.ctx
        if finetuned is not None:
            model = load_saved(finetuned, self.cfg.data.task)
            if model.config.num_labels != len(ctx.labels):
                raise DogeError(f"{finetuned}: a head with {model.config.num_labels} labels, the data has "
                                f"{len(ctx.labels)}")
            scores = self.stages.scores.score(model, seed)
        else:
            self.stages.init.ensure(seed)
            self.stages.baseline.ensure(seed, "erm")
            scores = self.stages.scores.of(seed)
            model = ctx.load(self.layout.baseline(seed, "erm") / "model")
        scores_png, classes = plot_scores(scores.to_json(self.cfg.tickets.lambdas), self.out)
        counts = activation_frequencies(model.to(ctx.device), ctx.data.train, self.cfg.train.eval_batch_size,
                                        ctx.data.pad_id, device=ctx.device, show_progress=ctx.show_progress)
        return [scores_png, plot_pilot(counts, self.out)], classes

    # ---- what a sweep leaves: the table and its time ---------------------------------------------
    def results(self) -> dict[str, Any]:
        """The table of the config's finished runs, all evaluated on its current test domains."""
        from dogetickets.results import collect_results, write_results

        wanted = settings.evaluation(self.cfg)
        folders = [folder for folder in (self.folder(job) for job in self.plan() if job.is_run)
                   if is_done(folder) and runs.evaluated_on(folder) == wanted]
        notes = self.cfg.data.setup_notes()
        if "irm" in self.cfg.run.baselines and self.cfg.irm.penalty_weights:
            choice = self.stages.irm_penalty()
            notes += [irm_note(choice, self.cfg.irm.anneal_steps)] if choice is not None else []
        results = collect_results(self.out, folders, notes=notes,
                                  machine=self.ctx.clock.machine or machine.describe())
        write_results(self.out, results)
        return results

    def record_time(self, ended: bool = True) -> dict[str, Any]:
        """This process's wall time into timing.json (`ProcessClock.record`)."""
        return self.ctx.clock.record(ended)

    def report_time(self) -> dict[str, Any]:
        """Record this process's wall time as ended and say where it went."""
        share = self.ctx.clock.record(ended=True)
        parts = self.ctx.clock.outside_parts()
        self.ctx.say(f"time: {share['total_seconds']:.0f}s, outside the model {share['outside_model_seconds']:.1f}s "
                     f"({share['outside_model_share']:.1%}: " + ", ".join(f"{k} {v:.1f}s" for k, v in parts.items())
                     + ")")
        return share


def irm_note(choice: dict[str, Any], anneal_steps: int) -> str:
    """How IRM's penalty weight was chosen (`Stages.irm_penalty`), for the table."""
    grid = ", ".join(f"{w} ({100 * s:.1f})" for w, s in choice["dev_score"].items())
    return (f"IRM: penalty weight {choice['chosen']:g} (annealed in over {anneal_steps} steps), chosen on seed "
            f"{choice['seed']}'s in-domain dev score among {grid}")

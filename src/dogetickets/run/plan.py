"""The sweep as declarations: every stage instance (a `Job`) with where it writes and what it reads.

One seed's stages, in dependency order (the run directory's layout is `dogetickets.run.layout.RunLayout`):

    seed<k>/init                  the rewind point                       needs nothing
    seed<k>/erm, seed<k>/irm      baselines (each a "run")               need the rewind point
    seed<k>/scores                per-domain expressive scores           need seed<k>/erm
    seed<k>/tickets/<name>        one ticket                             needs the scores (random: the init)
    seed<k>/rewind/<name>         the ticket rewound and trained (a run) needs its ticket and the init

A job's name is its path inside the run directory. `plan` lists the jobs a config declares; the
sequential sweep (`dogetickets.run.sweep`) executes them in this order, the Ray sweep
(`dogetickets.distributed`) turns the very same list into a job graph, and `doge jobs` prints the pending
ones as `doge run --only` commands. What a stage computes, which settings key it and when it counts as
finished is its stage class's (`dogetickets.run.stages`): this module only declares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogetickets import methods as registry
from dogetickets.run.layout import RunLayout
from dogetickets.tickets import TicketSpec

if TYPE_CHECKING:
    from dogetickets.config import Config

STAGES = ("init", "irm_grid", "baseline", "scores", "ticket", "rewind")
RUN_STAGES = ("baseline", "rewind")  # the stages that train and evaluate a model: the table's rows
_PATHS = RunLayout(Path())  # the layout's paths relative to the run directory: the jobs' names


@dataclass(frozen=True)
class Job:
    """One stage for one seed. `arg` is the objective of a baseline, the TicketSpec of a ticket or rewind."""

    stage: str
    seed: int
    arg: Any = None
    needs: tuple[str, ...] = ()  # names of the jobs whose outputs it reads

    @property
    def name(self) -> str:
        """Its path inside the run directory (a ticket's without .json): seed0/init, seed0/erm, seed0/scores,
        seed0/tickets/doge-s10, seed0/rewind/doge-s10, ..."""
        s = self.seed
        if self.stage == "init":
            path = _PATHS.init(s)
        elif self.stage == "irm_grid":
            path = _PATHS.irm_grid(s, self.arg)
        elif self.stage == "baseline":
            path = _PATHS.baseline(s, self.arg)
        elif self.stage == "scores":
            path = _PATHS.scores_dir(s)
        elif self.stage == "ticket":
            path = _PATHS.ticket(s, self.spec.name).with_suffix("")
        else:
            path = _PATHS.rewind(s, self.spec.name)
        return path.as_posix()

    @property
    def spec(self) -> TicketSpec:
        """The ticket of a ticket or rewind job."""
        return TicketSpec(*self.arg)

    @property
    def is_run(self) -> bool:
        return self.stage in RUN_STAGES

    @property
    def run_name(self) -> str:
        """How the results and failures name a run: seed0/erm, seed0/doge-s10."""
        if self.stage in ("ticket", "rewind"):
            return f"seed{self.seed}/{self.spec.name}"
        return self.name


def ticket_specs(cfg: Config) -> list[TicketSpec]:
    """Every ticket the config declares: sparsity x method, x lambda for a method that takes one when each
    lambda is rewound (tickets.lambda_choice = "rewind")."""
    t = cfg.tickets
    specs: list[TicketSpec] = []
    for s in t.sparsities:
        for m in t.methods:
            if registry.get(m).uses_lambda and t.lambda_choice == "rewind":
                specs += [TicketSpec(m, s, lam) for lam in t.lambdas]
            else:
                specs.append(TicketSpec(m, s, None))
    return specs


def baselines(cfg: Config) -> list[str]:
    """ERM first (the scores need it), then the other configured baselines."""
    return ["erm", *(b for b in cfg.run.baselines if b != "erm")]


def irm_grid(cfg: Config) -> list[Job]:
    """IRM with each penalty weight of irm.penalty_weights on irm.choice_seed (none without a grid or IRM),
    after that seed's rewind point: what IRM's penalty weight is chosen from, for every seed."""
    if "irm" not in cfg.run.baselines or not cfg.irm.penalty_weights:
        return []
    init = Job("init", cfg.irm.choice_seed)
    return [init, *(Job("irm_grid", init.seed, w, (init.name,)) for w in cfg.irm.penalty_weights)]


def plan(cfg: Config, seeds: list[int] | None = None) -> list[Job]:
    """Every job the config declares, each after the jobs it needs (the IRM grid first: IRM's penalty
    weight is chosen on it for every seed, whichever seeds are asked for)."""
    grid = irm_grid(cfg)
    jobs: list[Job] = list(grid)
    specs = ticket_specs(cfg)
    for seed in cfg.run.seeds if seeds is None else seeds:
        init = Job("init", seed)
        if init not in jobs:
            jobs.append(init)
        erm = None
        for b in baselines(cfg):
            needs = (init.name, *(g.name for g in grid if g.stage == "irm_grid" and b == "irm"))
            job = Job("baseline", seed, b, needs)
            erm = erm or job
            jobs.append(job)
        scores = None
        if any(registry.get(spec[0]).uses_scores for spec in specs):
            scores = Job("scores", seed, None, (erm.name,))  # type: ignore[union-attr]
            jobs.append(scores)
        for spec in specs:
            source = scores if registry.get(spec[0]).uses_scores else init
            ticket = Job("ticket", seed, spec, (source.name,))  # type: ignore[union-attr]
            jobs += [ticket, Job("rewind", seed, spec, (ticket.name, init.name))]
    return jobs


def find(jobs: list[Job], name: str) -> Job | None:
    """The job called `name` (its path in the run directory, trailing slashes ignored)."""
    name = name.strip().strip("/")
    return next((t for t in jobs if t.name == name), None)

"""Experiment trackers (`run.log_with`: tensorboard, mlflow, wandb) through Accelerate's tracker classes.

Each training is one tracker run, named after its job (seed0/erm, seed0/rewind/doge-s30-l100): the run's
config flattened as parameters (train.lr, ...) with the job, seed and method; per dev evaluation the training
loss and dev score (train/loss, dev/score, dev/domain/<name>) at its step, as log.jsonl records them; at the
end the test metrics (test/score, test/mean, test/worst, test/domain/<name>) at the training's last step.

Where they write, inside the run directory (`RunLayout.trackers`) unless the environment says otherwise:

    tensorboard   <out>/trackers/tensorboard/<job>/    (a training done again replaces its event files)
    mlflow        <out>/trackers/mlruns (a file store; MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME win)
    wandb         <out>/trackers/wandb/, offline (WANDB_DIR, WANDB_MODE win; `wandb sync` uploads)

The experiment (MLflow) or project (wandb) is the run directory's name.

Why Accelerate's tracker classes (`accelerate.tracking.TensorBoardTracker`, `MLflowTracker`,
`WandBTracker`) are used directly, one set per training, rather than `Accelerator(log_with=...)` and
`init_trackers`: the project keeps one process-wide Accelerator (`training.loop.get_accelerator`, created
before the config's trackers are known and replaced when the precision changes), whose trackers would live
as long as it does, while a tracker run here is one training. The classes are the very code that
`init_trackers`/`log`/`end_training` call, and they log on the main process only; the caller creates
them on the writing process only (`io.is_writer`).

A tracker whose package is missing is refused before any stage runs (`check_installed`): one line naming
the extra to install.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dogetickets.errors import DogeError
from dogetickets.io import flat_keys

# tracker -> the modules that provide it (any one will do), and the dogetickets extra that installs it
MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "wandb": ("wandb",)}
Scalar = bool | int | float | str


def is_installed(name: str) -> bool:
    """Whether the package tracker `name` needs can be imported."""
    return any(importlib.util.find_spec(m) is not None for m in MODULES[name])


def check_installed(names: Iterable[str]) -> None:
    """Every tracker of `names` can run, else a one-line DogeError naming the extra to install."""
    for name in names:
        if not is_installed(name):
            raise DogeError(f"run.log_with includes {name!r} but {MODULES[name][0]} is not installed: "
                            f"pip install 'dogetickets[{name}]'")


def hyperparameters(config: dict[str, Any], job: str, info: dict[str, Any]) -> dict[str, Scalar]:
    """What a training's tracker run records as parameters: its job, what the run says of it (method, seed,
    objective, sparsity, ...) and the config flattened (train.lr, run.seeds, ...); lists, tables and None as
    JSON text."""
    values = {"job": job, **flat_keys({k: v for k, v in info.items() if k != "name"}),
              **flat_keys(config)}
    return {k: v if isinstance(v, Scalar) else json.dumps(v) for k, v in values.items()}


def _metrics(split: str, m: dict[str, Any]) -> dict[str, float]:
    """`evaluate.metrics`' numbers as split/<metric> and split/domain/<name>."""
    out = {f"{split}/{k}": float(v) for k, v in m.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    out |= {f"{split}/domain/{d}": float(v) for d, v in (m.get("per_domain") or {}).items()}
    return out


def _mlflow_experiment(folder: Path, experiment: str) -> str:
    """Point MLflow at the run's file store (unless MLFLOW_TRACKING_URI says where) and make sure the
    experiment exists (MLflowTracker would fail where parallel workers race to create it: here the loser
    takes the winner's)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks to opt in to file stores
        store = folder / "mlruns"
        store.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(store.resolve().as_uri())
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", experiment)  # (as MLflowTracker reads it)
    if mlflow.get_experiment_by_name(name) is None:
        try:
            mlflow.create_experiment(name)
        except MlflowException:
            if mlflow.get_experiment_by_name(name) is None:  # (another worker created it meanwhile: fine)
                raise
    return name


def _make(name: str, folder: Path, experiment: str, job: str) -> Any:
    """Accelerate's tracker `name` for one training, not started."""
    from accelerate import tracking

    if name == "tensorboard":
        shutil.rmtree(folder / "tensorboard" / job, ignore_errors=True)  # an earlier training of this job
        return tracking.TensorBoardTracker(job, folder / "tensorboard")
    if name == "mlflow":
        return tracking.MLflowTracker(experiment_name=_mlflow_experiment(folder, experiment), run_name=job)
    kwargs: dict[str, Any] = {"name": job}
    if not os.environ.get("WANDB_DIR"):
        folder.mkdir(parents=True, exist_ok=True)
        kwargs["dir"] = str(folder)
    if not os.environ.get("WANDB_MODE"):
        kwargs["mode"] = "offline"
    return tracking.WandBTracker(experiment, **kwargs)


class TrainingTrackers:
    """The tracker runs of one training (none: every method does nothing)."""

    def __init__(self, trackers: list[Any]) -> None:
        self.trackers = trackers

    def log(self, values: dict[str, float], step: int) -> None:
        for t in self.trackers:
            t.log(values, step=step)

    def log_eval(self, entry: dict[str, Any]) -> None:
        """One dev evaluation of the loop: its log.jsonl entry, with the dev score of each domain."""
        values = {"train/loss": float(entry["loss"]), "dev/score": float(entry["dev"])}
        values |= {f"dev/domain/{d}": float(v) for d, v in (entry.get("dev_per_domain") or {}).items()}
        self.log(values, int(entry["step"]))

    def log_test(self, test: dict[str, Any], step: int) -> None:
        """The test metrics (metrics.json's "test") at the training's last step."""
        self.log(_metrics("test", test), step)

    def finish(self, failed: bool = False) -> None:
        for t in self.trackers:
            if not failed:
                t.finish()
            elif t.name == "mlflow":
                import mlflow

                mlflow.end_run(status="FAILED")
            elif t.name == "wandb":
                t.run.finish(exit_code=1)
            else:
                t.finish()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def training_run(names: Iterable[str], folder: Path, experiment: str, job: str,
                 params: dict[str, Scalar]) -> Iterator[TrainingTrackers]:
    """The tracker runs of one training, started with its `params`, finished on leaving (marked failed on
    an exception). `names` empty (the default config, or a process that does not write): nothing at all."""
    started: list[Any] = []
    try:
        for name in names:
            tracker = _make(name, folder, experiment, job)
            tracker.start()
            started.append(tracker)
            tracker.store_init_configuration(params)
    except Exception as exc:
        TrainingTrackers(started).finish(failed=True)
        raise DogeError(f"{job}: tracker {name!r} (run.log_with) could not start: {_first_line(exc)}") from exc
    run = TrainingTrackers(started)
    try:
        yield run
    except BaseException:
        run.finish(failed=True)
        raise
    run.finish()

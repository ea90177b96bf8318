"""The settings each stage's output is keyed by: pure functions of the config, the seed and the label list.

A stage is finished when its DONE marker (a ticket: its file) records exactly these settings
(`layout.unfinished`); any other record is stale and the stage is redone. Keep a key's name and value as
they are once runs exist: a changed dict redoes every run directory's stage. A key added with a default
value is left out while it has that value (e.g. `granularity` "block"), so older runs stay valid.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from dogetickets import methods as registry
from dogetickets.config import Config
from dogetickets.errors import DogeError
from dogetickets.tickets import TicketSpec
from dogetickets.training.loop import resolve_precision

# Sections whose change makes earlier results incomparable; the rest (tickets, seeds, irm) may change:
# what depends on them records them (the IRM runs record their penalty weight and annealing).
FIXED_SECTIONS = ("model", "data", "train")
# What may change between invocations on one run directory: where the data lives, the test domains
# (training never sees them; finished runs are evaluated on new ones), and how often the loss is read.
FREE_KEYS = ("dir", "test_domains", "test_split", "notes", "log_every")


def comparable(section: dict[str, Any] | None) -> dict[str, Any] | None:
    """A config section without the keys that may change on a run directory (FREE_KEYS)."""
    if section is None:
        return None
    return {k: v for k, v in section.items() if k not in FREE_KEYS}


def init(cfg: Config, seed: int, labels: list[str]) -> dict[str, Any]:
    """The rewind point: the pretrained model, the task and its labels, the head's seed."""
    return {"model": cfg.model.name, "task": cfg.data.task, "labels": labels, "seed": seed}


def irm(cfg: Config, penalty_weight: float | None = None) -> dict[str, Any]:
    """The IRM objective: its penalty weight (`penalty_weight`, else irm.penalty_weight) and annealing."""
    w = cfg.irm.penalty_weight if penalty_weight is None else penalty_weight
    return {"penalty_weight": w, "anneal_steps": cfg.irm.anneal_steps}


def training(cfg: Config, seed: int, objective: str, labels: list[str],
             penalty_weight: float | None = None) -> dict[str, Any]:
    """A training: its starting point, its data, its hyper-parameters and objective (IRM: with
    `penalty_weight`, else irm.penalty_weight)."""
    train = {k: v for k, v in comparable(cfg.to_dict()["train"]).items()  # type: ignore[union-attr]
             if k not in ("objective", "physical")}
    train["mixed_precision"] = resolve_precision(cfg.train.mixed_precision)  # what "auto" is on this machine
    out = {"init": init(cfg, seed, labels), "data": comparable(cfg.to_dict()["data"]),
           "max_length": cfg.model.max_length, "train": train, "objective": objective}
    if objective == "irm":
        out["irm"] = irm(cfg, penalty_weight)
    return out


def external(cfg: Config, finetuned: Path) -> dict[str, Any]:
    """What identifies a model fine-tuned elsewhere (`doge prune --finetuned`): its folder and the sha256
    of its weights, with the data it is scored on."""
    weights = sorted(finetuned.glob("*.safetensors")) or sorted(finetuned.glob("*.bin"))
    if not weights:
        raise DogeError(f"{finetuned}: no model weights (*.safetensors or *.bin) there")
    digest = hashlib.sha256()
    for w in weights:
        with open(w, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return {"external": str(finetuned.resolve()), "sha256": digest.hexdigest(),
            "data": comparable(cfg.to_dict()["data"]), "max_length": cfg.model.max_length}


def scores(cfg: Config, seed: int, labels: list[str], finetuned: dict[str, Any] | None = None) -> dict[str, Any]:
    """The expressive scores: the fine-tuned model scored (this seed's ERM, or `finetuned`: `external`'s
    settings of a model fine-tuned elsewhere) and how the scores are normalized."""
    t = cfg.tickets
    source = finetuned if finetuned is not None else training(cfg, seed, "erm", labels)
    out = {"finetuned": source, "normalize_heads": t.normalize_heads,
           "normalize_ffn": t.normalize_ffn, "max_score_per_domain": t.max_score_per_domain}
    if t.granularity != "block":  # (block-level settings as before the key existed: their runs stay valid)
        out["granularity"] = t.granularity
    return out


def ticket(cfg: Config, seed: int, spec: TicketSpec, labels: list[str],
           finetuned: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ticket: its method, sparsity, lambda (or how the lambda is chosen), allocation and what it ranks."""
    method, sparsity, lam = spec
    m = registry.get(method)
    source = scores(cfg, seed, labels, finetuned) if m.uses_scores else init(cfg, seed, labels)
    out = {"method": method, "target_sparsity": sparsity, "lambda": lam, "seed": seed,
           "allocation": m.allocation_for(cfg.tickets.allocation), "from": source}
    if cfg.tickets.granularity != "block":
        out["granularity"] = cfg.tickets.granularity
    if m.uses_lambda and m.variance_for(cfg.tickets.variance) != "paper":
        out["variance"] = m.variance_for(cfg.tickets.variance)
    if m.uses_lambda and lam is None:  # chosen on dev among these, by the masked fine-tuned model
        out["lambda_choice"] = {"by": "preview", "lambdas": list(cfg.tickets.lambdas),
                                "eval_batch_size": cfg.train.eval_batch_size}
    return out


def rewind(cfg: Config, seed: int, ticket_settings: dict[str, Any] | None, labels: list[str]) -> dict[str, Any]:
    """A rewound ticket: the ticket's own settings (as its file records them) and its training."""
    return {"ticket": ticket_settings, "trained": training(cfg, seed, cfg.train.objective, labels),
            "physical": cfg.train.physical}


def evaluation(cfg: Config) -> dict[str, Any]:
    """What the test numbers of a run's metrics.json were computed on (may change on a finished run)."""
    return {"test_domains": list(cfg.data.test_domains), "test_split": cfg.data.test_split}


def needs_sampling_var(cfg: Config) -> bool:
    """Whether a configured method ranks by the noise-corrected variance (the scores must carry sampling
    variances)."""
    t = cfg.tickets
    return any(registry.get(m).variance_for(t.variance) == "corrected" for m in t.methods)

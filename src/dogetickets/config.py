"""Typed run configuration, loaded from TOML. Unknown keys and bad values are one-line errors.

One pydantic model per section, with the ranges on the fields; `config_from_dict` turns pydantic's
first complaint into a one-line `DogeError` naming the dotted key and the bad value.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import tomli_w
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from dogetickets import methods as registry
from dogetickets.errors import DogeError

Task = Literal["text", "pair", "tagging"]
Source = Literal["released", "file", "hf"]
Baseline = registry.BaselineName
Objective = registry.BaselineName
Precision = Literal["auto", "no", "bf16", "fp16"]
Tracker = Literal["tensorboard", "mlflow", "wandb"]

TASKS: tuple[str, ...] = get_args(Task)
SOURCES: tuple[str, ...] = get_args(Source)
METHODS: tuple[str, ...] = ("random", "winning", "doge")  # the default comparison (dogetickets.methods)
BASELINES: tuple[str, ...] = get_args(Baseline)
OBJECTIVES: tuple[str, ...] = get_args(Objective)
PRECISIONS: tuple[str, ...] = get_args(Precision)
TRACKERS: tuple[str, ...] = get_args(Tracker)

T = TypeVar("T")


class _BadKey(ValueError):
    """A section validator's complaint about one of its keys (the section's location is prepended)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _distinct(xs: list[T]) -> list[T]:
    seen: set[Any] = set()
    for x in xs:
        if x in seen:
            raise ValueError(f"{x!r} is listed twice")
        seen.add(x)
    return xs


Distinct = AfterValidator(_distinct)


def _ticket_method(name: str) -> str:
    try:
        method = registry.get(name)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    if not method.is_ticket:
        raise ValueError(f"{name!r} is a baseline (run.baselines), not a ticket method")
    return name


Method = Annotated[str, AfterValidator(_ticket_method)]
Names = Annotated[list[str], Distinct]
Seed = Annotated[int, Field(ge=0, lt=2**32)]  # numpy's seed range
Count = Annotated[int, Field(ge=0)]  # 0 = all / never / epochs decide (see the field)
Share = Annotated[float, Field(gt=0, lt=1)]
Sparsity = Annotated[float, Field(ge=0, lt=1)]
Lambda = Annotated[float, Field(ge=0)]


class _Section(BaseModel):
    # strict: no str -> number or float -> int coercion (ints are accepted for floats); no nan/inf
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ModelConfig(_Section):
    name: str = "minilm"  # "minilm" (the packaged default), a Hub name or a local folder
    max_length: int = Field(128, gt=0)


class DataConfig(_Section):
    task: Task = "text"  # text | pair | tagging
    source: Source = "released"  # released (<dir>/<dataset>/<domain>/<split>.json) | file | hf
    dataset: str = "amazon"  # released: the task folder (amazon, mnli, ontonote)
    dir: str = ""  # released: the data directory; default $DOGE_DATA_DIR
    path: str = ""  # file: a .jsonl/.json/.csv/.parquet file; hf: a saved dataset folder or Hub name
    # required (the defaults are checked): a config without domains is an error
    train_domains: Names = Field(default_factory=list, min_length=1, validate_default=True)
    test_domains: Names = Field(default_factory=list, min_length=1, validate_default=True)
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str = "test"
    # Per-domain split file overrides for the released layout, e.g. {nw = "dev"} trains nw on dev.json.
    train_split_overrides: dict[str, str] = Field(default_factory=dict)
    # Training domains whose dev set is carved (seeded) out of their training data, with this share.
    dev_from_train: dict[str, Share] = Field(default_factory=dict)
    max_train_per_domain: Count = 0  # 0 = all
    max_eval_per_domain: Count = 0  # 0 = all (dev and test)
    seed: Seed = 0  # subsampling and carved dev sets: the same examples for every run seed
    text_column: str = "text"
    text_pair_column: str = ""  # pair task: the second text (the released MNLI uses text_b)
    label_column: str = "label"
    domain_column: str = "domain"
    split_column: str = ""  # file/hf: a column naming train/dev/test; empty = seeded split
    labels: Names = Field(default_factory=list)  # label names in id order; default: inferred
    notes: list[str] = Field(default_factory=list)  # printed under the results table and in the report

    def setup_notes(self) -> list[str]:
        """The config's notes, then what the data set-up changes for particular training domains: what a
        reader of a table from this data must be told."""
        notes = list(self.notes)
        for dom in self.train_domains:
            parts = []
            if dom in self.train_split_overrides:
                parts.append(f"trains on its '{self.train_split_overrides[dom]}' split")
            if dom in self.dev_from_train:
                parts.append(f"its dev set is a seeded {self.dev_from_train[dom]:.0%} carved from that training data")
            if parts:
                notes.append(f"{dom}: " + "; ".join(parts))
        return notes

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        train = set(self.train_domains)
        for dom in self.test_domains:
            if dom in train:
                raise _BadKey("test_domains", f"{dom!r} is also a training domain (it would be reported as unseen)")
        for key in ("train_split_overrides", "dev_from_train"):
            for dom in getattr(self, key):
                if dom not in train:
                    raise _BadKey(f"{key}.{dom}", f"{dom!r} is not a training domain")
        if self.source in ("file", "hf") and not self.path:
            raise _BadKey("path", f"required with data.source = {self.source!r}")
        if self.task == "pair" and self.source != "released" and not self.text_pair_column:
            raise _BadKey("text_pair_column", f"required for the pair task with data.source = {self.source!r}")
        return self


class TrainConfig(_Section):
    batch_size: int = Field(16, gt=0)
    eval_batch_size: int = Field(64, gt=0)
    lr: float = Field(5e-5, gt=0)
    epochs: float = Field(10.0, ge=0)
    max_steps: Count = 0  # 0 = epochs decide
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)  # 0 = no clipping
    eval_every: Count = 0  # steps between dev evaluations; 0 = once per epoch
    patience: Count = 3  # evaluations without improvement before stopping; 0 = never stop early
    # auto (bf16 where the hardware computes it natively: CUDA with bf16, x86 with AVX512-BF16/AMX; else no)
    # | no | bf16 | fp16 (bf16/fp16 need an accelerator that has them)
    mixed_precision: Precision = "auto"
    log_every: int = Field(10, ge=1)  # steps between reads of the loss (a host sync) and its NaN/inf check
    bucket: bool = True  # length-bucketed batches (False: shuffled batches padded to max_length)
    objective: Objective = "erm"  # the objective rewinding trains with: erm | irm
    physical: bool = True  # rewind the physically pruned model (False: the full-size one, pruned units gated to 0)

    @model_validator(mode="after")
    def _some_training(self) -> TrainConfig:
        if self.epochs <= 0 and self.max_steps <= 0:
            raise _BadKey("epochs", f"{self.epochs} with train.max_steps = {self.max_steps}: one must be positive")
        return self


class IRMConfig(_Section):
    penalty_weight: float = Field(100.0, ge=0)
    anneal_steps: Count = 100
    # a grid of penalty weights: IRM is trained with each on seed `choice_seed` (seed<k>/irm-grid/w<weight>),
    # the one with the best in-domain dev score (ties: the smallest) trains IRM for every seed, in place of
    # penalty_weight; empty: penalty_weight
    penalty_weights: Annotated[list[Lambda], Distinct] = Field(default_factory=list)
    choice_seed: Seed = 0


class TicketConfig(_Section):
    methods: Annotated[list[Method], Distinct] = Field(default_factory=lambda: list(METHODS))
    sparsities: Annotated[list[Sparsity], Distinct] = Field(default_factory=lambda: [0.1, 0.3])
    lambdas: Annotated[list[Lambda], Distinct] = Field(default_factory=lambda: [100.0])
    normalize_heads: bool = True  # l2 within each layer (the paper)
    normalize_ffn: bool = True  # l2 across layers (the released code)
    # how the pruned parameters split between heads and FFN blocks (dogetickets.tickets)
    # (a method with an allocation suffix, e.g. "doge-balanced", uses its own)
    allocation: registry.Allocation = registry.DEFAULT_ALLOCATION
    # how doge's lambda is chosen on in-domain dev: "rewind" (every lambda's ticket is rewound and trained;
    # the report picks the best dev run) or "preview" (per sparsity, the lambda whose ticket removed from
    # the fine-tuned model, without retraining, scores best on dev; only that ticket is rewound)
    lambda_choice: Literal["rewind", "preview"] = "rewind"
    # doge's between-domain variance: "paper" (observed) or "corrected" (minus the sampling noise of the
    # domain means, floored at 0; method "doge-nc" always uses it) (dogetickets.scoring)
    variance: registry.Variance = "paper"
    # what an FFN unit is: the whole block (the paper) or each intermediate neuron (own gate, own score)
    granularity: registry.Granularity = "block"
    max_score_per_domain: Count = 0  # examples per domain for scoring; 0 = all training examples
    # small length-sorted batches score fastest on CPU (benchmarks/bench_core.py)
    score_batch_size: int = Field(16, gt=0)

    @model_validator(mode="after")
    def _lambdas_for_methods(self) -> TicketConfig:
        takes = [m for m in self.methods if registry.get(m).uses_lambda]
        if takes and not self.lambdas:
            how = ("each lambda's ticket is rewound" if self.lambda_choice == "rewind"
                   else "the best of them on dev is chosen")
            raise _BadKey("lambdas", f"empty, but tickets.methods has {', '.join(map(repr, takes))}, which takes "
                          f"a lambda (tickets.lambda_choice = {self.lambda_choice!r}: {how}); list at least one")
        return self


class RunConfig(_Section):
    out: str = "runs/doge"
    seeds: Annotated[list[Seed], Distinct] = Field(default_factory=lambda: [0], min_length=1)
    baselines: Annotated[list[Baseline], Distinct] = Field(default_factory=lambda: ["erm"])
    save_models: bool = True  # keep each rewound model (needed by `doge export`)
    # experiment trackers every training logs to (dogetickets.training.trackers); none by default
    log_with: Annotated[list[Tracker], Distinct] = Field(default_factory=list)


def _section() -> Any:
    # a missing section is an empty table, checked like a written one (so [data] must name domains)
    return Field(default_factory=dict, validate_default=True)


class Config(_Section):
    run: RunConfig = _section()
    model: ModelConfig = _section()
    data: DataConfig = _section()
    train: TrainConfig = _section()
    irm: IRMConfig = _section()
    tickets: TicketConfig = _section()

    def data_dir(self) -> Path:
        raw = self.data.dir or os.environ.get("DOGE_DATA_DIR", "")
        if not raw:
            raise DogeError("no data directory: set data.dir in the config, --data-dir, or DOGE_DATA_DIR")
        return Path(raw).expanduser()

    def to_dict(self) -> dict[str, Any]:
        """The config as plain dicts, lists, strings and numbers."""
        return self.model_dump()

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())


_EXPECTED = {
    "float_type": "a number",
    "int_type": "an integer",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_BOUND_KEYS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def _printable(s: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def _one_line(exc: ValidationError) -> str:
    """pydantic's first error as one line naming the dotted key (list indices left out: the value is shown)."""
    err = exc.errors(include_url=False)[0]
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    parts = [p for p in err["loc"] if isinstance(p, str)]
    cause = ctx.get("error")
    if isinstance(cause, _BadKey):
        parts.append(cause.key)
    key = ".".join(parts)
    if kind == "extra_forbidden":
        return _printable(f"unknown config key '{key}'")
    if kind == "too_short":
        return _printable(f"config key '{key}' is empty")
    if kind in _EXPECTED:
        detail = f"expected {_EXPECTED[kind]}, got {_show(value)}"
    elif kind in _BOUNDS:
        detail = f"{_show(value)} is not {_BOUNDS[kind]} {ctx[_BOUND_KEYS[kind]]}"
    elif kind == "finite_number":
        detail = f"{_show(value)} is not a finite number"
    elif kind == "literal_error":
        detail = f"{_show(value)} is not one of {ctx['expected']}"
    elif cause is not None:
        detail = str(cause)
    else:
        detail = f"{err['msg']}, got {_show(value)}"
    return _printable(f"config key '{key}': {detail}")


def config_from_dict(raw: dict[str, Any]) -> Config:
    """A checked Config from plain values (parsed TOML); the first problem is a one-line DogeError."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise DogeError(_one_line(exc)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a TOML config; `overrides` maps dotted keys ("train.lr") to values set on top."""
    path = Path(path)
    if not path.is_file():
        raise DogeError(f"{path}: config file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DogeError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise DogeError(f"{path}: not UTF-8 text") from None
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                parent = ".".join(parents[: i + 1])
                raise DogeError(_printable(f"{path}: config key '{parent}' is not a table: cannot set '{dotted}'"))
        node[leaf] = value
    try:
        return config_from_dict(raw)
    except DogeError as exc:
        raise DogeError(f"{path}: {exc}") from None


def dump_toml(d: dict[str, Any]) -> str:
    """TOML text of a config dict (any string survives: tomli-w escapes what TOML needs escaped)."""
    return tomli_w.dumps(d)

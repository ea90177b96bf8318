"""Typed run configuration, loaded from TOML. Unknown keys and bad values are one-line errors."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dogetickets.errors import DogeError

TASKS = ("text", "pair", "tagging")
SOURCES = ("released", "file", "hf")
METHODS = ("random", "winning", "doge")
BASELINES = ("erm", "irm")
OBJECTIVES = ("erm", "irm")
PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class ModelConfig:
    name: str = "minilm"  # "minilm" (the packaged default), a Hub name or a local folder
    max_length: int = 128


@dataclass
class DataConfig:
    task: str = "text"  # text | pair | tagging
    source: str = "released"  # released (<dir>/<dataset>/<domain>/<split>.json) | file | hf
    dataset: str = "amazon"  # released: the task folder (amazon, mnli, ontonote)
    dir: str = ""  # released: the data directory; default $DOGE_DATA_DIR
    path: str = ""  # file: a .jsonl/.json/.csv/.parquet file; hf: a saved dataset folder or Hub name
    train_domains: list[str] = field(default_factory=list)
    test_domains: list[str] = field(default_factory=list)
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str = "test"
    # Per-domain split file overrides for the released layout, e.g. {nw = "dev"} trains nw on dev.json.
    train_split_overrides: dict[str, str] = field(default_factory=dict)
    # Domains whose dev set is carved (seeded) out of their training data, with this share.
    dev_from_train: dict[str, float] = field(default_factory=dict)
    max_train_per_domain: int = 0  # 0 = all
    max_eval_per_domain: int = 0  # 0 = all (dev and test)
    seed: int = 0  # subsampling and carved dev sets: the same examples for every run seed
    text_column: str = "text"
    text_pair_column: str = ""  # pair task: the second text (the released MNLI uses text_b)
    label_column: str = "label"
    domain_column: str = "domain"
    split_column: str = ""  # file/hf: a column naming train/dev/test; empty = seeded split
    labels: list[str] = field(default_factory=list)  # label names in id order; default: inferred
    notes: list[str] = field(default_factory=list)  # printed under the results table


@dataclass
class TrainConfig:
    batch_size: int = 16
    eval_batch_size: int = 64
    lr: float = 5e-5
    epochs: float = 10.0
    max_steps: int = 0  # 0 = epochs decide
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    eval_every: int = 0  # steps between dev evaluations; 0 = once per epoch
    patience: int = 3  # evaluations without improvement before stopping; 0 = never stop early
    mixed_precision: str = "no"  # no | bf16 | fp16 (bf16/fp16 need an accelerator that has them)
    bucket: bool = True  # length-bucketed batches (False: shuffled batches padded to max_length)
    objective: str = "erm"  # the objective rewinding trains with: erm | irm


@dataclass
class IRMConfig:
    penalty_weight: float = 100.0
    anneal_steps: int = 100


@dataclass
class TicketConfig:
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    sparsities: list[float] = field(default_factory=lambda: [0.1, 0.3])
    lambdas: list[float] = field(default_factory=lambda: [100.0])
    normalize_heads: bool = True  # l2 within each layer (the paper)
    normalize_ffn: bool = True  # l2 across layers (the released code)
    max_score_per_domain: int = 0  # examples per domain for scoring; 0 = all training examples
    score_batch_size: int = 16  # small length-sorted batches score fastest on CPU (benchmarks/bench_core.py)


@dataclass
class RunConfig:
    out: str = "runs/doge"
    seeds: list[int] = field(default_factory=lambda: [0])
    baselines: list[str] = field(default_factory=lambda: ["erm"])
    save_models: bool = True  # keep each rewound model (needed by `doge export`)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    irm: IRMConfig = field(default_factory=IRMConfig)
    tickets: TicketConfig = field(default_factory=TicketConfig)

    def data_dir(self) -> Path:
        raw = self.data.dir or os.environ.get("DOGE_DATA_DIR", "")
        if not raw:
            raise DogeError("no data directory: set data.dir in the config, --data-dir, or DOGE_DATA_DIR")
        return Path(raw).expanduser()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())


def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DogeError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is int or tp is bool or tp is str:
        if tp is int and isinstance(value, bool) or not isinstance(value, tp):
            raise DogeError(f"config key '{key}': expected {tp.__name__}, got {value!r}")
        return value
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise DogeError(f"config key '{key}': expected a list, got {value!r}")
        return [_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, inner = typing.get_args(tp)
        if not isinstance(value, dict):
            raise DogeError(f"config key '{key}': expected a table, got {value!r}")
        return {str(k): _check_type(v, inner, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, types.UnionType):
        return value
    raise TypeError(f"unsupported config type {tp}")


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in hints:
            raise DogeError(f"unknown config key '{full}'")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise DogeError(f"config key '{full}' must be a table")
            kwargs[key] = _build(tp, value, f"{full}.")
        else:
            kwargs[key] = _check_type(value, tp, full)
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    def one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            raise DogeError(f"config key '{key}': {value!r} is not one of {', '.join(allowed)}")

    one_of("data.task", cfg.data.task, TASKS)
    one_of("data.source", cfg.data.source, SOURCES)
    one_of("train.mixed_precision", cfg.train.mixed_precision, PRECISIONS)
    one_of("train.objective", cfg.train.objective, OBJECTIVES)
    for m in cfg.tickets.methods:
        one_of("tickets.methods", m, METHODS)
    for b in cfg.run.baselines:
        one_of("run.baselines", b, BASELINES)
    for s in cfg.tickets.sparsities:
        if not 0.0 <= s < 1.0:
            raise DogeError(f"config key 'tickets.sparsities': {s} is not in [0, 1)")
    for lam in cfg.tickets.lambdas:
        if lam < 0:
            raise DogeError(f"config key 'tickets.lambdas': {lam} is negative")
    if not cfg.data.train_domains:
        raise DogeError("config key 'data.train_domains' is empty: name at least one training domain")
    if not cfg.data.test_domains:
        raise DogeError("config key 'data.test_domains' is empty: name at least one test domain")
    if not cfg.run.seeds:
        raise DogeError("config key 'run.seeds' is empty")
    for key, value in (
        ("train.batch_size", cfg.train.batch_size),
        ("train.eval_batch_size", cfg.train.eval_batch_size),
        ("tickets.score_batch_size", cfg.tickets.score_batch_size),
        ("model.max_length", cfg.model.max_length),
    ):
        if value <= 0:
            raise DogeError(f"config key '{key}' must be positive, got {value}")
    if cfg.train.lr <= 0:
        raise DogeError(f"config key 'train.lr' must be positive, got {cfg.train.lr}")
    if cfg.train.epochs <= 0 and cfg.train.max_steps <= 0:
        raise DogeError("config keys 'train.epochs' and 'train.max_steps': one must be positive")
    for d, share in cfg.data.dev_from_train.items():
        if not 0.0 < share < 1.0:
            raise DogeError(f"config key 'data.dev_from_train.{d}': {share} is not in (0, 1)")
    if cfg.data.source in ("file", "hf") and not cfg.data.path:
        raise DogeError(f"config key 'data.path' is required with data.source = '{cfg.data.source}'")
    if cfg.data.task == "pair" and cfg.data.source != "released" and not cfg.data.text_pair_column:
        raise DogeError("config key 'data.text_pair_column' is required for the pair task")


def config_from_dict(raw: dict[str, Any]) -> Config:
    cfg = _build(Config, raw, "")
    _validate(cfg)
    return cfg


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a TOML config; `overrides` maps dotted keys ("train.lr") to values set on top."""
    path = Path(path)
    if not path.is_file():
        raise DogeError(f"{path}: config file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DogeError(f"{path}: invalid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return config_from_dict(raw)
    except DogeError as exc:
        raise DogeError(f"{path}: {exc}") from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k)


def dump_toml(d: dict[str, Any]) -> str:
    """A small TOML writer for our two-level config (tomllib only reads)."""
    lines = []
    for section, body in d.items():
        lines.append(f"[{section}]")
        for k, v in body.items():
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)

"""Where examples come from: the paper's released layout, one generic file, or a `datasets` dataset.

Every source ends in the same shape: `Splits` (train/dev/test, each domain -> examples) plus the
label names in id order. Bad input is a one-line `DogeError` naming the file and line, or the key.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dogetickets.config import Config, DataConfig
from dogetickets.errors import DogeError


@dataclass
class Example:
    """One labelled example. `label` is an id (text, pair) or a list of tag ids (tagging)."""

    text: str
    label: int | list[int]
    domain: str
    text_pair: str | None = None


@dataclass
class Splits:
    train: dict[str, list[Example]]
    dev: dict[str, list[Example]]
    test: dict[str, list[Example]]
    labels: list[str]

    def sizes(self) -> dict[str, dict[str, int]]:
        return {
            name: {d: len(xs) for d, xs in part.items()}
            for name, part in (("train", self.train), ("dev", self.dev), ("test", self.test))
        }


# The released data's fields and label sets (shared/data/README.md).
RELEASED_LABELS: dict[str, list[str]] = {
    "amazon": ["negative", "positive", "neutral"],
    "mnli": ["contradiction", "entailment", "neutral"],
}


@dataclass
class _Raw:
    """A record before label mapping: where it came from, for error messages."""

    text: str
    label: Any
    domain: str
    where: str
    text_pair: str | None = None


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DogeError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DogeError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, obj


def _field(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj or obj[key] is None:
        raise DogeError(f"{where}: missing field '{key}'")
    return obj[key]


def _released_file(cfg: DataConfig, root: Path, domain: str, split: str) -> list[_Raw]:
    path = root / cfg.dataset / domain / f"{split}.json"
    if not path.is_file():
        raise DogeError(f"{path}: file not found (domain '{domain}', split '{split}')")
    rows: list[_Raw] = []
    pair_col = cfg.text_pair_column or "text_b"
    text_col = "text_a" if cfg.task == "pair" and cfg.text_column == "text" else cfg.text_column
    for lineno, obj in _read_jsonl(path):
        where = f"{path}:{lineno}"
        text = _field(obj, text_col, where)
        pair = _field(obj, pair_col, where) if cfg.task == "pair" else None
        rows.append(_Raw(str(text), _field(obj, cfg.label_column, where), domain, where, pair))
    if not rows:
        raise DogeError(f"{path}: domain '{domain}' has no examples in split '{split}'")
    return rows


def _load_released(cfg: Config) -> dict[str, dict[str, list[_Raw]]]:
    d = cfg.data
    root = cfg.data_dir()
    if not root.is_dir():
        raise DogeError(f"data directory {root} not found (set --data-dir or DOGE_DATA_DIR)")
    task_dir = root / d.dataset
    if not task_dir.is_dir():
        raise DogeError(f"{task_dir}: no dataset '{d.dataset}' in the data directory")
    present = sorted(p.name for p in task_dir.iterdir() if p.is_dir())
    for dom in [*d.train_domains, *d.test_domains]:
        if dom not in present:
            raise DogeError(f"unknown domain '{dom}' in {task_dir} (it has: {', '.join(present)})")
    out: dict[str, dict[str, list[_Raw]]] = {"train": {}, "dev": {}, "test": {}}
    for dom in d.train_domains:
        out["train"][dom] = _released_file(d, root, dom, d.train_split_overrides.get(dom, d.train_split))
        if dom not in d.dev_from_train:
            out["dev"][dom] = _released_file(d, root, dom, d.dev_split)
    for dom in d.test_domains:
        out["test"][dom] = _released_file(d, root, dom, d.test_split)
    return out


def _table_rows(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        for lineno, obj in _read_jsonl(path):
            yield f"{path}:{lineno}", obj
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for lineno, row in enumerate(reader, 2):
                yield f"{path}:{lineno}", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}:row {i}", row
    else:
        raise DogeError(f"{path}: unsupported file type '{suffix}' (use .jsonl, .csv, .tsv or .parquet)")


def _hf_rows(name: str) -> Iterable[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_from_disk(name) if Path(name).exists() else datasets.load_dataset(name)
    except Exception as exc:  # noqa: BLE001 - any failure to open is the user's path or name
        raise DogeError(f"dataset '{name}': cannot load ({str(exc).splitlines()[0]})") from None
    if isinstance(ds, datasets.DatasetDict):
        for split, part in ds.items():
            for i, row in enumerate(part):
                yield f"{name}[{split}]:row {i}", {"__split__": split, **row}
    else:
        for i, row in enumerate(ds):
            yield f"{name}:row {i}", row


SPLIT_ALIASES = {"validation": "dev", "valid": "dev", "val": "dev", "eval": "dev"}


def _load_generic(cfg: Config) -> dict[str, dict[str, list[_Raw]]]:
    d = cfg.data
    if d.source == "file":
        path = Path(d.path).expanduser()
        if not path.is_file():
            raise DogeError(f"{path}: data file not found")
        rows: Iterable[tuple[str, dict[str, Any]]] = _table_rows(path)
    else:
        rows = _hf_rows(d.path)
    wanted = set(d.train_domains) | set(d.test_domains)
    by_split: dict[str, dict[str, list[_Raw]]] = {"train": {}, "dev": {}, "test": {}, "": {}}
    seen_domains: set[str] = set()
    for where, row in rows:
        domain = str(_field(row, d.domain_column, where))
        seen_domains.add(domain)
        if domain not in wanted:
            continue
        text = str(_field(row, d.text_column, where))
        pair = str(_field(row, d.text_pair_column, where)) if d.task == "pair" else None
        split = ""
        if d.split_column or "__split__" in row:
            split = str(row.get(d.split_column) if d.split_column else row["__split__"]).lower()
            split = SPLIT_ALIASES.get(split, split)
            if split not in ("train", "dev", "test"):
                raise DogeError(f"{where}: split '{split}' is not train, dev or test")
        label = _field(row, d.label_column, where)
        if d.task == "tagging" and isinstance(label, str):
            label = label.split()
        by_split[split].setdefault(domain, []).append(_Raw(text, label, domain, where, pair))
    for dom in sorted(wanted - seen_domains):
        raise DogeError(f"unknown domain '{dom}' in {d.path} (it has: {', '.join(sorted(seen_domains))})")
    # Rows without a split: training domains -> train (dev carved below), test domains -> test.
    unsplit = by_split.pop("")
    out: dict[str, dict[str, list[_Raw]]] = {"train": {}, "dev": {}, "test": {}}
    for dom in d.train_domains:
        out["train"][dom] = by_split["train"].get(dom, []) + unsplit.get(dom, [])
        if dom in by_split["dev"]:
            out["dev"][dom] = by_split["dev"][dom]
        elif dom not in d.dev_from_train:
            d.dev_from_train[dom] = 0.1
    for dom in d.test_domains:
        out["test"][dom] = by_split["test"].get(dom, []) + unsplit.get(dom, [])
    for part in ("train", "test"):
        for dom, xs in out[part].items():
            if not xs:
                raise DogeError(f"{d.path}: domain '{dom}' has no {part} examples")
    return out


def _label_names(cfg: Config, raw: dict[str, dict[str, list[_Raw]]]) -> list[str]:
    d = cfg.data
    if d.labels:
        return list(d.labels)
    if d.source == "released" and d.dataset in RELEASED_LABELS:
        return RELEASED_LABELS[d.dataset]
    values: set[Any] = set()
    for part in raw.values():
        for xs in part.values():
            for r in xs:
                values.update(r.label if d.task == "tagging" else [r.label])
    if d.task == "tagging":
        tags = sorted({str(v) for v in values} - {"O"}, key=lambda t: (t[2:], t[:2]))
        return ["O", *tags]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return [str(v) for v in range(max(values) + 1)]
    return sorted(str(v) for v in values)


def _label_id(value: Any, labels: list[str], index: dict[str, int], where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(labels):
            return value
    elif str(value) in index:
        return index[str(value)]
    raise DogeError(f"{where}: label {value!r} is not in the label set ({', '.join(labels)})")


def _to_examples(raws: list[_Raw], task: str, labels: list[str]) -> list[Example]:
    index = {lab: i for i, lab in enumerate(labels)}
    out = []
    for r in raws:
        if task == "tagging":
            tags = r.label
            if not isinstance(tags, list):
                raise DogeError(f"{r.where}: expected a list of tags, got {type(tags).__name__}")
            n_tokens = len(r.text.split())
            if len(tags) != n_tokens:
                raise DogeError(f"{r.where}: {len(tags)} tags for {n_tokens} tokens")
            if n_tokens == 0:
                raise DogeError(f"{r.where}: empty sentence")
            label: int | list[int] = [index[t] if t in index else _label_id(t, labels, index, r.where) for t in tags]
        else:
            label = _label_id(r.label, labels, index, r.where)
        out.append(Example(r.text, label, r.domain, r.text_pair))
    return out


def _subsample(xs: list[Example], n: int, rng: random.Random) -> list[Example]:
    if n <= 0 or len(xs) <= n:
        return xs
    keep = sorted(rng.sample(range(len(xs)), n))
    return [xs[i] for i in keep]


def load_splits(cfg: Config) -> Splits:
    """Read, check, label-map and (seeded) subsample the configured domains."""
    d = cfg.data
    raw = _load_released(cfg) if d.source == "released" else _load_generic(cfg)
    labels = _label_names(cfg, raw)
    rng = random.Random(d.seed)
    parts: dict[str, dict[str, list[Example]]] = {"train": {}, "dev": {}, "test": {}}
    for dom in d.train_domains:
        train = _to_examples(raw["train"][dom], d.task, labels)
        if dom in d.dev_from_train:
            share = d.dev_from_train[dom]
            order = list(range(len(train)))
            rng.shuffle(order)
            n_dev = max(1, round(share * len(train)))
            dev_idx = set(order[:n_dev])
            parts["dev"][dom] = [x for i, x in enumerate(train) if i in dev_idx]
            train = [x for i, x in enumerate(train) if i not in dev_idx]
        else:
            parts["dev"][dom] = _to_examples(raw["dev"][dom], d.task, labels)
        parts["train"][dom] = train
    for dom in d.test_domains:
        parts["test"][dom] = _to_examples(raw["test"][dom], d.task, labels)
    for dom, xs in parts["train"].items():
        parts["train"][dom] = _subsample(xs, d.max_train_per_domain, rng)
    for split in ("dev", "test"):
        for dom, xs in parts[split].items():
            parts[split][dom] = _subsample(xs, d.max_eval_per_domain, rng)
    for split, part in parts.items():
        for dom, xs in part.items():
            if not xs:
                raise DogeError(f"domain '{dom}' has no {split} examples")
    return Splits(parts["train"], parts["dev"], parts["test"], labels)

"""Where examples come from: the paper's released layout, one generic file, or a `datasets` dataset.

Every source ends in the same shape: `Splits` (train/dev/test, each domain -> examples) plus the
label names in id order. Bad input is a one-line `DogeError` naming the file and line, or the key.

Labels have one type: every label value becomes a string (`label_str`). Numbers (ints, floats,
`True`/`False` as 1/0, and strings that are plain decimal numbers such as "2", "02", "2.0" or
"4.50") take their canonical decimal form ("2", "4.5"); other strings are kept exactly. So `2`,
`2.0` and `"2"` are one label. (The released datasets' files refuse `true`/`false`: their labels are
ids and names, and `True == 1` must not make a boolean class 1.) A label list comes from, in this
order: the `labels` argument of `load_splits` (a run's saved list), `data.labels`, the fixed lists
of the released datasets, or inference from the loaded examples (numbers in numeric order, names
sorted; tagging: "O" first, then by entity type, B- before I-). An inferred list refuses labels
differing only in case or surrounding spaces ("pos" and "Pos"), and, except for tagging, a label
seen fewer than `RARE_COUNT` times that is also under `RARE_SHARE` of the examples: both are usually
typos.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
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


ONTONOTES_TYPES = (
    "PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT", "EVENT", "WORK_OF_ART",
    "LAW", "LANGUAGE", "DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL",
)  # fmt: skip

# The released data's fields and label sets (shared/data/README.md). Fixed, so that runs on
# different domains (OntoNotes domains lack some entity types) share their label ids.
RELEASED_LABELS: dict[str, list[str]] = {
    "amazon": ["negative", "positive", "neutral"],
    "mnli": ["contradiction", "entailment", "neutral"],
    # the order inference gives: "O", then by entity type, B- before I- (37 tags)
    "ontonote": ["O", *(f"{bi}-{t}" for t in sorted(ONTONOTES_TYPES) for bi in "BI")],
}

# An inferred label seen fewer than RARE_COUNT times AND in under RARE_SHARE of the examples is refused.
RARE_COUNT = 5
RARE_SHARE = 0.01

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)", re.ASCII)
_WHOLE = re.compile(r"-?\d+", re.ASCII)


@dataclass
class _Raw:
    """A record before label mapping: where it came from, for error messages."""

    text: str
    label: Any  # as read; `_normalize` turns it into a str (a list of str for tagging)
    domain: str
    where: str
    text_pair: str | None = None


# ---- reading files ---------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _read_text(path: Path) -> str:
    """The whole file as UTF-8 text (a leading BOM dropped); bad bytes are an error naming the line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DogeError(f"{path}: cannot read ({exc.strerror or _first_line(exc)})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DogeError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DogeError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DogeError(f"{path}:{lineno}: expected one JSON object per line, got a {type(obj).__name__}")
        yield lineno, obj


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows as dicts, each named by the physical line its record starts on (quoted fields may hold newlines)."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter)
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DogeError(f"{path}:{start}: malformed {path.suffix[1:].upper()} ({exc})") from None
        if not row:
            continue  # a blank line
        if header is None:
            dup = next((c for i, c in enumerate(row) if c in row[:i]), None)
            if dup is not None:
                raise DogeError(f"{path}:{start}: column {dup!r} appears twice in the header")
            header = row
        elif len(row) != len(header):
            raise DogeError(
                f"{path}:{start}: {len(row)} fields where the header has {len(header)} (check the quoting)"
            )
        else:
            yield f"{path}:{start}", dict(zip(header, row, strict=True))


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with path.open("rb") as f:
            table = pq.read_table(f)
    except pa.ArrowException as exc:
        raise DogeError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
    except OSError as exc:
        raise DogeError(f"{path}: cannot read ({exc.strerror or _first_line(exc)})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}:row {i}", row


def _table_rows(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    suffix = path.suffix.lower()
    rows: Iterable[tuple[str, dict[str, Any]]]
    if suffix in (".jsonl", ".json"):
        rows = ((f"{path}:{lineno}", obj) for lineno, obj in _read_jsonl(path))
    elif suffix in (".csv", ".tsv"):
        rows = _csv_rows(path, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        raise DogeError(f"{path}: unsupported file type '{suffix}' (use .jsonl, .csv, .tsv or .parquet)")
    empty = True
    for row in rows:
        empty = False
        yield row
    if empty:
        raise DogeError(f"{path}: no data rows (empty file)")


def _field(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise DogeError(f"{where}: missing field '{key}' (it has: {', '.join(map(str, obj))})")
    if obj[key] is None:
        raise DogeError(f"{where}: field '{key}' has no value")
    return obj[key]


def _text(obj: dict[str, Any], key: str, where: str, task: str) -> str:
    value = _field(obj, key, where)
    if not isinstance(value, str):
        hint = " (join the tokens with single spaces)" if task == "tagging" and isinstance(value, list) else ""
        raise DogeError(f"{where}: field '{key}' is not a string ({type(value).__name__}){hint}")
    return value


# ---- sources ---------------------------------------------------------------------------------


def _released_file(cfg: DataConfig, root: Path, domain: str, split: str) -> list[_Raw]:
    path = root / cfg.dataset / domain / f"{split}.json"
    if path.is_dir():
        raise DogeError(f"{path}: is a directory, not a data file (domain '{domain}', split '{split}')")
    if not path.is_file():
        raise DogeError(f"{path}: file not found (domain '{domain}', split '{split}')")
    rows: list[_Raw] = []
    pair_col = cfg.text_pair_column or "text_b"
    text_col = "text_a" if cfg.task == "pair" and cfg.text_column == "text" else cfg.text_column
    for lineno, obj in _read_jsonl(path):
        where = f"{path}:{lineno}"
        text = _text(obj, text_col, where, cfg.task)
        pair = _text(obj, pair_col, where, cfg.task) if cfg.task == "pair" else None
        label = _field(obj, cfg.label_column, where)
        if cfg.dataset in RELEASED_LABELS and _has_bool(label):
            what = "is a boolean" if isinstance(label, bool) else "holds a boolean"
            raise DogeError(f"{where}: label {json.dumps(label)[:60]} {what}, not one of the labels of the released "
                            f"'{cfg.dataset}' data ({_released_ids(cfg.dataset)})")
        rows.append(_Raw(text, label, domain, where, pair))
    if not rows:
        raise DogeError(f"{path}: domain '{domain}' has no examples in split '{split}'")
    return rows


def _has_bool(label: Any) -> bool:
    """A JSON true/false in a label (or in a list of tags): never a label of the released data, whose
    fixed label lists are ids and names (`True == 1` must not make it class 1)."""
    return isinstance(label, bool) or (isinstance(label, list) and any(isinstance(t, bool) for t in label))


def _released_ids(dataset: str) -> str:
    """'0 negative, 1 positive, 2 neutral': a released dataset's label ids and names (the first few)."""
    names = RELEASED_LABELS[dataset]
    shown = ", ".join(f"{i} {name}" for i, name in enumerate(names[:4]))
    return shown + (", ..." if len(names) > 4 else "")


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


def _hf_rows(name: str) -> Iterable[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_from_disk(name) if Path(name).exists() else datasets.load_dataset(name)
    except Exception as exc:  # noqa: BLE001 - any failure to open is the user's path or name
        raise DogeError(f"dataset '{name}': cannot load ({_first_line(exc)})") from None
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
        if path.is_dir():
            raise DogeError(f"{path}: is a directory; data.path names one .jsonl, .csv, .tsv or .parquet file")
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
        text = _text(row, d.text_column, where, d.task)
        pair = _text(row, d.text_pair_column, where, d.task) if d.task == "pair" else None
        split = ""
        if d.split_column or "__split__" in row:
            if d.split_column and d.split_column not in row:
                raise DogeError(f"{where}: no column '{d.split_column}' (config key 'data.split_column'); "
                                f"the columns are: {', '.join(str(c) for c in row if c != '__split__')}")
            split = str(_field(row, d.split_column, where) if d.split_column else row["__split__"]).lower()
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


# ---- labels ----------------------------------------------------------------------------------


def label_str(value: Any, where: str) -> str:
    """One label value in its one string form (the rule is in the module docstring)."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            raise DogeError(f"{where}: label is NaN (a missing value)")
        if math.isinf(value):
            raise DogeError(f"{where}: label {value} is not a name or a finite number")
        return _number_str(Decimal(repr(value)))
    if isinstance(value, str):
        if not value.strip():
            raise DogeError(f"{where}: empty label")
        return _number_str(Decimal(value)) if _NUMBER.fullmatch(value) else value
    hint = " (a list of tags is for data.task = 'tagging')" if isinstance(value, list) else ""
    raise DogeError(f"{where}: label is a {type(value).__name__}, not a name or a number{hint}")


def _number_str(x: Decimal) -> str:
    return str(int(x)) if x == x.to_integral_value() else format(x.normalize(), "f")


def _normalize(raws: Iterable[_Raw], task: str) -> None:
    for r in raws:
        if task != "tagging":
            r.label = label_str(r.label, r.where)
        elif isinstance(r.label, list):
            r.label = [label_str(t, r.where) for t in r.label]
        else:
            raise DogeError(f"{r.where}: expected a list of tags, got {type(r.label).__name__}")


@dataclass
class LabelSet:
    """Label names in id order, and where they came from (for error messages)."""

    names: list[str]
    origin: str
    index: dict[str, int] = field(init=False)
    ids_allowed: bool = field(init=False)  # whole numbers may be ids: no name is a number

    def __post_init__(self) -> None:
        self.index = {name: i for i, name in enumerate(self.names)}
        self.ids_allowed = not any(_NUMBER.fullmatch(name) for name in self.names)

    @classmethod
    def given(cls, values: list[Any], origin: str) -> LabelSet:
        if not values:
            raise DogeError(f"{origin}: the label list is empty")
        names = [label_str(v, origin) for v in values]
        dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if dup is not None:
            raise DogeError(f"{origin}: label {dup!r} appears twice")
        return cls(names, origin)

    def id(self, value: str, where: str) -> int:
        if value in self.index:
            return self.index[value]
        if self.ids_allowed and _WHOLE.fullmatch(value) and 0 <= int(value) < len(self.names):
            return int(value)
        raise DogeError(
            f"{where}: label {value!r} is not in the label set of {self.origin} ({', '.join(self.names)})"
        )


def _infer_labels(raws: list[_Raw], task: str) -> list[str]:
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for r in raws:
        for v in r.label if task == "tagging" else [r.label]:
            counts[v] += 1
            first.setdefault(v, r.where)
    fix = "fix the data or set data.labels explicitly"
    variants: dict[str, list[str]] = {}
    for v in counts:
        variants.setdefault(v.strip().casefold(), []).append(v)
    for same in variants.values():
        if len(same) > 1:
            by_count = sorted(same, key=lambda v: (counts[v], v))
            odd, usual = by_count[0], by_count[-1]
            raise DogeError(
                f"{first[odd]}: label {odd!r} ({counts[odd]}x) differs from {usual!r} ({counts[usual]}x) "
                f"only in case or surrounding spaces: {fix}"
            )
    if task != "tagging":
        n = sum(counts.values())
        for v, k in sorted(counts.items(), key=lambda kv: (kv[1], kv[0])):
            if k < RARE_COUNT and k < RARE_SHARE * n:
                raise DogeError(f"{first[v]}: label {v!r} occurs only {k} time(s) in {n} examples: {fix}")
    if all(_NUMBER.fullmatch(v) for v in counts):
        return sorted(counts, key=Decimal)
    if task == "tagging":
        return ["O", *sorted(set(counts) - {"O"}, key=lambda t: (t[2:], t[:2]))]
    return sorted(counts)


def _label_set(cfg: Config, raws: list[_Raw], labels: list[str] | None) -> LabelSet:
    d = cfg.data
    if labels is not None:
        return LabelSet.given(labels, "this run (saved in its directory)")
    if d.labels:
        return LabelSet.given(d.labels, "config key 'data.labels'")
    if d.source == "released" and d.dataset in RELEASED_LABELS:
        return LabelSet(RELEASED_LABELS[d.dataset], f"the released '{d.dataset}' data")
    return LabelSet(_infer_labels(raws, d.task), "the data")


def _to_examples(raws: list[_Raw], task: str, labels: LabelSet) -> list[Example]:
    out = []
    for r in raws:
        if task == "tagging":
            tags = r.label
            n_tokens = len(r.text.split())
            if len(tags) != n_tokens:
                raise DogeError(f"{r.where}: {len(tags)} tags for {n_tokens} tokens")
            if n_tokens == 0:
                raise DogeError(f"{r.where}: empty sentence")
            label: int | list[int] = [labels.id(t, r.where) for t in tags]
        else:
            label = labels.id(r.label, r.where)
        out.append(Example(r.text, label, r.domain, r.text_pair))
    return out


def _rng(seed: int, purpose: str, domain: str) -> random.Random:
    """A generator of its own for each (purpose, domain): a domain's examples do not depend on which
    other domains are configured (a test domain added later leaves the others' samples as they were)."""
    return random.Random(f"{seed}:{purpose}:{domain}")


def _subsample(xs: list[Example], n: int, rng: random.Random) -> list[Example]:
    if n <= 0 or len(xs) <= n:
        return xs
    keep = sorted(rng.sample(range(len(xs)), n))
    return [xs[i] for i in keep]


def load_splits(cfg: Config, labels: list[str] | None = None) -> Splits:
    """Read, check, label-map and (seeded) subsample the configured domains.

    `labels`, when given, is THE label list (a run passes the one it saved at its first stage):
    every label is mapped through it and one outside it is an error naming the file and line.
    Without it: `data.labels`, then the released datasets' fixed lists, then inference (module
    docstring). Labels that are whole numbers are read as ids when no name in the list is a number.
    """
    d = cfg.data
    raw = _load_released(cfg) if d.source == "released" else _load_generic(cfg)
    all_raws = [r for part in raw.values() for xs in part.values() for r in xs]
    _normalize(all_raws, d.task)
    label_set = _label_set(cfg, all_raws, labels)
    parts: dict[str, dict[str, list[Example]]] = {"train": {}, "dev": {}, "test": {}}
    for dom in d.train_domains:
        train = _to_examples(raw["train"][dom], d.task, label_set)
        if dom in d.dev_from_train:
            share = d.dev_from_train[dom]
            order = list(range(len(train)))
            _rng(d.seed, "dev_from_train", dom).shuffle(order)
            n_dev = max(1, round(share * len(train)))
            dev_idx = set(order[:n_dev])
            parts["dev"][dom] = [x for i, x in enumerate(train) if i in dev_idx]
            train = [x for i, x in enumerate(train) if i not in dev_idx]
        else:
            parts["dev"][dom] = _to_examples(raw["dev"][dom], d.task, label_set)
        parts["train"][dom] = train
    for dom in d.test_domains:
        parts["test"][dom] = _to_examples(raw["test"][dom], d.task, label_set)
    for dom, xs in parts["train"].items():
        parts["train"][dom] = _subsample(xs, d.max_train_per_domain, _rng(d.seed, "train", dom))
    for split in ("dev", "test"):
        for dom, xs in parts[split].items():
            parts[split][dom] = _subsample(xs, d.max_eval_per_domain, _rng(d.seed, split, dom))
    for split, part in parts.items():
        for dom, xs in part.items():
            if not xs:
                raise DogeError(f"domain '{dom}' has no {split} examples")
    return Splits(parts["train"], parts["dev"], parts["test"], list(label_set.names))

"""Doge tickets for a model you already have: three functions over the package's own code.

>>> import dogetickets
>>> scores = dogetickets.score_domains(model, tokenizer, {"books": ds1, "dvd": ds2}, task="text")
>>> ticket = dogetickets.select_ticket(scores, sparsity=0.2, method="doge", lam=100)
>>> small = dogetickets.prune(model, ticket)          # physically smaller, ready for save_pretrained

`score_domains` encodes each domain's examples as a run does (`dogetickets.data.tasks`), and computes the
per-domain expressive scores exactly per example in one backward pass (`dogetickets.scoring`);
`select_ticket` ranks the units as the method registry says (`dogetickets.methods`) and selects them
as a run does (`dogetickets.tickets`); `prune` removes them (`dogetickets.models.export`). A domain's
examples are a `datasets.Dataset` or a list of dicts (any sequence of mappings).

Labels follow the model: its ``config.id2label`` is the label list, in its id order. A label in the
data may be a name in that list or, when no name is a number, an id (so the default ``LABEL_0`` ...
names of a model fine-tuned without names take integer labels as ids). A `datasets` ``ClassLabel``
column is read by its names when the model has names of its own, so a data set whose label order
differs from the model's is mapped by name, not by position.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from dogetickets import methods as registry
from dogetickets.data.sources import Example, LabelSet, label_str
from dogetickets.data.tasks import Encoded, Task, make_task
from dogetickets.errors import DogeError
from dogetickets.models.units import GRANULARITIES, Units
from dogetickets.scoring import UnitScores, expressive_scores
from dogetickets.tickets import Shape, Ticket, choose

__all__ = ["ModelScores", "encode_domains", "model_labels", "prune", "score_domains", "select_ticket"]

TASKS = ("text", "pair", "tagging")
_GENERIC_LABEL = re.compile(r"LABEL_(\d+)")
_HEADS = {"text": "ForSequenceClassification", "pair": "ForSequenceClassification",
          "tagging": "ForTokenClassification"}


@dataclass
class ModelScores(UnitScores):
    """`UnitScores` of one model, with the model's `Shape` (its units and parameter counts): all that
    `select_ticket` needs."""

    shape: Shape | None = None


# ---- labels --------------------------------------------------------------------------------------
def _generic(names: Sequence[str]) -> bool:
    """Whether `names` are transformers' placeholders LABEL_0, LABEL_1, ... (a model fine-tuned unnamed)."""
    return all((m := _GENERIC_LABEL.fullmatch(n)) is not None and int(m.group(1)) == i for i, n in enumerate(names))


def model_labels(model: nn.Module, labels: Sequence[Any] | None = None) -> list[str]:
    """The model's label names in its id order (``config.id2label``); `labels`, when given, names them
    for a model that has only the placeholders LABEL_0, ... and must otherwise equal them."""
    config = model.config
    n = int(config.num_labels)
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n)]
    if labels is None:
        return names
    given = [label_str(v, "labels") for v in labels]
    if len(given) != n:
        raise DogeError(f"labels: {len(given)} names for a model with {n} labels ({', '.join(names)})")
    if not _generic(names) and given != names:
        raise DogeError(f"labels ({', '.join(given)}) are not the model's config.id2label ({', '.join(names)}, "
                        "in id order); leave labels out")
    return given


# ---- data ----------------------------------------------------------------------------------------
def _columns(data: Any, wanted: list[str], domain: str) -> tuple[dict[str, list[Any]], Any]:
    """The wanted columns of a Dataset or of a list of dicts, and the label column's `datasets` feature
    (None for a list)."""
    if isinstance(data, Mapping) or isinstance(data, str | bytes):
        raise DogeError(f"domain {domain!r}: expected a datasets.Dataset or a list of dicts, got a "
                        f"{type(data).__name__} (a DatasetDict? pass one split)")
    names = getattr(data, "column_names", None)
    if isinstance(names, list) and hasattr(data, "features"):  # a datasets.Dataset: read by column
        missing = [c for c in wanted if c not in names]
        if missing:
            raise DogeError(f"domain {domain!r}: no column '{missing[0]}' (it has: {', '.join(names)})")
        return {c: list(data[c]) for c in wanted}, data.features.get(wanted[-1])
    if not isinstance(data, Sequence):
        raise DogeError(f"domain {domain!r}: expected a datasets.Dataset or a list of dicts, "
                        f"got a {type(data).__name__}")
    out: dict[str, list[Any]] = {c: [] for c in wanted}
    for i, row in enumerate(data):
        if not isinstance(row, Mapping):
            raise DogeError(f"domain {domain!r}, row {i}: expected a dict, got a {type(row).__name__}")
        for c in wanted:
            if c not in row:
                raise DogeError(f"domain {domain!r}, row {i}: no field '{c}' (it has: {', '.join(map(str, row))})")
            out[c].append(row[c])
    return out, None


def _class_names(feature: Any) -> list[str] | None:
    """The names of a ClassLabel feature, or of the ClassLabel inside a sequence feature (tags)."""
    for f in (feature, getattr(feature, "feature", None)):
        names = getattr(f, "names", None)
        if isinstance(names, list) and names:
            return [str(x) for x in names]
    return None


def _text(value: Any, where: str, column: str, task: str) -> str:
    if task == "tagging" and isinstance(value, list | tuple):  # pre-split words (e.g. a `tokens` column)
        words = [str(w) for w in value]
        if any(not w or w != w.strip() or len(w.split()) != 1 for w in words):
            raise DogeError(f"{where}: field '{column}' has an empty word or a word with spaces in it")
        return " ".join(words)
    if not isinstance(value, str):
        raise DogeError(f"{where}: field '{column}' is not a string ({type(value).__name__})")
    return value


def _examples(
    data: Any, domain: str, task: str, label_set: LabelSet, text_column: str, text_pair_column: str,
    label_column: str, by_name: bool,
) -> list[Example]:
    wanted = [text_column, *([text_pair_column] if task == "pair" else []), label_column]
    cols, feature = _columns(data, wanted, domain)
    class_names = _class_names(feature) if by_name else None
    out = []
    for i in range(len(cols[label_column])):
        where = f"domain {domain!r}, row {i}"
        text = _text(cols[text_column][i], where, text_column, task)
        pair = _text(cols[text_pair_column][i], where, text_pair_column, task) if task == "pair" else None
        raw = cols[label_column][i]
        if raw is None:
            raise DogeError(f"{where}: field '{label_column}' has no value")
        if task == "tagging":
            if isinstance(raw, str):
                raw = raw.split()
            if not isinstance(raw, list | tuple):
                raise DogeError(f"{where}: field '{label_column}' is not a list of tags ({type(raw).__name__})")
            n_words = len(text.split())
            if len(raw) != n_words:
                raise DogeError(f"{where}: {len(raw)} tags for {n_words} words")
            if n_words == 0:
                raise DogeError(f"{where}: empty sentence")
            if class_names is not None:
                raw = [class_names[t] if isinstance(t, int) and 0 <= t < len(class_names) else t for t in raw]
            label: int | list[int] = [label_set.id(label_str(t, where), where) for t in raw]
        else:
            if class_names is not None and isinstance(raw, int) and 0 <= raw < len(class_names):
                raw = class_names[raw]
            label = label_set.id(label_str(raw, where), where)
        out.append(Example(text, label, domain, pair))
    if not out:
        raise DogeError(f"domain {domain!r}: no examples")
    return out


def _check_max_length(model: nn.Module, max_length: int) -> None:
    """max_length within the model's position embeddings (else the first long example crashes)."""
    from dogetickets.models.resolve import position_limit

    limit = position_limit(model.config)
    if limit is not None and max_length > limit:
        raise DogeError(f"max_length {max_length} is more than the model can take ({limit} positions)")


def encode_domains(
    model: nn.Module,
    tokenizer: Any,
    domains: Mapping[str, Any],
    task: str = "text",
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str = "text_pair",
    labels: Sequence[Any] | None = None,
    max_length: int = 128,
) -> tuple[Task, Encoded]:
    """Each domain's examples, label-mapped to the model's ids and tokenized as a run tokenizes: the task
    and the encoded data that `score_domains` scores."""
    if task not in TASKS:
        raise DogeError(f"task {task!r}: one of {', '.join(TASKS)}")
    if not isinstance(domains, Mapping) or not domains:
        raise DogeError("domains: a dict of domain name -> examples (a datasets.Dataset or a list of dicts), "
                        "at least one")
    head = type(model).__name__
    if not head.endswith(_HEADS[task]):
        raise DogeError(f"a {head} for task {task!r}: expected a model ending in {_HEADS[task]}")
    if task == "tagging" and not getattr(tokenizer, "is_fast", False):
        raise DogeError("task 'tagging' needs a fast tokenizer (word alignment)")
    _check_max_length(model, max_length)
    names = model_labels(model, labels)
    label_set = LabelSet.given(names, "the model's config.id2label")
    by_name = not _generic(names)
    by_domain = {
        str(d): _examples(data, str(d), task, label_set, text_column, text_pair_column, label_column, by_name)
        for d, data in domains.items()
    }
    t = make_task(task, names)
    return t, t.encode(tokenizer, by_domain, max_length)


# ---- the three functions -------------------------------------------------------------------------
def score_domains(
    model: nn.Module,
    tokenizer: Any,
    domains: Mapping[str, Any],
    task: str = "text",
    text_column: str = "text",
    label_column: str = "label",
    labels: Sequence[Any] | None = None,
    max_length: int = 128,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    *,
    text_pair_column: str = "text_pair",
    normalize_heads: bool = True,
    normalize_ffn: bool = True,
    granularity: str = "block",
    show_progress: bool = False,
) -> ModelScores:
    """Per-domain expressive scores of a fine-tuned `model`'s heads and FFN blocks, with each domain
    mean's sampling variance (what doge-nc needs).

    `domains`: domain name -> its examples, a `datasets.Dataset` or a list of dicts with `text_column`
    (and `text_pair_column` for task "pair") and `label_column`; for "tagging" the text is the words
    (a list, or one string split on whitespace) and the label a list of tags, one per word. `labels`:
    see `model_labels`. Scores are taken in eval mode (no dropout), in fp32, on `device` (default: where
    the model is; the model is moved there and back). The model comes back as it came. `granularity`
    "neuron" scores every FFN intermediate neuron too (in the same backward pass), for neuron-level tickets.
    """
    if granularity not in GRANULARITIES:
        raise DogeError(f"granularity {granularity!r}: one of {', '.join(GRANULARITIES)}")
    t, data = encode_domains(model, tokenizer, domains, task, text_column, label_column, text_pair_column,
                             labels, max_length)
    units = Units(model)
    home = next(model.parameters()).device
    target = torch.device(device) if device is not None else home
    pad_id = int(tokenizer.pad_token_id or 0)
    model.to(target)
    try:
        raw = expressive_scores(model, units, t, data, batch_size, pad_id, target, show_progress,
                                granularity=granularity)
    finally:
        model.to(home)
    scores = UnitScores.from_domain_scores(raw, normalize_heads, normalize_ffn)
    return ModelScores(**{f.name: getattr(scores, f.name) for f in fields(scores)}, shape=Shape.of(units))


def _shape(model: nn.Module | Shape | None, scores: UnitScores | None) -> Shape:
    if isinstance(model, Shape):
        return model
    if model is not None:
        return Shape.of(Units(model))
    shape = getattr(scores, "shape", None)
    if isinstance(shape, Shape):
        return shape
    raise DogeError("select_ticket: pass model= (the model, or its dogetickets.tickets.Shape): these scores "
                    "do not carry the model's shape")


def select_ticket(
    scores: UnitScores | None,
    sparsity: float = 0.2,
    method: str = "doge",
    lam: float | None = 100.0,
    allocation: str | None = None,
    model: nn.Module | Shape | None = None,
    *,
    variance: str = "paper",
    seed: int = 0,
    granularity: str | None = None,
) -> Ticket:
    """The ticket of `method` at `sparsity` (the share of the encoder layers' parameters to remove).

    `method`: a ticket method of the registry (`dogetickets.methods`): "doge" (mean over domains - `lam` x
    variance over domains), "doge-nc" (noise-corrected variance), "doge-worst", "winning" (pooled data),
    "random" (needs no scores, drawn from `seed`); a suffix "-global", "-proportional" or "-balanced"
    overrides `allocation`, how the pruned parameters split between heads and FFN blocks (default:
    `dogetickets.methods.DEFAULT_ALLOCATION`, "proportional", as a run's `tickets.allocation`). `variance`: doge's
    between-domain variance, "paper" or "corrected". `model`: the model or its Shape; not needed with the
    scores of `score_domains`, which carry it. `granularity`: prune FFN "block"s or single FFN "neuron"s
    (default: neurons when the scores have neuron scores, else blocks).
    """
    try:
        m = registry.get(method)
    except KeyError as exc:
        raise DogeError(str(exc.args[0])) from None
    if not m.is_ticket:
        raise DogeError(f"method {method!r} is a baseline, not a ticket method (one of "
                        f"{', '.join(registry.ticket_methods())})")
    if not 0.0 <= sparsity < 1.0:
        raise DogeError(f"sparsity {sparsity}: a share of the encoder's parameters, in [0, 1)")
    if variance not in registry.VARIANCES:
        raise DogeError(f"variance {variance!r}: one of {', '.join(registry.VARIANCES)}")
    g = granularity or ("neuron" if scores is not None and scores.has_neurons else "block")
    if g not in GRANULARITIES:
        raise DogeError(f"granularity {g!r}: one of {', '.join(GRANULARITIES)}")
    if g == "neuron" and scores is not None and m.uses_scores and not scores.has_neurons:
        raise DogeError('these scores have no FFN neuron scores: score_domains(..., granularity="neuron")')
    if scores is None and m.uses_scores:
        raise DogeError(f"method {method!r} ranks units by their scores: pass the scores of score_domains")
    shape = _shape(model, scores)
    alloc = m.allocation_for(allocation or registry.DEFAULT_ALLOCATION)
    if alloc not in registry.ALLOCATIONS:
        raise DogeError(f"allocation {alloc!r}: one of {', '.join(registry.ALLOCATIONS)}")
    if m.uses_lambda and scores is not None and lam is None:
        raise DogeError(f"method {method!r} takes a lambda (lam=100 in the paper)")
    if m.uses_lambda and scores is not None and m.variance_for(variance) == "corrected" and not scores.has_sampling_var:
        raise DogeError("the corrected variance needs the scores' sampling variances (score again)")
    return choose(method, sparsity, shape, scores, lam, seed=seed, allocation=alloc, variance=variance,
                  granularity=g)


def prune(model: nn.Module, ticket: Ticket) -> nn.Module:
    """A physically smaller copy of `model` without the ticket's heads and FFN blocks or neurons (`model` is
    untouched). It computes what `model` computes with those units gated to zero, saves with
    `save_pretrained`, and loads back with `dogetickets.load_pruned` or the `transformers` Auto classes
    (after ``import dogetickets``)."""
    from dogetickets.models.export import export_pruned, register_auto_classes

    register_auto_classes()
    return export_pruned(copy.deepcopy(model), ticket)

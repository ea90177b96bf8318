"""Task kinds: single text, sentence pair, token tagging.

A task knows how to encode examples (tokenize once), the per-example loss (the unit every score is
built on), how to turn logits into predictions, and its metric (accuracy or entity-level F1).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike

from dogetickets.data.sources import Example

IGNORE = -100


def _full(logits: torch.Tensor) -> torch.Tensor:
    """Losses in at least float32 (autocast may hand us bf16/fp16 logits)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


@dataclass
class Encoded:
    """Tokenized examples of one split, in the order of `domains`/`index`."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    labels: list[int | np.ndarray]  # tagging: per sub-word, IGNORE except each word's first piece
    domain: np.ndarray  # domain id per example
    index: np.ndarray  # position within its domain (pairs runs for paired statistics)
    domain_names: list[str]
    word_ids: list[np.ndarray] = field(default_factory=list)  # tagging: sub-word -> word (-1 none)
    gold_words: list[list[int]] = field(default_factory=list)  # tagging: every word's gold tag
    truncated_words: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))

    def subset(self, idx: np.ndarray) -> Encoded:
        pick = [int(i) for i in idx]
        return Encoded(
            [self.input_ids[i] for i in pick],
            [self.token_type_ids[i] for i in pick],
            [self.labels[i] for i in pick],
            self.domain[pick],
            self.index[pick],
            self.domain_names,
            [self.word_ids[i] for i in pick] if self.word_ids else [],
            [self.gold_words[i] for i in pick] if self.gold_words else [],
            self.truncated_words,
        )


class Task:
    kind = ""
    metric = ""

    def __init__(self, labels: list[str]) -> None:
        self.labels = labels

    # ---- encoding -----------------------------------------------------------------------------
    def _tokenize(self, tokenizer, examples: list[Example], max_length: int) -> dict:  # noqa: ANN001
        texts = [x.text for x in examples]
        return tokenizer(texts, truncation=True, max_length=max_length)

    def encode(self, tokenizer, by_domain: dict[str, list[Example]], max_length: int) -> Encoded:  # noqa: ANN001
        names = list(by_domain)
        examples = [x for d in names for x in by_domain[d]]
        domain = np.array([i for i, d in enumerate(names) for _ in by_domain[d]], dtype=np.int64)
        index = np.array([j for d in names for j in range(len(by_domain[d]))], dtype=np.int64)
        enc = self._tokenize(tokenizer, examples, max_length)
        ids = [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]
        tt = enc.get("token_type_ids")
        types = [np.asarray(x, dtype=np.int64) for x in tt] if tt is not None else [np.zeros_like(x) for x in ids]
        out = Encoded(ids, types, [x.label for x in examples], domain, index, names)  # type: ignore[misc]
        self._finish(out, enc, examples)
        return out

    def _finish(self, out: Encoded, enc, examples: list[Example]) -> None:  # noqa: ANN001
        pass

    # ---- loss, predictions, metric -------------------------------------------------------------------
    def per_example_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each example, shape (batch,)."""
        return F.cross_entropy(_full(logits), labels, reduction="none")

    def predictions(self, logits: torch.Tensor, batch_index: np.ndarray, data: Encoded) -> list:
        return logits.argmax(-1).tolist()

    def golds(self, data: Encoded, idx: np.ndarray) -> list:
        return [int(data.labels[i]) for i in idx]  # type: ignore[arg-type]

    def score(self, golds: list, preds: list) -> float:
        if not golds:
            return float("nan")
        return float(np.mean(np.asarray(golds) == np.asarray(preds)))

    def readable(self, value: int | list[int]) -> int | list[str]:
        """How a gold/predicted value is written in predictions.jsonl."""
        return value  # type: ignore[return-value]


class TextClassification(Task):
    kind = "text"
    metric = "accuracy"


class PairClassification(Task):
    kind = "pair"
    metric = "accuracy"

    def _tokenize(self, tokenizer, examples: list[Example], max_length: int) -> dict:  # noqa: ANN001
        return tokenizer(
            [x.text for x in examples],
            [x.text_pair or "" for x in examples],
            truncation="longest_first",
            max_length=max_length,
        )


class TokenTagging(Task):
    """BIO tagging: the first sub-word of each whitespace token carries its tag."""

    kind = "tagging"
    metric = "entity_f1"

    def _tokenize(self, tokenizer, examples: list[Example], max_length: int) -> dict:  # noqa: ANN001
        return tokenizer(
            [x.text.split() for x in examples], is_split_into_words=True, truncation=True, max_length=max_length
        )

    def _finish(self, out: Encoded, enc, examples: list[Example]) -> None:  # noqa: ANN001
        labels: list[int | np.ndarray] = []
        word_ids_all: list[np.ndarray] = []
        truncated = 0
        for i, x in enumerate(examples):
            tags = x.label
            assert isinstance(tags, list)
            wids = enc.word_ids(i)
            lab = np.full(len(wids), IGNORE, dtype=np.int64)
            w = np.array([-1 if v is None else v for v in wids], dtype=np.int64)
            prev = None
            seen = 0
            for j, v in enumerate(wids):
                if v is not None and v != prev:
                    lab[j] = tags[v]
                    seen += 1
                prev = v
            truncated += len(tags) - seen
            labels.append(lab)
            word_ids_all.append(w)
        out.labels = labels
        out.word_ids = word_ids_all
        out.gold_words = [list(x.label) for x in examples]  # type: ignore[arg-type]
        out.truncated_words = truncated
        if truncated:
            warnings.warn(
                f"{truncated} tokens cut by max_length: they count as predicted 'O' (missed entities)",
                stacklevel=2,
            )

    def per_example_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over each sentence's labelled sub-words, shape (batch,)."""
        tok = F.cross_entropy(_full(logits).transpose(1, 2), labels, reduction="none", ignore_index=IGNORE)
        n = (labels != IGNORE).sum(1).clamp(min=1)
        return tok.sum(1) / n

    def predictions(self, logits: torch.Tensor, batch_index: np.ndarray, data: Encoded) -> list:
        """Each word's predicted tag (from its first sub-word); words cut by truncation get 'O' (0)."""
        pred = logits.argmax(-1).cpu().numpy()
        out = []
        for row, i in enumerate(batch_index):
            n_words = len(data.gold_words[i])
            words = np.zeros(n_words, dtype=np.int64)
            lab = data.labels[i]
            assert isinstance(lab, np.ndarray)
            first = np.nonzero(lab != IGNORE)[0]
            words[data.word_ids[i][first]] = pred[row, first]
            out.append(words.tolist())
        return out

    def golds(self, data: Encoded, idx: np.ndarray) -> list:
        return [data.gold_words[i] for i in idx]

    def readable(self, value: int | list[int]) -> int | list[str]:
        assert isinstance(value, list)
        return [self.labels[v] for v in value]

    def score(self, golds: list, preds: list) -> float:
        """Micro entity F1, strict IOB2 (seqeval's strict mode), from the summed per-sentence counts of
        :func:`entity_counts` -- the counts the paired bootstrap resamples, so both give the same number."""
        if not golds:
            return float("nan")
        tp = n_pred = n_gold = 0
        for g, p in zip(golds, preds, strict=True):
            a, b, c = entity_counts([self.labels[t] for t in g], [self.labels[t] for t in p])
            tp, n_pred, n_gold = tp + a, n_pred + b, n_gold + c
        return float(entity_f1(tp, n_pred, n_gold))


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """The entities of one tag sequence under strict IOB2, as (type, start, end exclusive).

    The entities seqeval's strict mode (``mode="strict", scheme=IOB2``) counts: an entity starts at a
    B- tag and runs over the I- tags of its type; an I- tag without its B- starts nothing (seqeval's
    default, lenient, mode would count it).
    """
    from seqeval.scheme import IOB2, Tokens

    return {(e.tag, e.start, e.end) for e in Tokens(list(tags), scheme=IOB2).entities}


def entity_counts(gold: Sequence[str], pred: Sequence[str]) -> tuple[int, int, int]:
    """One sentence's (true positives, predicted entities, gold entities), strict IOB2."""
    g, p = entities(gold), entities(pred)
    return len(g & p), len(p), len(g)


def entity_f1(tp: ArrayLike, predicted: ArrayLike, gold: ArrayLike) -> np.ndarray:
    """Micro entity F1 from summed counts: 2 TP / (P + G), 0 where there is no entity at all.

    Elementwise on arrays (the bootstrap's replicates) as on single numbers (the metric).
    """
    den = np.asarray(predicted, dtype=np.float64) + np.asarray(gold, dtype=np.float64)
    num = 2.0 * np.asarray(tp, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(den), where=den > 0)


def make_task(kind: str, labels: list[str]) -> Task:
    return {"text": TextClassification, "pair": PairClassification, "tagging": TokenTagging}[kind](labels)

"""The Python API (dogetickets.score_domains / select_ticket / prune) on a tiny random BERT: the same
numbers as the package's own pieces, Datasets and lists alike, labels mapped by the model's id2label."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from transformers import AutoModelForSequenceClassification, BertForTokenClassification, BertTokenizerFast

import dogetickets
from dogetickets.config import TicketConfig
from dogetickets.data.sources import Example
from dogetickets.data.tasks import make_task
from dogetickets.errors import DogeError
from dogetickets.models.units import Units
from dogetickets.scoring import UnitScores, expressive_scores
from dogetickets.tickets import Shape, random_ticket, select

WORDS = [f"w{i}" for i in range(60)]
NAMES = ["negative", "positive", "neutral"]


@pytest.fixture
def tokenizer(tmp_path: Path) -> BertTokenizerFast:
    """A WordPiece tokenizer over 65 tokens (the tiny model's vocabulary has 100)."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab))

DEFAULT = TicketConfig.model_fields["allocation"].default  # a run's default allocation


def rows(domain: int, n: int = 7, seed: int = 0) -> list[dict]:
    """Reviews of one domain: words mostly from its own part of the vocabulary, ragged lengths."""
    rng = random.Random(f"{seed}:{domain}")
    own = WORDS[domain % 3 * 20 : domain % 3 * 20 + 20]
    return [{"text": " ".join(rng.choice(own if rng.random() < 0.8 else WORDS) for _ in range(rng.randint(3, 14))),
             "label": rng.randrange(3)} for _ in range(n)]


def domains(n: int = 3) -> dict[str, list[dict]]:
    return {f"d{i}": rows(i) for i in range(n)}


def assert_same_scores(a: UnitScores, b: UnitScores) -> None:
    assert a.domains == b.domains
    np.testing.assert_array_equal(a.counts, b.counts)
    for name in ("per_domain_heads", "per_domain_ffn", "pooled_heads", "pooled_ffn", "sampling_var_heads",
                 "sampling_var_ffn"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-10, atol=0, err_msg=name)


def test_score_domains_equals_expressive_scores_on_the_same_encoded_data(tiny_cls, tokenizer):
    data = domains()
    scores = dogetickets.score_domains(tiny_cls, tokenizer, data, task="text", max_length=16, batch_size=4)

    task = make_task("text", ["LABEL_0", "LABEL_1", "LABEL_2"])
    by_domain = {d: [Example(r["text"], r["label"], d) for r in rs] for d, rs in data.items()}
    encoded = task.encode(tokenizer, by_domain, 16)
    raw = expressive_scores(tiny_cls, Units(tiny_cls), task, encoded, 4, 0, "cpu", show_progress=False)
    assert_same_scores(scores, UnitScores.from_domain_scores(raw))
    assert scores.domains == ["d0", "d1", "d2"] and scores.counts.tolist() == [7, 7, 7]
    assert scores.per_domain_heads.shape == (3, 3, 4) and scores.has_sampling_var
    assert scores.shape == Shape.of(Units(tiny_cls))
    # a domain's scores are its own examples' only: the other domains do not change them (but for float32
    # rounding: they share batches, padded to another length)
    other = dogetickets.score_domains(tiny_cls, tokenizer, {"d0": data["d0"], "x": rows(5)}, max_length=16)
    np.testing.assert_allclose(other.per_domain_heads[0], scores.per_domain_heads[0], rtol=1e-5)
    np.testing.assert_allclose(other.per_domain_ffn[0], scores.per_domain_ffn[0], rtol=1e-5)
    assert not tiny_cls.training and all(p.requires_grad for p in tiny_cls.parameters())


def test_dataset_and_list_of_dicts_give_identical_scores(tiny_cls, tokenizer):
    from datasets import Dataset

    data = domains()
    as_lists = dogetickets.score_domains(tiny_cls, tokenizer, data, max_length=16)
    as_datasets = dogetickets.score_domains(tiny_cls, tokenizer, {d: Dataset.from_list(r) for d, r in data.items()},
                                            max_length=16)
    assert_same_scores(as_lists, as_datasets)


def test_labels_follow_the_models_id2label(tiny_cls, tokenizer):
    """Names and ids give the same scores; a ClassLabel column in another order is mapped by name; a label
    the model does not have is one line."""
    from datasets import ClassLabel, Dataset, Features, Value

    model = copy.deepcopy(tiny_cls)
    model.config.id2label = dict(enumerate(NAMES))
    model.config.label2id = {n: i for i, n in enumerate(NAMES)}
    data = domains(2)
    named = {d: [{**r, "label": NAMES[r["label"]]} for r in rs] for d, rs in data.items()}
    by_id = dogetickets.score_domains(model, tokenizer, data, max_length=16)
    by_name = dogetickets.score_domains(model, tokenizer, named, max_length=16)
    assert_same_scores(by_id, by_name)

    order = ["positive", "neutral", "negative"]  # the data set's own ClassLabel order
    features = Features({"text": Value("string"), "label": ClassLabel(names=order)})
    ds = {d: Dataset.from_list([{**r, "label": order.index(r["label"])} for r in rs], features=features)
          for d, rs in named.items()}
    assert_same_scores(by_name, dogetickets.score_domains(model, tokenizer, ds, max_length=16))

    wrong = {"d0": [*named["d0"], {"text": "w1 w2", "label": "mixed"}]}
    with pytest.raises(DogeError) as err:
        dogetickets.score_domains(model, tokenizer, wrong, max_length=16)
    assert "row 7" in str(err.value) and "'mixed'" in str(err.value) and "id2label" in str(err.value)
    assert "\n" not in str(err.value)
    # a model without names takes names only with `labels` (its names in id order)
    with pytest.raises(DogeError, match="not in the label set"):
        dogetickets.score_domains(tiny_cls, tokenizer, named, max_length=16)
    assert_same_scores(by_name, dogetickets.score_domains(tiny_cls, tokenizer, named, labels=NAMES, max_length=16))
    with pytest.raises(DogeError, match="not the model's config.id2label"):
        dogetickets.score_domains(model, tokenizer, named, labels=order, max_length=16)


def test_bad_input_is_one_line(tiny_cls, tokenizer):
    cases = [
        (dict(domains={"d0": [{"txt": "w1", "label": 0}]}), "no field 'text'"),
        (dict(domains={"d0": []}), "no examples"),
        (dict(domains={}), "at least one"),
        (dict(domains=domains(1), task="tagging"), "ForTokenClassification"),
        (dict(domains=domains(1), max_length=100), "64 positions"),
        (dict(domains=domains(1), task="nli"), "one of text, pair, tagging"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(DogeError, match=needle) as err:
            dogetickets.score_domains(tiny_cls, tokenizer, **{"max_length": 16, **kwargs})
        assert "\n" not in str(err.value)


def test_pair_and_tagging_tasks(tokenizer):
    torch.manual_seed(0)
    tagger = BertForTokenClassification(tiny_config(num_labels=3)).eval()
    tagger.config.id2label = {0: "O", 1: "B-X", 2: "I-X"}
    tags = {"a": [{"tokens": ["w1", "w2", "w3"], "tags": ["B-X", "I-X", "O"]},
                  {"tokens": ["w4", "w5"], "tags": ["O", "O"]}],
            "b": [{"tokens": ["w30", "w31"], "tags": ["B-X", "O"]}]}
    s = dogetickets.score_domains(tagger, tokenizer, tags, task="tagging", text_column="tokens", label_column="tags",
                                  max_length=16)
    assert s.counts.tolist() == [2, 1] and np.isfinite(s.per_domain_heads).all()
    joined = {d: [{"tokens": " ".join(r["tokens"]), "tags": r["tags"]} for r in rs] for d, rs in tags.items()}
    assert_same_scores(s, dogetickets.score_domains(tagger, tokenizer, joined, task="tagging", text_column="tokens",
                                                    label_column="tags", max_length=16))
    with pytest.raises(DogeError, match="2 tags for 3 words"):
        bad = {"a": [{"tokens": ["w1", "w2", "w3"], "tags": ["O", "O"]}]}
        dogetickets.score_domains(tagger, tokenizer, bad, task="tagging", text_column="tokens", label_column="tags",
                                  max_length=16)

    torch.manual_seed(0)
    pair_model = AutoModelForSequenceClassification.from_config(tiny_config()).eval()
    pairs = {d: [{"premise": r["text"], "hypothesis": r["text"][::-1].strip(), "label": r["label"]} for r in rs]
             for d, rs in domains(2).items()}
    p = dogetickets.score_domains(pair_model, tokenizer, pairs, task="pair", text_column="premise",
                                  text_pair_column="hypothesis", max_length=32)
    assert p.counts.tolist() == [7, 7]


def test_select_ticket_equals_tickets_select(tiny_cls, tokenizer):
    scores = dogetickets.score_domains(tiny_cls, tokenizer, domains(), max_length=16)
    shape = Shape.of(Units(tiny_cls))
    got = dogetickets.select_ticket(scores, sparsity=0.3, method="doge", lam=100)  # a run's default allocation
    assert got == select(*scores.doge(100.0), shape, 0.3, "doge", lam=100, seed=0, allocation=DEFAULT)
    assert got.sparsity > 0 and got.pruned_params > 0
    cases = [
        (dict(method="winning", allocation="global"),
             select(*scores.winning(), shape, 0.3, "winning", seed=0, allocation="global")),
        (dict(method="doge-worst"), select(*scores.worst(), shape, 0.3, "doge-worst", seed=0, allocation=DEFAULT)),
        (dict(method="doge-nc-proportional", lam=10.0),
         select(*scores.doge(10.0, "corrected"), shape, 0.3, "doge-nc-proportional", lam=10.0, seed=0,
                allocation="proportional")),
        (dict(method="doge", variance="corrected", model=tiny_cls),
         select(*scores.doge(100.0, "corrected"), shape, 0.3, "doge", lam=100.0, seed=0, allocation=DEFAULT)),
        (dict(method="random", seed=3, allocation="balanced"), random_ticket(shape, 0.3, 3, allocation="balanced")),
    ]
    for kwargs, want in cases:
        assert dogetickets.select_ticket(scores, **{"sparsity": 0.3, **kwargs}) == want, kwargs
    assert dogetickets.select_ticket(None, 0.3, "random", model=shape, seed=3, allocation="balanced") == cases[-1][1]

    plain = UnitScores(*[getattr(scores, f) for f in ("domains", "per_domain_heads", "per_domain_ffn",
                                                       "pooled_heads", "pooled_ffn", "counts")])
    assert dogetickets.select_ticket(plain, 0.3, model=tiny_cls) == got
    for kwargs, needle in [(dict(scores=plain), "pass model="), (dict(method="erm"), "baseline"),
                           (dict(method="dodge"), "unknown method"), (dict(sparsity=1.0), r"in \[0, 1\)"),
                           (dict(lam=None), "takes a lambda"), (dict(scores=None), "ranks units by their scores"),
                           (dict(scores=plain, model=tiny_cls, variance="corrected"), "sampling variances")]:
        with pytest.raises(DogeError, match=needle):
            dogetickets.select_ticket(**{"scores": scores, **kwargs})


def test_prune_equals_the_gated_model_and_reloads(tiny_cls, tokenizer, tmp_path):
    scores = dogetickets.score_domains(tiny_cls, tokenizer, domains(), max_length=16)
    ticket = dogetickets.select_ticket(scores, sparsity=0.4, method="doge", lam=100, allocation="global")
    assert ticket.pruned_heads
    ticket_ffn = dogetickets.select_ticket(scores, sparsity=0.4, method="doge", lam=100)  # balanced: FFN blocks too
    assert ticket_ffn.pruned_ffn
    enc = tokenizer([r["text"] for r in rows(0)], padding=True, return_tensors="pt")
    before = {k: v.clone() for k, v in tiny_cls.state_dict().items()}
    n_full = sum(p.numel() for p in tiny_cls.parameters())
    for i, t in enumerate((ticket, ticket_ffn)):
        small = dogetickets.prune(tiny_cls, t)
        assert sum(p.numel() for p in small.parameters()) == n_full - t.pruned_params
        with torch.no_grad(), Units(tiny_cls).gated(*t.masks()):
            want = tiny_cls(**enc).logits
        with torch.no_grad():
            got = small(**enc).logits
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        small.save_pretrained(tmp_path / f"m{i}")
        for loaded in (dogetickets.load_pruned(tmp_path / f"m{i}"),
                       AutoModelForSequenceClassification.from_pretrained(tmp_path / f"m{i}").eval()):
            assert type(loaded).__name__ == "DogeBertForSequenceClassification"
            with torch.no_grad():
                torch.testing.assert_close(loaded(**enc).logits, want, atol=1e-4, rtol=0)
    # the caller's model is untouched
    assert tiny_cls.config.model_type == "bert" and sum(p.numel() for p in tiny_cls.parameters()) == n_full
    for k, v in tiny_cls.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=0, rtol=0)


def test_neuron_level_ticket(tiny_cls, tokenizer, tmp_path):
    """granularity "neuron": scores of every FFN neuron, a ticket of heads and neurons (the default once the
    scores have neurons), pruned to what the gated model computes, reloaded."""
    scores = dogetickets.score_domains(tiny_cls, tokenizer, domains(), max_length=16, granularity="neuron")
    assert scores.has_neurons and scores.per_domain_neurons.shape == (3, 3, 37)
    shape = Shape.of(Units(tiny_cls))
    ticket = dogetickets.select_ticket(scores, sparsity=0.3)
    assert ticket == select(*scores.doge(100.0, granularity="neuron"), shape, 0.3, "doge", lam=100.0, seed=0,
                            allocation=DEFAULT, granularity="neuron")
    assert ticket.pruned_neurons and dogetickets.select_ticket(scores, 0.3, granularity="block").pruned_neurons == {}
    block_scores = dogetickets.score_domains(tiny_cls, tokenizer, domains(), max_length=16)
    with pytest.raises(DogeError, match="no FFN neuron scores"):
        dogetickets.select_ticket(block_scores, 0.3, granularity="neuron")
    enc = tokenizer([r["text"] for r in rows(1)], padding=True, return_tensors="pt")
    small = dogetickets.prune(tiny_cls, ticket)
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in tiny_cls.parameters()) - \
        ticket.pruned_params
    with torch.no_grad(), Units(tiny_cls).gated(*ticket.masks()):
        want = tiny_cls(**enc).logits
    with torch.no_grad():
        torch.testing.assert_close(small(**enc).logits, want, atol=1e-4, rtol=0)
    small.save_pretrained(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(dogetickets.load_pruned(tmp_path / "m")(**enc).logits, want, atol=1e-4, rtol=0)

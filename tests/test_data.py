"""Data: the released layout on the real data, generic sources, encoding and batching."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dogetickets.config import config_from_dict
from dogetickets.data.batching import batch_indices, collate
from dogetickets.data.sources import load_splits
from dogetickets.data.tasks import IGNORE, make_task
from dogetickets.errors import DogeError
from dogetickets.models.resolve import load_tokenizer

AMAZON_A = {
    "train_domains": ["All_Beauty", "Automotive", "Digital_Music", "Gift_Cards"],
    "test_domains": ["Industrial_and_Scientific", "Movies_and_TV", "Software"],
}


def cfg_for(**data):
    return config_from_dict({"data": data})


def test_released_amazon_reader(data_dir):
    splits = load_splits(cfg_for(dir=str(data_dir), **AMAZON_A))
    assert splits.labels == ["negative", "positive", "neutral"]
    assert splits.sizes()["train"] == dict.fromkeys(AMAZON_A["train_domains"], 5400)
    assert splits.sizes()["dev"] == dict.fromkeys(AMAZON_A["train_domains"], 600)
    assert splits.sizes()["test"] == dict.fromkeys(AMAZON_A["test_domains"], 6000)
    labels = [x.label for x in splits.train["All_Beauty"]]
    assert np.bincount(labels).tolist() == [1800, 1800, 1800]


def test_subsampling_is_seeded_and_per_domain(data_dir):
    a = load_splits(cfg_for(dir=str(data_dir), max_train_per_domain=50, max_eval_per_domain=20, **AMAZON_A))
    b = load_splits(cfg_for(dir=str(data_dir), max_train_per_domain=50, max_eval_per_domain=20, **AMAZON_A))
    c = load_splits(cfg_for(dir=str(data_dir), max_train_per_domain=50, max_eval_per_domain=20, seed=1, **AMAZON_A))
    assert a.sizes()["train"] == dict.fromkeys(AMAZON_A["train_domains"], 50)
    assert a.sizes()["test"] == dict.fromkeys(AMAZON_A["test_domains"], 20)
    assert [x.text for x in a.train["Automotive"]] == [x.text for x in b.train["Automotive"]]
    assert [x.text for x in a.train["Automotive"]] != [x.text for x in c.train["Automotive"]]


def test_released_mnli_pairs(data_dir):
    splits = load_splits(cfg_for(
        dir=str(data_dir), dataset="mnli", task="pair", train_split="train_small", max_train_per_domain=10,
        train_domains=["fiction", "travel"], test_domains=["letters"],
    ))
    assert splits.labels == ["contradiction", "entailment", "neutral"]
    x = splits.train["fiction"][0]
    assert x.text and x.text_pair and x.label in (0, 1, 2)


def test_released_ontonotes_tags_and_carved_dev(data_dir):
    splits = load_splits(cfg_for(
        dir=str(data_dir), dataset="ontonote", task="tagging", train_domains=["bc", "nw"], test_domains=["tc"],
        train_split_overrides={"nw": "dev"}, dev_from_train={"nw": 0.1}, max_eval_per_domain=0,
    ))
    assert splits.labels[0] == "O" and len(splits.labels) == 37
    nw_train, nw_dev = splits.train["nw"], splits.dev["nw"]
    assert len(nw_dev) == round(0.1 * 5896) and len(nw_train) + len(nw_dev) == 5896
    from collections import Counter

    lines = (data_dir / "ontonote" / "nw" / "dev.json").read_text().splitlines()
    assert Counter(x.text for x in nw_train + nw_dev) == Counter(json.loads(line)["text"] for line in lines)
    x = splits.train["bc"][0]
    assert len(x.label) == len(x.text.split())


def test_generic_sources(tmp_path):
    rows = [
        {"review": f"text {i}", "stars": ["bad", "good"][i % 2], "shop": ["a", "b", "c"][i % 3],
         "part": "test" if i % 3 == 2 else ("validation" if i % 5 == 0 else "train")}
        for i in range(60)
    ]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import csv

    with (tmp_path / "d.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    common = dict(text_column="review", label_column="stars", domain_column="shop", split_column="part",
                  train_domains=["a", "b"], test_domains=["c"])
    results = []
    for source, path in [("file", "d.jsonl"), ("file", "d.csv"), ("file", "d.parquet"), ("hf", "hf")]:
        s = load_splits(cfg_for(source=source, path=str(tmp_path / path), **common))
        assert s.labels == ["bad", "good"]
        results.append(s.sizes())
    assert all(r == results[0] for r in results)
    assert results[0]["test"] == {"c": 20}
    # without a split column: training domains give a seeded 10% dev, test domains all their rows
    common.pop("split_column")
    s = load_splits(cfg_for(source="file", path=str(jsonl), **common))
    assert s.sizes() == {"train": {"a": 18, "b": 18}, "dev": {"a": 2, "b": 2}, "test": {"c": 20}}


@pytest.mark.parametrize("kind", ["text", "pair", "tagging"])
def test_encoding_and_batching(kind):
    from dogetickets.data.sources import Example

    tok = load_tokenizer("minilm")
    labels = ["O", "B-ORG", "I-ORG"] if kind == "tagging" else ["x", "y"]
    exs = {
        "d0": [Example("Acme Widgets unbelievably rocks !", [1, 2, 0, 0, 0] if kind == "tagging" else 1, "d0",
                       "a second sentence" if kind == "pair" else None)],
        "d1": [Example("short", [0] if kind == "tagging" else 0, "d1", "b" if kind == "pair" else None)],
    }
    task = make_task(kind, labels)
    enc = task.encode(tok, exs, max_length=32)
    assert len(enc) == 2 and enc.domain.tolist() == [0, 1]
    if kind == "pair":
        assert enc.token_type_ids[0].max() == 1  # the second segment
    if kind == "tagging":
        lab = enc.labels[0]
        # [CLS] acme widgets un ##believ ##ably rocks ! [SEP]: one label per word, on its first piece
        assert (lab != IGNORE).sum() == 5
        words = enc.word_ids[0][lab != IGNORE]
        assert words.tolist() == [0, 1, 2, 3, 4]
        assert lab[lab != IGNORE].tolist() == [1, 2, 0, 0, 0]
    batch = collate(enc, np.array([0, 1]), pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape[1] == max(len(x) for x in enc.input_ids)
    assert batch["attention_mask"][1].sum() == len(enc.input_ids[1])


def test_truncated_words_count_as_missed():
    from dogetickets.data.sources import Example

    tok = load_tokenizer("minilm")
    task = make_task("tagging", ["O", "B-PER", "I-PER"])
    words = " ".join(["word"] * 20 + ["Alice", "Smith"])
    tags = [0] * 20 + [1, 2]
    with pytest.warns(UserWarning, match="8 tokens cut"):
        enc = task.encode(tok, {"d": [Example(words, tags, "d")]}, max_length=16)
    assert enc.truncated_words == 8
    import torch

    logits = torch.zeros(1, 16, 3)
    logits[..., 1] = 1.0  # predict B-PER everywhere that survives
    pred = task.predictions(logits, np.array([0]), enc)[0]
    assert len(pred) == 22 and pred[-2:] == [0, 0]  # cut words: predicted O, the entity is missed
    assert task.score([tags], [pred]) == 0.0


def test_entity_f1_by_hand():
    task = make_task("tagging", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    gold = [[1, 2, 0, 3], [0, 3, 4]]  # entities: PER(0-1), LOC(3) | LOC(1-2)
    pred = [[1, 2, 0, 0], [0, 3, 0]]  # PER(0-1) right; LOC(3) missed; LOC(1) wrong span
    # precision 1/2, recall 1/3 -> F1 = 2 * (1/2 * 1/3) / (1/2 + 1/3) = 0.4
    assert task.score(gold, pred) == pytest.approx(0.4)
    # strict IOB2: an I- tag without its B- is not an entity
    assert task.score([[1, 2]], [[2, 2]]) == 0.0


def test_length_bucketed_batches_cover_everything_once():
    lengths = np.random.default_rng(0).integers(5, 128, 1000)
    for shuffle in (True, False):
        bs = batch_indices(lengths, 16, shuffle=shuffle, seed=3)
        allidx = np.concatenate(bs)
        assert sorted(allidx.tolist()) == list(range(1000))
    bucketed = batch_indices(lengths, 16, shuffle=True, seed=3)
    plain = batch_indices(lengths, 16, shuffle=True, seed=3, bucket=False)
    def padded(bs):
        return sum(len(b) * lengths[b].max() for b in bs)
    assert padded(bucketed) < 0.7 * padded(plain)
    assert [b.tolist() for b in bucketed] == [b.tolist() for b in batch_indices(lengths, 16, True, seed=3)]


def test_label_outside_the_set(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "x", "label": "maybe", "domain": "a"}) + "\n")
    with pytest.raises(DogeError, match=r"d.jsonl:1: label 'maybe' is not in the label set"):
        load_splits(cfg_for(source="file", path=str(tmp_path / "d.jsonl"), labels=["no", "yes"],
                            train_domains=["a"], test_domains=["a"]))


def test_pair_truncation_is_longest_first():
    from dogetickets.data.sources import Example

    tok = load_tokenizer("minilm")
    task = make_task("pair", ["a", "b"])
    long = " ".join(["premise"] * 40)
    enc = task.encode(tok, {"d": [Example(long, 0, "d", "short hypothesis here")]}, max_length=16)
    ids = enc.input_ids[0].tolist()
    assert len(ids) == 16
    second = [t for t, s in zip(ids, enc.token_type_ids[0].tolist(), strict=True) if s == 1]
    # the hypothesis survives whole (3 words + [SEP]); the premise took the cut
    assert tok.decode(second[:-1]) == "short hypothesis here"
    assert ids.count(tok.sep_token_id) == 2

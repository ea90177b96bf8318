"""Data: the released layout on the real data, generic sources, encoding and batching."""

from __future__ import annotations

import json
import math

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


def test_a_domains_sample_does_not_depend_on_the_other_domains(data_dir):
    """Adding a test domain (or a training domain) leaves every other domain's examples as they were."""
    sub = {"dir": str(data_dir), "max_train_per_domain": 30, "max_eval_per_domain": 20}
    a = load_splits(cfg_for(**sub, train_domains=["Automotive", "Gift_Cards"], test_domains=["Software"]))
    b = load_splits(cfg_for(**sub, train_domains=["All_Beauty", "Automotive", "Gift_Cards"],
                            test_domains=["Movies_and_TV", "Software"]))
    for split in ("train", "dev"):
        for dom in ("Automotive", "Gift_Cards"):
            assert [x.text for x in getattr(a, split)[dom]] == [x.text for x in getattr(b, split)[dom]]
    assert [x.text for x in a.test["Software"]] == [x.text for x in b.test["Software"]]


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
    rows = [{"text": "x", "label": "maybe", "domain": "a"}, {"text": "y", "label": "no", "domain": "b"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DogeError, match=r"d.jsonl:1: label 'maybe' is not in the label set"):
        load_splits(cfg_for(source="file", path=str(tmp_path / "d.jsonl"), labels=["no", "yes"],
                            train_domains=["a"], test_domains=["b"]))


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


# ---- labels: one type, stray values refused, fixed lists --------------------------------------


def refused(pattern: str, cfg, **kw) -> str:
    """load_splits fails with a one-line DogeError matching `pattern`."""
    with pytest.raises(DogeError, match=pattern) as info:
        load_splits(cfg, **kw)
    assert "\n" not in str(info.value)
    return str(info.value)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def file_cfg(path, **data):
    return cfg_for(source="file", path=str(path), train_domains=["a"], test_domains=["b"], **data)


def labelled(values, n=300):
    """n rows per domain (a, b) cycling through `values` as labels."""
    return [{"text": f"text {i}", "label": values[i % len(values)], "domain": dom}
            for dom in ("a", "b") for i in range(n)]


@pytest.mark.parametrize(("pairs", "expected"), [
    ([(2, "2"), ("2", "2"), (2.0, "2"), ("02", "2"), (1, "1"), ("1", "1"), (True, "1"), (1.0, "1")], ["1", "2"]),
    ([(10, "10"), (2, "2"), (1, "1")], ["1", "2", "10"]),
    ([("10", "10"), ("9.50", "9.5"), (9.5, "9.5"), (2, "2")], ["2", "9.5", "10"]),
    ([(False, "0"), (True, "1")], ["0", "1"]),
    ([("pos", "pos"), ("neg", "neg")], ["neg", "pos"]),
])
def test_label_values_have_one_type(tmp_path, pairs, expected):
    values = [v for v, _ in pairs]
    s = load_splits(file_cfg(write_jsonl(tmp_path / "d.jsonl", labelled(values, 40))))
    assert s.labels == expected
    names = [s.labels[x.label] for x in s.test["b"]]
    assert names == [pairs[i % len(pairs)][1] for i in range(40)]


@pytest.mark.parametrize(("bad", "pattern"), [
    ([1, 2], r"d.jsonl:3: label is a list, not a name or a number \(a list of tags is for data.task = 'tagging'\)"),
    ({"x": 1}, r"d.jsonl:3: label is a dict"),
    (float("nan"), r"d.jsonl:3: label is NaN \(a missing value\)"),
    (float("inf"), r"d.jsonl:3: label inf is not a name or a finite number"),
    ("", r"d.jsonl:3: empty label"),
    ("  ", r"d.jsonl:3: empty label"),
    (None, r"d.jsonl:3: field 'label' has no value"),
])
def test_bad_label_values(tmp_path, bad, pattern):
    rows = labelled(["pos", "neg"], 10)
    rows[2]["label"] = bad
    refused(pattern, file_cfg(write_jsonl(tmp_path / "d.jsonl", rows)))


@pytest.mark.parametrize(("stray", "pattern"), [
    ("Pos", r"d.jsonl:124: label 'Pos' \(1x\) differs from 'pos' \(300x\) only in case or surrounding spaces"),
    ("pos ", r"d.jsonl:124: label 'pos ' \(1x\) differs from 'pos' \(300x\) only in case or surrounding spaces"),
    ("neutral", r"d.jsonl:124: label 'neutral' occurs only 1 time\(s\) in 600 examples"),
    (7, r"d.jsonl:124: label '7' occurs only 1 time\(s\) in 600 examples"),
])
def test_stray_labels_refused_when_inferred(tmp_path, stray, pattern):
    rows = labelled(["pos", "neg"])
    rows[123]["label"] = stray  # "neg" otherwise
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert refused(pattern, file_cfg(path)).endswith("fix the data or set data.labels explicitly")
    if stray == "neutral":  # a label named in data.labels is wanted, however rare
        assert load_splits(file_cfg(path, labels=["neg", "pos", "neutral"])).labels == ["neg", "pos", "neutral"]
    else:
        refused(rf"d.jsonl:124: label '{stray}' is not in the label set", file_cfg(path, labels=["neg", "pos"]))


def test_rare_labels_in_tiny_data_are_fine(tmp_path):
    rows = labelled(["pos", "neg"], 20)
    rows[3]["label"] = "neutral"
    assert load_splits(file_cfg(write_jsonl(tmp_path / "d.jsonl", rows))).labels == ["neg", "neutral", "pos"]


def test_tagging_case_variants_refused_rare_types_kept(tmp_path):
    rows = [{"text": "Alice met Bob", "label": ["B-PER", "O", "B-PER"], "domain": dom}
            for dom in ("a", "b") for _ in range(300)]
    rows[7]["label"] = ["B-PER", "O", "B-LOC"]  # one location in 600 sentences: rare entity types are normal
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert load_splits(file_cfg(path, task="tagging")).labels == ["O", "B-LOC", "B-PER"]
    rows[9]["label"] = ["b-per", "O", "O"]
    write_jsonl(path, rows)
    refused(r"d.jsonl:10: label 'b-per' \(1x\) differs from 'B-PER' \(\d+x\) only in case",
            file_cfg(path, task="tagging"))


def test_released_ontonotes_has_one_fixed_tag_set(data_dir):
    from dogetickets.data.sources import ONTONOTES_TYPES, RELEASED_LABELS

    tags = RELEASED_LABELS["ontonote"]
    assert len(ONTONOTES_TYPES) == 18 and len(tags) == 37 == len(set(tags))
    assert tags == ["O", *sorted(set(tags) - {"O"}, key=lambda t: (t[2:], t[:2]))]  # the inferred order
    seen: set[str] = set()
    for path in sorted((data_dir / "ontonote").glob("*/*.json")):
        for line in path.read_text(encoding="utf-8").splitlines():
            seen.update(json.loads(line)["label"])
    assert seen == set(tags)
    # pt has no entities at all and wb lacks some types: the label ids are still the full set
    a = load_splits(cfg_for(dir=str(data_dir), dataset="ontonote", task="tagging",
                            train_domains=["pt"], test_domains=["wb"]))
    assert a.labels == tags


def test_labels_from_the_run_come_first(data_dir, tmp_path):
    amazon = ["negative", "positive", "neutral"]
    s = load_splits(cfg_for(dir=str(data_dir), max_train_per_domain=5, max_eval_per_domain=5, **AMAZON_A),
                    labels=amazon)
    assert s.labels == amazon and {x.label for x in s.test["Software"]} <= {0, 1, 2}
    # a tag the run's list lacks (a new test domain) names the file, line and tag
    msg = refused(r"ontonote/wb/test\.json:\d+: label '[BI]-\w+' is not in the label set of this run",
                  cfg_for(dir=str(data_dir), dataset="ontonote", task="tagging", train_domains=["pt"],
                          test_domains=["wb"]), labels=["O"])
    assert "(O)" in msg
    # the argument beats data.labels; numeric names are names, not ids
    path = write_jsonl(tmp_path / "d.jsonl", labelled(["x", "y"], 4))
    s = load_splits(file_cfg(path, labels=["x", "y"]), labels=["y", "x"])
    assert s.labels == ["y", "x"] and [x.label for x in s.test["b"]] == [1, 0, 1, 0]
    path = write_jsonl(tmp_path / "d.jsonl", labelled([1, 2, 3], 3))
    s = load_splits(file_cfg(path, labels=["1", "2", "3"]))
    assert [x.label for x in s.test["b"]] == [0, 1, 2]
    refused(r"this run \(saved in its directory\): the label list is empty", file_cfg(path), labels=[])


# ---- file errors: one line, naming the physical line ------------------------------------------

CSV_HEAD = b"text,label,domain\n"


def _parquet(rows):
    def write(path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({"text": pa.array([], pa.string())}), path)
    return write


@pytest.mark.parametrize(("name", "content", "pattern"), [
    ("d.jsonl", b'{"text": "a", "label": "pos", "domain": "a"}\n\n{"text": "caf\xe9", "label": "pos"}\n',
     r"d.jsonl:3: not valid UTF-8 \(byte 0xe9\)"),
    ("d.json", b'{"text": "a", "label": "pos", "domain": "a"}\n\xff\n', r"d.json:2: not valid UTF-8 \(byte 0xff\)"),
    ("d.csv", CSV_HEAD + b'"multi\nline",pos,a\ncaf\xe9,pos,b\n', r"d.csv:4: not valid UTF-8"),
    ("d.tsv", b"text\tlabel\tdomain\nok\tpos\ta\ncaf\xe9\tpos\tb\n", r"d.tsv:3: not valid UTF-8"),
    ("d.parquet", b"PAR1 this is not parquet", r"d.parquet: not a readable Parquet file \("),
    ("d.csv", CSV_HEAD + b'"two\nlines",pos,a\none,maybe,b\n', r"d.csv:4: label 'maybe' is not in the label set"),
    ("d.csv", CSV_HEAD + b'"two\r\nlines",pos,a\r\n\r\none,pos,b,extra\r\n',
     r"d.csv:5: 4 fields where the header has 3 \(check the quoting\)"),
    ("d.csv", CSV_HEAD + b"ok,pos,a\nshort,b\n", r"d.csv:3: 2 fields where the header has 3"),
    ("d.csv", b"text,label,label\nok,pos,a\n", r"d.csv:1: column 'label' appears twice in the header"),
    ("d.csv", CSV_HEAD + b"ok,pos,a\nblank,,b\n", r"d.csv:3: empty label"),
    ("d.jsonl", b"", r"d.jsonl: no data rows \(empty file\)"),
    ("d.jsonl", b"\n  \n", r"d.jsonl: no data rows \(empty file\)"),
    ("d.csv", CSV_HEAD, r"d.csv: no data rows \(empty file\)"),
    ("d.parquet", _parquet([]), r"d.parquet: no data rows \(empty file\)"),
    ("d.json", b'[{"text": "a", "label": "pos", "domain": "a"}]\n',
     r"d.json:1: expected one JSON object per line, got a list"),
    ("d.jsonl", b'{"text": 5, "label": "pos", "domain": "a"}\n', r"d.jsonl:1: field 'text' is not a string \(int\)$"),
    ("d.parquet", _parquet([{"text": "a", "label": "pos", "domain": "a"}, {"text": "b", "label": None, "domain": "b"}]),
     r"d.parquet:row 1: field 'label' has no value"),
    ("d.parquet", _parquet([{"text": "a", "label": 1.0, "domain": "a"},
                            {"text": "b", "label": math.nan, "domain": "b"}]),
     r"d.parquet:row 1: label is NaN"),
])
def test_file_errors_are_one_line(tmp_path, name, content, pattern):
    path = tmp_path / name
    content(path) if callable(content) else path.write_bytes(content)
    refused(pattern, file_cfg(path, labels=["pos", "neg"]))


def test_tagging_text_must_be_a_string(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": ["EU", "rejects"], "label": ["B-ORG", "O"], "domain": "a"}])
    refused(r"d.jsonl:1: field 'text' is not a string \(list\) \(join the tokens with single spaces\)",
            file_cfg(path, task="tagging"))


def test_bom_and_crlf_files_load(tmp_path):
    (tmp_path / "d.csv").write_bytes(b"\xef\xbb\xbftext,label,domain\r\nz,neg,b\r\n" + b'"x, y",pos,a\r\n' * 3)
    (tmp_path / "d.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "z", "label": "neg", "domain": "b"}\r\n'
                                       + b'{"text": "x, y", "label": "pos", "domain": "a"}\r\n' * 3)
    for name in ("d.csv", "d.jsonl"):
        s = load_splits(file_cfg(tmp_path / name))
        assert s.labels == ["neg", "pos"] and s.test["b"][0].text == "z" and s.train["a"][0].text == "x, y"


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv", "d.parquet"])
def test_unreadable_file_or_directory(tmp_path, monkeypatch, name):
    path = tmp_path / name
    path.write_bytes(b"x")
    cfg = file_cfg(path)

    def denied(*_args, **_kw):
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as m:  # tests may run as root, where chmod does not stop reading
        m.setattr("pathlib.Path.read_bytes", denied)
        m.setattr("pathlib.Path.open", denied)
        refused(rf"{name}: cannot read \(Permission denied\)", cfg)
    (tmp_path / "dir.jsonl").mkdir()
    refused(r"dir.jsonl: is a directory; data.path names one", file_cfg(tmp_path / "dir.jsonl"))


def test_released_layout_file_errors(tmp_path):
    for dom, split in (("a", "train"), ("a", "dev"), ("b", "test")):
        (tmp_path / "amazon" / dom).mkdir(parents=True, exist_ok=True)
        write_jsonl(tmp_path / "amazon" / dom / f"{split}.json", [{"text": "t", "label": i % 3} for i in range(6)])
    cfg = cfg_for(dir=str(tmp_path), train_domains=["a"], test_domains=["b"])
    assert load_splits(cfg).sizes()["test"] == {"b": 6}
    with (tmp_path / "amazon" / "a" / "train.json").open("ab") as f:
        f.write(b'{"text": "\xff", "label": 0}\n')
    refused(r"amazon/a/train\.json:7: not valid UTF-8", cfg)
    (tmp_path / "amazon" / "a" / "train.json").unlink()
    (tmp_path / "amazon" / "a" / "train.json").mkdir()
    refused(r"amazon/a/train\.json: is a directory, not a data file \(domain 'a', split 'train'\)", cfg)

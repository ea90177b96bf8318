"""Shared fixtures: tiny random BERTs for mechanics, the real data directory for data-backed tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (`-n 2`, the default in pyproject.toml) each worker gets its share of the cores, for its
# own torch and for the `doge` processes its tests start: two workers of 2 threads on 2 cores would fight.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(_THREADS)


def _data_dir() -> Path | None:
    raw = os.environ.get("DOGE_DATA_DIR")
    if raw:
        path = Path(raw)
        if not path.is_absolute():
            path = (REPO / path).resolve()
        return path
    guess = REPO.parent / "shared" / "data" / "dogetickets"
    return guess if guess.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The released data. In CI (DOGE_DATA_DIR set) a missing directory fails instead of skipping."""
    path = _data_dir()
    if path is None or not path.is_dir():
        if os.environ.get("DOGE_DATA_DIR") or os.environ.get("CI"):
            pytest.fail(f"DOGE_DATA_DIR={os.environ.get('DOGE_DATA_DIR')} is not a directory")
        pytest.skip("no data directory (set DOGE_DATA_DIR)")
    return path


def tiny_config(**kw) -> BertConfig:
    base = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    base.update(kw)
    return BertConfig(**base)


@pytest.fixture
def tiny_cls() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_config()).eval()


@pytest.fixture
def tiny_tag() -> BertForTokenClassification:
    torch.manual_seed(0)
    return BertForTokenClassification(tiny_config(num_labels=5)).eval()


def random_batch(B: int = 4, T: int = 9, vocab: int = 100, labels: int = 3, tagging: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for b in range(B):  # ragged lengths: padding must not leak between examples
        n = T - b
        mask[b, n:] = 0
        ids[b, n:] = 0
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, T // 2 :] = 1
    if tagging:
        y = torch.randint(0, labels, (B, T), generator=g)
        y[mask == 0] = -100
        y[:, 0] = -100
    else:
        y = torch.randint(0, labels, (B,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": y,
            "domain": torch.arange(B) % 2}


def tiny_run_toml(out: Path, data_dir: Path, *, seeds: str = "[0]", max_length: int = 32,
                  methods: str = '["doge"]', sparsities: str = "[0.2]") -> str:
    """A run config on 6 reviews per domain of two Amazon domains: seconds per training. fp32, whatever the
    CPU ("auto" would be bf16 on some machines and fp32 on others: the same test must see the same numbers)."""
    return f"""
[run]
out = "{out}"
seeds = {seeds}
[data]
dir = "{data_dir}"
train_domains = ["All_Beauty", "Gift_Cards"]
test_domains = ["Software"]
max_train_per_domain = 6
max_eval_per_domain = 6
[model]
max_length = {max_length}
[train]
epochs = 1
batch_size = 6
mixed_precision = "no"
[tickets]
methods = {methods}
sparsities = {sparsities}
"""

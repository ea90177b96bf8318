"""Config: every value checked with its range, as one line naming the file and the dotted key."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dogetickets.config import TrainConfig, config_from_dict, load_config
from dogetickets.errors import DogeError

ROOT = Path(__file__).resolve().parents[1]

BASE = """
[run]
out = "runs/c"
seeds = [0, 1]

[data]
train_domains = ["All_Beauty", "Automotive"]
test_domains = ["Software"]
"""

MINIMAL = {"data": {"train_domains": ["All_Beauty", "Automotive"], "test_domains": ["Software"]}}

NAN, INF = float("nan"), float("inf")

# (overrides, the dotted key the message must name, a fragment it must show)
BAD = [
    # ticket lists: finite, in range, distinct
    ({"tickets.lambdas": [NAN]}, "tickets.lambdas", "nan"),
    ({"tickets.lambdas": [INF]}, "tickets.lambdas", "inf"),
    ({"tickets.lambdas": [10.0, -1.0]}, "tickets.lambdas", "-1.0"),
    ({"tickets.sparsities": [1.0]}, "tickets.sparsities", "1.0"),
    ({"tickets.sparsities": [-0.1]}, "tickets.sparsities", "-0.1"),
    ({"tickets.sparsities": [NAN]}, "tickets.sparsities", "nan"),
    # training ranges
    ({"train.warmup_ratio": 5.0}, "train.warmup_ratio", "5.0"),
    ({"train.warmup_ratio": -0.1}, "train.warmup_ratio", "-0.1"),
    ({"train.weight_decay": -0.01}, "train.weight_decay", "-0.01"),
    ({"train.patience": -1}, "train.patience", "-1"),
    ({"train.lr": 0}, "train.lr", "0"),
    ({"train.lr": -1e-5}, "train.lr", "-1e-05"),
    ({"train.lr": NAN}, "train.lr", "nan"),
    ({"train.epochs": -1}, "train.epochs", "-1"),
    ({"train.epochs": INF}, "train.epochs", "inf"),
    ({"train.max_steps": -1}, "train.max_steps", "-1"),
    ({"train.eval_every": -1}, "train.eval_every", "-1"),
    ({"train.max_grad_norm": -1.0}, "train.max_grad_norm", "-1.0"),
    ({"train.batch_size": 0}, "train.batch_size", "0"),
    ({"train.eval_batch_size": -8}, "train.eval_batch_size", "-8"),
    ({"tickets.score_batch_size": 0}, "tickets.score_batch_size", "0"),
    ({"train.epochs": 0, "train.max_steps": 0}, "train.epochs", "max_steps"),
    ({"irm.penalty_weight": -1.0}, "irm.penalty_weight", "-1.0"),
    ({"irm.anneal_steps": -1}, "irm.anneal_steps", "-1"),
    ({"model.max_length": 0}, "model.max_length", "0"),
    # subsample sizes
    ({"data.max_train_per_domain": -1}, "data.max_train_per_domain", "-1"),
    ({"data.max_eval_per_domain": -5}, "data.max_eval_per_domain", "-5"),
    ({"tickets.max_score_per_domain": -1}, "tickets.max_score_per_domain", "-1"),
    # duplicates
    ({"run.seeds": [0, 1, 0]}, "run.seeds", "0"),
    ({"tickets.sparsities": [0.1, 0.3, 0.1]}, "tickets.sparsities", "0.1"),
    ({"tickets.lambdas": [1, 1.0]}, "tickets.lambdas", "1.0"),
    ({"tickets.methods": ["doge", "winning", "doge"]}, "tickets.methods", "doge"),
    ({"run.baselines": ["erm", "erm"]}, "run.baselines", "erm"),
    ({"data.train_domains": ["All_Beauty", "All_Beauty"]}, "data.train_domains", "All_Beauty"),
    ({"data.test_domains": ["Software", "Software"]}, "data.test_domains", "Software"),
    ({"data.labels": ["neg", "pos", "neg"]}, "data.labels", "neg"),
    # a training domain cannot be an unseen test domain
    ({"data.test_domains": ["Software", "Automotive"]}, "data.test_domains", "Automotive"),
    # per-domain tables name training domains, shares in (0, 1)
    ({"data.dev_from_train.Software": 0.1}, "data.dev_from_train.Software", "not a training domain"),
    ({"data.dev_from_train.All_Beauty": 1.0}, "data.dev_from_train.All_Beauty", "1.0"),
    ({"data.dev_from_train.All_Beauty": 0.0}, "data.dev_from_train.All_Beauty", "0.0"),
    ({"data.dev_from_train.All_Beauty": NAN}, "data.dev_from_train.All_Beauty", "nan"),
    ({"data.train_split_overrides.Software": "dev"}, "data.train_split_overrides.Software", "not a training domain"),
    # required lists, seeds
    ({"data.train_domains": []}, "data.train_domains", "empty"),
    ({"data.test_domains": []}, "data.test_domains", "empty"),
    ({"run.seeds": []}, "run.seeds", "empty"),
    ({"run.seeds": [0, -1]}, "run.seeds", "-1"),
    # choices and the keys some choices require
    ({"data.task": "ner"}, "data.task", "'ner'"),
    ({"data.source": "s3"}, "data.source", "'s3'"),
    ({"train.mixed_precision": "fp8"}, "train.mixed_precision", "'fp8'"),
    ({"train.objective": "dro"}, "train.objective", "'dro'"),
    ({"tickets.methods": ["lottery"]}, "tickets.methods", "'lottery'"),
    ({"run.baselines": ["dro"]}, "run.baselines", "'dro'"),
    ({"data.source": "file"}, "data.path", "file"),
    ({"data.source": "hf"}, "data.path", "hf"),
    ({"data.task": "pair", "data.source": "file", "data.path": "x.jsonl"}, "data.text_pair_column", "pair"),
    # types: ints for floats are fine, the rest is not
    ({"train.lr": "1e-4"}, "train.lr", "'1e-4'"),
    ({"train.lr": True}, "train.lr", "true"),
    ({"train.batch_size": 16.0}, "train.batch_size", "16.0"),
    ({"train.batch_size": False}, "train.batch_size", "false"),
    ({"run.seeds": [0, 1.5]}, "run.seeds", "1.5"),
    ({"train.bucket": 1}, "train.bucket", "1"),
    ({"data.train_domains": "All_Beauty"}, "data.train_domains", "'All_Beauty'"),
    ({"model.name": 3}, "model.name", "3"),
    ({"train": 3}, "train", "3"),
    # unknown keys and sections
    ({"train.bogus": 1}, "train.bogus", "unknown config key"),
    ({"bogus.x": 1}, "bogus", "unknown config key"),
    # --set below a value that is not a table
    ({"run.out.x": 1}, "run.out", "run.out.x"),
    ({"run.seeds.x": 1}, "run.seeds", "run.seeds.x"),
    ({"model.name.x": 1}, "model.name", "expected a string"),  # model.name is not in the file: a new table
    ({"data.train_domains.x": 1}, "data.train_domains", "data.train_domains.x"),
]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(BASE, encoding="utf-8")
    return path


def test_base_is_valid(base: Path) -> None:
    cfg = load_config(base)
    assert cfg.run.seeds == [0, 1]
    assert cfg.data.test_domains == ["Software"]


@pytest.mark.parametrize(("overrides", "key", "shows"), BAD, ids=lambda v: repr(v) if isinstance(v, dict) else "")
def test_bad_value_is_one_line_naming_file_and_key(base: Path, overrides: dict, key: str, shows: str) -> None:
    with pytest.raises(DogeError) as info:
        load_config(base, overrides)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1, msg
    assert msg.startswith(f"{base}: "), msg
    assert f"'{key}'" in msg, msg
    assert shows in msg, msg


def test_bad_value_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(BASE + "\n[tickets]\nlambdas = [nan]\n", encoding="utf-8")
    with pytest.raises(DogeError, match=r"c\.toml: config key 'tickets\.lambdas': nan is not a finite number$"):
        load_config(path)


def test_messages_stay_one_line_for_odd_keys() -> None:
    with pytest.raises(DogeError) as info:
        config_from_dict({**MINIMAL, "train": {"a\nb": 1}})
    assert str(info.value) == "unknown config key 'train.a\\nb'"


def test_ints_become_floats_where_floats_are_expected(base: Path) -> None:
    cfg = load_config(base, {"train.lr": 1, "train.epochs": 2, "tickets.lambdas": [0, 10], "tickets.sparsities": [0]})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert isinstance(cfg.train.epochs, float)
    assert all(isinstance(x, float) for x in cfg.tickets.lambdas + cfg.tickets.sparsities)


def test_defaults_and_plain_dict() -> None:
    d = config_from_dict(MINIMAL).to_dict()
    assert d == {
        "run": {"out": "runs/doge", "seeds": [0], "baselines": ["erm"], "save_models": True, "log_with": []},
        "model": {"name": "minilm", "max_length": 128},
        "data": {
            "task": "text", "source": "released", "dataset": "amazon", "dir": "", "path": "",
            "train_domains": ["All_Beauty", "Automotive"], "test_domains": ["Software"],
            "train_split": "train", "dev_split": "dev", "test_split": "test",
            "train_split_overrides": {}, "dev_from_train": {},
            "max_train_per_domain": 0, "max_eval_per_domain": 0, "seed": 0,
            "text_column": "text", "text_pair_column": "", "label_column": "label",
            "domain_column": "domain", "split_column": "", "labels": [], "notes": [],
        },
        "train": {
            "batch_size": 16, "eval_batch_size": 64, "lr": 5e-5, "epochs": 10.0, "max_steps": 0,
            "warmup_ratio": 0.1, "weight_decay": 0.01, "max_grad_norm": 1.0, "eval_every": 0, "patience": 3,
            "mixed_precision": "auto", "log_every": 10, "bucket": True, "objective": "erm", "physical": True,
        },
        "irm": {"penalty_weight": 100.0, "anneal_steps": 100, "penalty_weights": [], "choice_seed": 0},
        "tickets": {
            "methods": ["random", "winning", "doge"], "sparsities": [0.1, 0.3], "lambdas": [100.0],
            "normalize_heads": True, "normalize_ffn": True, "allocation": "proportional", "lambda_choice": "rewind",
            "variance": "paper", "granularity": "block",
            "max_score_per_domain": 0, "score_batch_size": 16,
        },
    }
    json.dumps(d)  # plain values only


def test_sections_stay_mutable() -> None:
    cfg = config_from_dict(MINIMAL)
    cfg.data.dev_from_train["All_Beauty"] = 0.1
    cfg.train.bucket = False
    assert cfg.to_dict()["data"]["dev_from_train"] == {"All_Beauty": 0.1}
    assert cfg.to_dict()["train"]["bucket"] is False


def test_sections_build_from_keywords() -> None:
    cfg = TrainConfig(batch_size=4, lr=1e-2, max_steps=6, patience=0)
    assert (cfg.batch_size, cfg.epochs, cfg.warmup_ratio) == (4, 10.0, 0.1)


def test_to_toml_round_trips_any_string() -> None:
    odd = ["bell \x01 here", "tab\there", 'quote " and \\ backslash', "new\nline", "unicode é ✓", "del \x7f"]
    cfg = config_from_dict({
        "run": {"out": 'C:\\runs\\"odd"\tdir', "seeds": [3, 1]},
        "data": {
            "train_domains": ["Cell Phones", "a.b", 'q"d'], "test_domains": ["x\x02y"],
            "dev_from_train": {"Cell Phones": 0.2, "a.b": 0.25}, "train_split_overrides": {'q"d': "dev"},
            "notes": odd, "labels": odd,
        },
        "train": {"lr": 3, "epochs": 0.5},
    })
    text = cfg.to_toml()
    back = config_from_dict(tomllib.loads(text))
    assert back == cfg
    assert back.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("configs/**/*.toml")))
def test_shipped_configs_load(path: str) -> None:
    cfg = load_config(ROOT / path)
    assert config_from_dict(tomllib.loads(cfg.to_toml())) == cfg
    assert all(not math.isnan(x) for x in cfg.tickets.lambdas)


def test_cli_bad_set_is_exit_code_2(base: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "dogetickets.cli", "run", str(base), "--set", "run.out.x=1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "'run.out'" in err and "c.toml" in err, err

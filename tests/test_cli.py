"""The `doge` command: one-line errors with exit code 2, and the protocol end to end on real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_run_toml

AMAZON_A = """
[data]
train_domains = ["All_Beauty", "Automotive"]
test_domains = ["Software"]
max_train_per_domain = 8
max_eval_per_domain = 8
"""


def doge(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "dogetickets.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=e, timeout=900)


def _fake_data(root: Path, lines: dict[str, list[str]]) -> Path:
    for rel, content in lines.items():
        p = root / "amazon" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(line + "\n" for line in content))
    return root


GOOD = [json.dumps({"text": "fine", "label": 1}), json.dumps({"text": "bad", "label": 0})]


def _layout(root: Path, **override: list[str]) -> Path:
    files = {f"{d}/{s}.json": GOOD for d in ("All_Beauty", "Automotive", "Software") for s in ("train", "dev", "test")}
    files.update({k.replace("__", "/") + ".json": v for k, v in override.items()})
    return _fake_data(root, files)


def _assert_one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def _no_done(out: Path) -> None:
    assert not list(out.rglob("DONE")) if out.exists() else True


@pytest.mark.parametrize(
    "case, override, needles",
    [
        ("malformed", {"Automotive__train": [GOOD[0], "{not json"]}, ["Automotive/train.json:2", "malformed JSON"]),
        ("bad label", {"All_Beauty__dev": [json.dumps({"text": "x", "label": 7})]},
         ["All_Beauty/dev.json:1", "label '7' is not in the label set"]),
        ("empty", {"Software__test": []}, ["Software", "no examples"]),
        ("missing field", {"All_Beauty__train": [json.dumps({"label": 1})]},
         ["All_Beauty/train.json:1", "missing field 'text'"]),
    ],
)
def test_bad_data_gives_one_line(tmp_path, case, override, needles):
    root = _layout(tmp_path / "data", **override)
    cfg = tmp_path / "c.toml"
    cfg.write_text(AMAZON_A)
    out = tmp_path / "run"
    res = doge("run", str(cfg), "--data-dir", str(root), "--out", str(out), "-q")
    _assert_one_line_error(res, *needles)
    _no_done(out)


def test_missing_data_dir_unknown_domain_and_config_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(AMAZON_A)
    res = doge("run", str(cfg), "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "r"))
    _assert_one_line_error(res, "nope", "not found")
    root = _layout(tmp_path / "data")
    cfg.write_text(AMAZON_A.replace('"Software"', '"Sofware"'))
    res = doge("run", str(cfg), "--data-dir", str(root), "--out", str(tmp_path / "r"))
    _assert_one_line_error(res, "unknown domain 'Sofware'", "Software")
    cfg.write_text(AMAZON_A + "\n[train]\nlearning_rate = 1e-5\n")
    res = doge("run", str(cfg), "--data-dir", str(root), "--out", str(tmp_path / "r"))
    _assert_one_line_error(res, "c.toml", "unknown config key 'train.learning_rate'")
    res = doge("run", str(tmp_path / "absent.toml"))
    _assert_one_line_error(res, "absent.toml", "not found")
    _no_done(tmp_path / "r")


@pytest.mark.slow
def test_run_end_to_end_on_real_amazon(tmp_path, data_dir):
    """`doge run` with the packaged model on a tiny subsample; a rerun skips every finished stage."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(f"""
[run]
out = "{tmp_path / 'run'}"
baselines = ["erm", "irm"]
[data]
dir = "{data_dir}"
train_domains = ["All_Beauty", "Automotive", "Digital_Music", "Gift_Cards"]
test_domains = ["Industrial_and_Scientific", "Software"]
max_train_per_domain = 8
max_eval_per_domain = 8
[model]
max_length = 64
[train]
epochs = 1
batch_size = 8
mixed_precision = "no"
[irm]
anneal_steps = 2
[tickets]
sparsities = [0.3]
""")
    res = doge("run", str(cfg), "-q")
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "run"
    results = json.loads((out / "results.json").read_text())
    rows = [r["row"] for r in results["rows"]]
    assert rows == ["ERM", "IRM", "random 30%", "winning 30%", "doge 30% (λ=100)"]
    for r in results["rows"]:
        assert set(r["test"]) == {"Industrial_and_Scientific", "Software"}
        assert 0.0 <= r["mean"] <= 1.0 and r["worst"] <= r["mean"]
    assert "ERM" in res.stdout and "doge 30%" in res.stdout
    # the table says what produced it: the precision the runs recorded, why, and the machine
    assert results["precision"] == [{"precision": "fp32", "reason": "fp32: set by train.mixed_precision", "runs": 5}]
    assert "Trained in fp32 (set by train.mixed_precision; all 5 runs). Machine: " in (out / "results.md").read_text()
    assert "Trained in fp32" in res.stdout
    sp = [r["sparsity"] for r in results["rows"][2:]]
    assert max(sp) - min(sp) < 0.005  # within one head of each other
    metrics = json.loads((out / "seed0/rewind/doge-s30-l100/metrics.json").read_text())
    assert metrics["run"]["method"] == "doge"
    preds = (out / "seed0/rewind/doge-s30-l100/predictions.jsonl").read_text().splitlines()
    assert len(preds) == 4 * 8 + 2 * 8
    scores = json.loads((out / "seed0/scores/scores.json").read_text())
    assert set(scores["per_domain"]) == {"All_Beauty", "Automotive", "Digital_Music", "Gift_Cards"}
    assert (out / "seed0/init/model.safetensors").is_file()
    assert (out / "seed0/rewind/doge-s30-l100/model/model.safetensors").is_file()
    # every stage is skipped on a rerun: nothing is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")
              if p.is_file() and "results" not in p.name and p.name not in ("timing.json", ".lock")}
    res = doge("run", str(cfg), "-q")
    assert res.returncode == 0, res.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    timing = json.loads((out / "timing.json").read_text())
    assert timing["outside_model_share"] < 1.0
    # one record per process: the rerun's is added after the first run's, which is kept
    first, again = timing["processes"]
    assert again["total_seconds"] == timing["total_seconds"] and first["total_seconds"] > again["total_seconds"]
    # recorded as typed again: `python -m dogetickets.cli run ...` is `doge run ...`, not this machine's path
    assert first["command"] == ["doge", "run", str(cfg), "-q"] and first["started"] <= again["started"]

    # the pilot study and Fig. 4 from the fine-tuned model, then the report with every figure
    res = doge("analyze", str(cfg), "-q")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "pilot.png").stat().st_size > 0 and (out / "scores.png").stat().st_size > 0
    import csv

    pilot = list(csv.DictReader((out / "pilot.csv").open()))
    assert len(pilot) == 6 * 35 * 4  # layers x neurons x training domains
    res = doge("report", str(out), "--n-boot", "100")
    assert res.returncode == 0, res.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "Table 2" in report and "pilot.png" in report and "transitions.png" in report
    assert (out / "report.html").stat().st_size > 0

    # the physically pruned model, reloaded through the Auto classes
    res = doge("export", str(out / "seed0/rewind/doge-s30-l100"), "--out", str(tmp_path / "pruned"))
    assert res.returncode == 0, res.stderr[-3000:]
    code = (
        "import dogetickets, json, sys; from transformers import AutoModelForSequenceClassification as A; "
        f"m = A.from_pretrained({str(tmp_path / 'pruned')!r}); "
        f"t = json.load(open({str(out / 'seed0/rewind/doge-s30-l100/ticket.json')!r})); "
        "n = sum(p.numel() for p in m.parameters()); print(n, t['pruned_params'])"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    n_pruned, owned = map(int, res.stdout.split())
    assert n_pruned == 22_714_371 - owned  # MiniLM with a 3-label head, less what the ticket owns


TINY = ["--set", 'train.mixed_precision="no"',
        "--set", "data.max_train_per_domain=6", "--set", "data.max_eval_per_domain=6", "--set", "train.epochs=1",
        "--set", "tickets.sparsities=[0.3]", "--set", "model.max_length=48", "-q"]


@pytest.mark.slow
@pytest.mark.parametrize("config, metric", [("mnli-quick", "accuracy"), ("ontonotes-quick", "entity_f1")])
def test_quick_configs_end_to_end(tmp_path, data_dir, config, metric):
    """The MNLI (pairs) and OntoNotes (tagging) quick paths on a tiny subsample of the real data."""
    repo = Path(__file__).resolve().parents[1]
    res = doge("run", str(repo / "configs" / f"{config}.toml"), "--data-dir", str(data_dir),
               "--out", str(tmp_path / "run"), *TINY)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["metric"] == metric
    assert [r["row"] for r in results["rows"]] == ["ERM", "IRM", "random 30%", "winning 30%", "doge 30% (λ=100)"]
    if metric == "entity_f1":
        assert "entity F1" in res.stdout
        assert any(n.startswith("nw: trains on its 'dev' split") and "10%" in n for n in results["notes"])
        preds = (tmp_path / "run/seed0/erm/predictions.jsonl").read_text().splitlines()
        row = json.loads(preds[0])
        assert isinstance(row["gold"], list) and isinstance(row["gold"][0], str)
    else:
        assert set(results["test_domains"]) == {"facetoface", "letters", "nineeleven", "oup", "verbatim"}


@pytest.mark.slow
def test_stage_commands_chain(tmp_path, data_dir):
    """finetune -> score -> prune -> rewind -> evaluate, each on the artifacts of the one before."""
    cfg = tmp_path / "chain.toml"
    out = tmp_path / "run"
    cfg.write_text(tiny_run_toml(out, data_dir))
    res = doge("score", str(cfg), "-q")
    _assert_one_line_error(res, "no fine-tuned model yet", "doge finetune")
    res = doge("rewind", str(cfg), "-q")
    _assert_one_line_error(res, "ticket not found", "doge prune")
    for command in ("finetune", "score", "prune", "rewind"):
        res = doge(command, str(cfg), "-q")
        assert res.returncode == 0, (command, res.stderr[-3000:])
    assert (out / "seed0/tickets/doge-s20-l100.json").is_file()
    before = json.loads((out / "seed0/rewind/doge-s20-l100/metrics.json").read_text())
    res = doge("evaluate", str(cfg), "-q", "--set", 'data.test_domains=["Software", "Automotive"]')
    assert res.returncode == 0, res.stderr[-3000:]
    after = json.loads((out / "seed0/rewind/doge-s20-l100/metrics.json").read_text())
    assert set(after["test"]["per_domain"]) == {"Software", "Automotive"}
    assert after["test"]["per_domain"]["Software"] == before["test"]["per_domain"]["Software"]
    assert after["dev"] == before["dev"] and "Automotive" in res.stdout
    # the analyses of a fine-tuned model given as a folder, without any sweep in the output folder
    res = doge("analyze", str(cfg), "-q", "--finetuned", str(out / "seed0/erm/model"), "--out", str(tmp_path / "an"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "HMHV" in res.stdout and (tmp_path / "an" / "pilot.png").is_file()
    assert not (tmp_path / "an" / "seed0").exists()

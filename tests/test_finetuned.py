"""Doge tickets for a model fine-tuned elsewhere: `doge prune CONFIG --finetuned DIR`, then `doge export`."""

from __future__ import annotations

import subprocess
import sys

from conftest import tiny_run_toml

from dogetickets.config import load_config
from dogetickets.run.sweep import Sweep
from dogetickets.tickets import Ticket

DOGE = [sys.executable, "-m", "dogetickets.cli"]


def _doge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*DOGE, *args], capture_output=True, text=True, timeout=900)


def test_prune_a_model_fine_tuned_elsewhere_then_export_it(tmp_path, data_dir):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_run_toml(tmp_path / "own", data_dir, methods='["winning", "doge"]'))
    pipe = Sweep(load_config(cfg), show_progress=False)
    try:
        pipe.finetune()
        own = {p.name: Ticket.load(p) for p in pipe.prune()}
    finally:
        pipe.ctx.lock.release()
    model = tmp_path / "own/seed0/erm/model"  # stands for a model the user fine-tuned with their own loop
    res = _doge("prune", str(cfg), "--finetuned", str(model), "--out", str(tmp_path / "theirs"), "-q")
    assert res.returncode == 0, res.stderr
    paths = [line for line in res.stdout.splitlines() if line.endswith(".json")]
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == sorted(own)
    assert not (tmp_path / "theirs/seed0/erm").exists()  # nothing was fine-tuned
    for path in paths:
        t = Ticket.load(path)
        mine = own[path.rsplit("/", 1)[1]]
        assert (t.pruned_heads, t.pruned_ffn) == (mine.pruned_heads, mine.pruned_ffn)  # same model, same scores
        assert t.extra["settings"]["from"]["finetuned"]["external"] == str(model.resolve())
    doge_ticket = next(p for p in paths if "doge" in p)
    res = _doge("export", doge_ticket, "--model-dir", str(model), "--out", str(tmp_path / "small"), "-q")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "small/config.json").is_file() and (tmp_path / "small/model.safetensors").is_file()
    bad = _doge("prune", str(cfg), "--finetuned", str(tmp_path), "--out", str(tmp_path / "x"), "-q")
    assert bad.returncode == 2 and "not a model folder" in bad.stderr and "Traceback" not in bad.stderr

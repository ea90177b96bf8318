"""Clean failures of `doge` (one line on stderr, exit 2, no traceback): usage errors, unusable models, bad
export targets; Ctrl-C is "interrupted" and exit 130; `import dogetickets` and `doge --help` stay light."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from transformers import BertForSequenceClassification

from dogetickets.errors import DogeError
from dogetickets.models import resolve
from dogetickets.models.export import export_run
from dogetickets.models.units import Units
from dogetickets.tickets import Shape, random_ticket

REPO = Path(__file__).resolve().parents[1]
CONFIG_COMMANDS = ["run", "finetune", "score", "prune", "rewind", "evaluate", "analyze"]


def doge(*args: str, env: dict[str, str | None] | None = None, **kw) -> subprocess.CompletedProcess:
    """`doge ARGS` in a subprocess; `env` entries update the environment (None: unset)."""
    return subprocess.run([sys.executable, "-m", "dogetickets.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=environ(env), timeout=600, **kw)


def environ(changes: dict[str, str | None] | None = None) -> dict[str, str]:
    e = dict(os.environ, PYTHONUNBUFFERED="1")
    for key, value in (changes or {}).items():
        if value is None:
            e.pop(key, None)
        else:
            e[key] = value
    return e


def assert_one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    err = res.stderr.strip()
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: "), err
    for n in needles:
        assert n in err, err


def fake_amazon(root: Path) -> tuple[Path, Path]:
    """Two reviews per split of three Amazon domains, and a config on them: (data dir, config)."""
    rows = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in [("fine, works well", 1), ("bad", 0)])
    for domain in ("All_Beauty", "Automotive", "Software"):
        for split in ("train", "dev", "test"):
            path = root / "data" / "amazon" / domain / f"{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rows)
    cfg = root / "c.toml"
    cfg.write_text(textwrap.dedent("""
        [data]
        train_domains = ["All_Beauty", "Automotive"]
        test_domains = ["Software"]
        [model]
        max_length = 32
        [train]
        epochs = 1
        batch_size = 2
        mixed_precision = "no"
        [tickets]
        sparsities = [0.3]
    """))
    return root / "data", cfg


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- usage errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, needles",
    [
        (["run", "--bogus", "configs/quickstart.toml"], ["No such option: --bogus", "run --help"]),
        (["report"], ["Missing argument"]),
        (["report", "runs/x", "--n-boot", "many"], ["Invalid value for '--n-boot'"]),
        (["bogus"], ["No such command 'bogus'"]),
        (["data", "fetch", "amazon"], ["Missing option '--to'"]),
        (["export", "runs/x"], ["Missing option '--out'"]),
    ],
)
def test_usage_error_is_one_line(args, needles):
    assert_one_line_error(doge(*args), *needles)


@pytest.mark.parametrize("args", [[], ["data"]])
def test_group_alone_shows_its_help(args):
    res = doge(*args)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "Usage:" in res.stdout + res.stderr


def test_common_options_on_every_command():
    import typer.main

    from dogetickets.cli import app

    def commands(group, prefix: str = ""):  # noqa: ANN001, ANN202
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from commands(cmd, f"{prefix}{name} ")
            else:
                yield prefix + name, {opt for p in cmd.params for opt in p.opts}

    found = dict(commands(typer.main.get_command(app)))
    assert set(CONFIG_COMMANDS) | {"report", "export", "bench", "data fetch"} <= set(found)
    for name, opts in found.items():
        assert {"-q", "--quiet"} <= opts, name
    for name in CONFIG_COMMANDS:
        assert {"--data-dir", "--out", "--model", "--set"} <= found[name], name


# ---- Ctrl-C ---------------------------------------------------------------------------------------------
def test_ctrl_c_is_interrupted_and_130(tmp_path):
    data, cfg = fake_amazon(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dogetickets.cli", "run", str(cfg), "--data-dir", str(data), "--out",
         str(tmp_path / "run")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=environ(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal, even under `&`
    )
    try:
        # the run is under way: its first message (the data read) is on stderr; stdout has only the table, at
        # the end, when a signal may come too late to interrupt anything
        first = proc.stderr.readline()
        assert first.startswith("data:") and proc.poll() is None, first + proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "interrupted", err[-3000:]


# ---- models that cannot be had ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm() -> Path:
    return Path(resolve.resolve_model("minilm"))


def bad_model(kind: str, root: Path, minilm: Path) -> str:
    folder = root / kind.replace(" ", "-")
    folder.mkdir()
    if kind == "junk":
        (folder / "notes.txt").write_text("not a model\n")
        (folder / "weights.bin").write_bytes(b"\0" * 64)
    elif kind == "no weights":
        for f in minilm.iterdir():
            if f.is_file() and f.name != "model.safetensors":
                shutil.copy(f, folder / f.name)
    return str(folder)


@pytest.mark.parametrize(
    "kind, needles",
    [
        ("empty", ["not a model folder", "no config.json"]),
        ("junk", ["not a model folder", "no config.json"]),
        ("no weights", ["no weights", "model.safetensors"]),
        ("hub", ["model 'bert-base-uncased' is not available offline", "local Hugging Face cache",
                 "Hub cannot be reached"]),
    ],
)
def test_unusable_model_is_one_line(tmp_path, minilm, kind, needles):
    data, cfg = fake_amazon(tmp_path)
    model = "bert-base-uncased" if kind == "hub" else bad_model(kind, tmp_path, minilm)
    hub_down = {"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None, "HF_HUB_CACHE": str(tmp_path / "hf"),
                "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    res = doge("run", str(cfg), "--data-dir", str(data), "--out", str(tmp_path / "run"), "--model", model, "-q",
               env=hub_down)
    assert_one_line_error(res, *needles)
    if kind != "hub":
        assert model in res.stderr
    assert not list(tmp_path.rglob("DONE"))


def test_hub_name_fails_fast_when_the_hub_hangs(tmp_path):
    """A Hub that accepts connections and never answers: one probe with a short timeout, no retries."""
    code = textwrap.dedent("""
        import time
        from dogetickets.errors import DogeError
        from dogetickets.models.resolve import load_model, load_tokenizer
        for load in (load_tokenizer, lambda name: load_model(name, "text", ["a", "b"], 0)):
            t0 = time.perf_counter()
            try:
                load("bert-base-uncased")
            except DogeError as exc:
                print(f"{time.perf_counter() - t0:.2f} {exc}")
    """)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        env = environ({"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None, "HF_HUB_CACHE": str(tmp_path),
                       "HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}"})
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2, res.stdout + res.stderr[-3000:]
    for line in lines:
        seconds, message = line.split(" ", 1)
        assert "not available offline" in message
        assert float(seconds) < resolve.HUB_PROBE_TIMEOUT + 5
    assert float(lines[1].split()[0]) < 1  # the probe is made once per process


def test_hub_name_from_the_local_cache_when_offline(tmp_path, minilm, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someone--mini"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in minilm.iterdir():
        (snapshot / f.name).symlink_to(f)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(resolve, "hub_reachable", lambda: False)
    assert resolve.resolve_model("someone/mini") == str(snapshot)
    assert resolve.load_tokenizer("someone/mini").is_fast
    (snapshot / "model.safetensors").unlink()  # cached without its weights: not usable offline
    with pytest.raises(DogeError, match="not available offline"):
        resolve.resolve_model("someone/mini")
    with pytest.raises(DogeError, match="no such folder"):
        resolve.resolve_model(str(tmp_path / "nowhere"))


def test_load_saved_names_the_folder_and_the_missing_file(tmp_path):
    folder = tmp_path / "seed0" / "init"
    BertForSequenceClassification(tiny_config()).save_pretrained(folder)
    assert resolve.load_saved(folder, "text").num_labels == 3
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[:1000])  # damaged
    with pytest.raises(DogeError, match=f"^{folder}: the saved model cannot be read"):
        resolve.load_saved(folder, "text")
    (folder / "model.safetensors").unlink()
    with pytest.raises(DogeError, match=rf"^{folder}: no saved model here \(model.safetensors missing\)$"):
        resolve.load_saved(folder, "text")


# ---- export targets -------------------------------------------------------------------------------------
@pytest.fixture
def rewind_run(tmp_path) -> Path:
    """A rewind run folder: the masked model in model/, and ticket.json."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config())
    run = tmp_path / "rewind" / "random-s30"
    model.save_pretrained(run / "model")
    random_ticket(Shape.of(Units(model)), 0.3, seed=0).save(run / "ticket.json")
    return run


def test_export_out_must_be_a_new_empty_or_exported_folder(tmp_path, rewind_run):
    a_file = tmp_path / "pruned.bin"
    a_file.write_text("keep me")
    assert_one_line_error(doge("export", str(rewind_run), "--out", str(a_file), "-q"), str(a_file), "not a folder")
    assert a_file.read_text() == "keep me"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert_one_line_error(doge("export", str(rewind_run), "--out", str(foreign)), str(foreign),
                          "neither empty nor a previous export")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    out = tmp_path / "pruned"
    res = doge("export", str(rewind_run), "--out", str(out), "-q")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == str(out)  # -q: just the path
    (out / "stale.txt").write_text("from an older export")
    assert export_run(rewind_run, out) == out  # a previous export is replaced as a whole
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    (tmp_path / "empty").mkdir()
    assert export_run(rewind_run, tmp_path / "empty") == tmp_path / "empty"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary folders


# ---- light imports, and the Auto classes in either import order ---------------------------------------------
def test_import_and_help_leave_torch_and_transformers_out():
    code = textwrap.dedent("""
        import sys
        import dogetickets
        heavy = {"torch", "transformers"}
        print(sorted(heavy & set(sys.modules)), file=sys.stderr)
        sys.argv = ["doge", "--help"]
        from dogetickets.cli import main
        try:
            main()
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        print(sorted(heavy & set(sys.modules)), file=sys.stderr)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ(), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.split() == ["[]", "[]"]
    assert "Usage:" in res.stdout


@pytest.mark.parametrize(
    "imports",
    [
        "import dogetickets\nfrom transformers import AutoModelForSequenceClassification as Auto",
        "from transformers import AutoModelForSequenceClassification as Auto\nimport dogetickets",
        # a library probing for transformers without importing it must not use up the hook
        "import importlib.util, dogetickets\nassert importlib.util.find_spec('transformers')\n"
        "from transformers import AutoModelForSequenceClassification as Auto",
    ],
    ids=["dogetickets first", "transformers first", "probed first"],
)
def test_exported_model_loads_through_auto_classes(tmp_path, rewind_run, imports):
    out = export_run(rewind_run, tmp_path / "pruned")
    code = f"{imports}\nprint(type(Auto.from_pretrained({str(out)!r})).__name__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ(), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "DogeBertForSequenceClassification"


# ---- inputs refused before anything runs (issue 21) ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory, minilm) -> Path:
    """A tiny GPT-2 (no unit table: a decoder), with minilm's tokenizer so that only the architecture is wrong."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("gpt2")
    tok = AutoTokenizer.from_pretrained(minilm)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=len(tok), n_positions=64,
                               bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                               pad_token_id=tok.pad_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("command", ["finetune", "run", "prune --finetuned"])
def test_model_without_unit_table_refused_before_any_stage(tmp_path, tiny_gpt2, command):
    data, cfg = fake_amazon(tmp_path)
    name, *flag = command.split()
    res = doge(name, str(cfg), "--data-dir", str(data), "--out", str(tmp_path / "run"),
               *(flag or ["--model"]), str(tiny_gpt2), "-q")
    assert_one_line_error(res, "tickets.methods asks for tickets", f"model '{tiny_gpt2}' cannot have",
                          "model type 'gpt2' has no unit table", "supported: bert")
    assert not (tmp_path / "run").exists()  # nothing trained, no DONE marker, not even the run directory


def test_boolean_label_in_released_file(tmp_path):
    data, cfg = fake_amazon(tmp_path)
    path = data / "amazon" / "Automotive" / "dev.json"
    path.write_text(path.read_text() + json.dumps({"text": "yes", "label": True}) + "\n")  # line 3
    res = doge("finetune", str(cfg), "--data-dir", str(data), "--out", str(tmp_path / "run"), "-q")
    assert_one_line_error(res, f"{path}:3: label true is a boolean, not one of the labels of the released 'amazon' "
                          "data (0 negative, 1 positive, 2 neutral)")
    assert not (tmp_path / "run").exists()


def test_missing_split_column_names_the_columns(tmp_path):
    table = tmp_path / "reviews.csv"
    table.write_text("text,label,domain\ngood,pos,a\nbad,neg,a\nfine,pos,b\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(textwrap.dedent(f"""
        [data]
        source = "file"
        path = "{table}"
        train_domains = ["a"]
        test_domains = ["b"]
        split_column = "split"
    """))
    res = doge("finetune", str(cfg), "--out", str(tmp_path / "run"), "-q")
    assert_one_line_error(res, f"{table}:2: no column 'split' (config key 'data.split_column'); the columns are: "
                          "text, label, domain")


@pytest.mark.parametrize("choice", ["preview", "rewind"])
def test_lambda_method_without_lambdas_is_a_config_error(tmp_path, choice):
    data, cfg = fake_amazon(tmp_path)
    res = doge("run", str(cfg), "--data-dir", str(data), "--out", str(tmp_path / "run"), "-q",
               "--set", f'tickets.lambda_choice="{choice}"', "--set", "tickets.lambdas=[]")
    assert_one_line_error(res, f"{cfg}: config key 'tickets.lambdas': empty, but tickets.methods has 'doge', which "
                          f"takes a lambda (tickets.lambda_choice = '{choice}'")
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A finished run of seed 0 on fake_amazon (ERM and one random ticket): (data, config, run directory)."""
    root = tmp_path_factory.mktemp("finished")
    data, cfg = fake_amazon(root)
    run_dir = root / "run"
    res = doge("run", str(cfg), "--data-dir", str(data), "--out", str(run_dir), "-q",
               "--set", 'tickets.methods=["random"]')
    assert res.returncode == 0, res.stderr[-3000:]
    return data, cfg, run_dir


def test_evaluate_refuses_a_finished_run_that_lost_its_model(tmp_path, finished_run):
    data, cfg, original = finished_run
    run_dir = tmp_path / "run"
    shutil.copytree(original, run_dir)
    rewound = run_dir / "seed0" / "rewind" / "random-s30"
    weights = rewound / "model" / "model.safetensors"
    weights.unlink()
    metrics = (rewound / "metrics.json").read_text()
    args = (str(cfg), "--data-dir", str(data), "--out", str(run_dir), "-q", "--set", 'tickets.methods=["random"]')
    res = doge("evaluate", *args)
    assert_one_line_error(res, f"{weights}: missing, so its finished run cannot be evaluated: nothing was evaluated; "
                          "`doge run` trains it again")
    assert res.stdout == ""  # no table
    assert (rewound / "metrics.json").read_text() == metrics
    res = doge("run", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "redoing this stage" in res.stderr and weights.is_file()


@pytest.mark.parametrize("seeds, needle", [
    (["7"], "no finished runs of seed 7 (--seeds); its finished runs are of seed 0"),
    (["0", "7", "9"], "no finished runs of seeds 7, 9 (--seeds); its finished runs are of seed 0"),
])
def test_report_names_the_seeds_a_run_lacks(tmp_path, finished_run, seeds, needle):
    run_dir = finished_run[2]
    res = doge("report", str(run_dir), "--out", str(tmp_path / "report"), "--n-boot", "10", "-q",
               *(x for s in seeds for x in ("--seeds", s)))
    assert_one_line_error(res, f"{run_dir}: {needle}")
    assert not (tmp_path / "report" / "report.md").exists()

"""ONNX export of physically pruned models: ONNX Runtime's logits equal PyTorch's (max abs diff 1e-4) on tiny
random models of every supported architecture, pruned so that the layers keep 3, 1 and 4 heads and one layer
loses its FFN block, at two batch sizes and sequence lengths (the dynamic axes); neuron-level tickets (layers
of different FFN widths), token classification and a bare encoder too; `doge export --onnx`, `doge bench
--runtime onnxruntime`, and the one-line errors for a missing package and a model the exporter cannot capture.

Every supported architecture exports (README, "Physically pruned models"), so no architecture is expected to
fail; a model that cannot be captured (here: a hook that branches on the token ids) must fail in one line.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from test_architectures import BASE, DROPOUT_OFF, inputs, make
from test_bench import TINY
from test_bench import ticket_for as neuron_ticket
from test_cli_errors import assert_one_line_error, doge, rewind_run  # noqa: F401 - a fixture
from test_export import manual_ticket

from dogetickets.bench import bench_markdown, format_bench, run_bench
from dogetickets.errors import DogeError
from dogetickets.models.export import export_pruned, load_pruned
from dogetickets.models.onnx import (
    INSTALL,
    ONNX_FILE,
    export_onnx,
    onnx_inputs,
    onnx_session,
    run_onnx,
)
from dogetickets.models.units import STRUCTURES

TOL = 1e-4
SHAPES = [(1, 9), (4, 23)]  # (batch, tokens): neither is the export's example (2 x 7)
PRUNED_HEADS = {0: [1], 1: [0, 2, 3]}  # layers keep 3, 1 and 4 of 4 heads
PRUNED_FFN = [1]

# every architecture of the unit table (deberta-v2 twice: v3 style, and with per-layer position projections)
ARCHS = ["bert", "roberta", "xlm-roberta", "electra", "camembert", "distilbert", "deberta-v3", "deberta-v2-pos",
         "modernbert"]
_BERT_LIKE = {"roberta": ("RobertaConfig", "RobertaForSequenceClassification"),
              "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaForSequenceClassification"),
              "electra": ("ElectraConfig", "ElectraForSequenceClassification")}


def model_of(arch: str) -> torch.nn.Module:
    """A tiny random classifier of `arch` (3 layers of 4 heads, hidden 32, FFN 24), every weight perturbed."""
    if arch not in _BERT_LIKE:
        return make(arch)
    config_cls, model_cls = (getattr(transformers, n) for n in _BERT_LIKE[arch])
    torch.manual_seed(0)
    model = model_cls(config_cls(**BASE, **DROPOUT_OFF)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def batch(model: torch.nn.Module, size: int, length: int) -> dict[str, torch.Tensor]:
    """Ragged token ids (padding at the end), and two token types where the model has two."""
    x = inputs(size, length)
    if "token_type_ids" in onnx_inputs(model):
        types = (torch.arange(length) >= length // 2).long() * int(model.config.type_vocab_size > 1)
        x["token_type_ids"] = types.expand(size, -1).clone()
    return x


def assert_onnx_equals_torch(model: torch.nn.Module, folder: Path) -> None:
    """Export `model`, then compare ONNX Runtime's output with PyTorch's at every shape of SHAPES; per-token
    outputs at the real tokens (a padding position's output means nothing: ModernBERT's differ between the
    two runtimes, in the unpruned model too)."""
    path = export_onnx(model, folder / ONNX_FILE)
    session = onnx_session(path)
    assert [i.name for i in session.get_inputs()] == onnx_inputs(model)
    assert all(i.shape[:2] == ["batch", "sequence"] for i in session.get_inputs())  # symbolic, not 2 x 7
    for size, length in SHAPES:
        x = batch(model, size, length)
        with torch.no_grad():
            out = model(**x)
        want = (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()
        got = run_onnx(session, x)
        assert got.shape == want.shape
        diff = np.abs(got - want)
        if diff.ndim == 3:
            diff = diff[x["attention_mask"].bool().numpy()]
        assert float(diff.max()) <= TOL, (size, length, float(diff.max()))


def test_the_architectures_are_every_supported_one() -> None:
    types = {model_of(a).config.model_type for a in ARCHS}
    assert types == set(STRUCTURES)


@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_model_in_onnx_runtime_equals_pytorch(arch: str, tmp_path: Path) -> None:
    model = model_of(arch)
    pruned = export_pruned(copy.deepcopy(model), manual_ticket(model, PRUNED_HEADS, PRUNED_FFN))
    assert [len(h) for h in pruned.config.doge_heads] == [3, 1, 4] and pruned.config.doge_ffn == [True, False, True]
    assert_onnx_equals_torch(pruned, tmp_path)


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_neuron_level_token_classifier_in_onnx_runtime(arch: str, tmp_path: Path) -> None:
    """Layers of different FFN widths (a GLU's two halves for ModernBERT), logits per token."""
    model = make(arch, tagging=True)
    pruned = export_pruned(copy.deepcopy(model), neuron_ticket(model))
    assert len(set(pruned.config.doge_intermediate_sizes)) == 3
    assert_onnx_equals_torch(pruned, tmp_path)


def test_bare_encoder_outputs_its_last_hidden_state(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**BASE, **DROPOUT_OFF)).eval()
    pruned = export_pruned(model, manual_ticket(model, PRUNED_HEADS, PRUNED_FFN))
    assert_onnx_equals_torch(pruned, tmp_path)
    assert [o.name for o in onnx_session(tmp_path / ONNX_FILE).get_outputs()] == ["last_hidden_state"]


# ---- one-line failures ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("package", ["onnx", "onnxscript", "onnxruntime"])
def test_a_missing_package_names_the_extra(package: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError
    message = f"ONNX export and ONNX Runtime need the '{package}' package: pip install 'dogetickets[onnx]'"
    with pytest.raises(DogeError) as err:
        run_bench(model_of("bert"), tickets=[], runtime="onnxruntime", **TINY)
    assert str(err.value) == message
    use = (lambda: onnx_session(tmp_path / ONNX_FILE)) if package == "onnxruntime" else (
        lambda: export_onnx(model_of("bert"), tmp_path / ONNX_FILE))
    with pytest.raises(DogeError) as err:
        use()
    assert str(err.value) == message


def test_a_missing_package_fails_doge_export_before_it_writes(tmp_path: Path, rewind_run: Path) -> None:  # noqa: F811
    out = tmp_path / "pruned"
    code = ("import sys; sys.modules['onnxruntime'] = None; from dogetickets.cli import main; "
            f"sys.argv = ['doge', 'export', {str(rewind_run)!r}, '--out', {str(out)!r}, '--onnx']; main()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert_one_line_error(res, "'onnxruntime' package", INSTALL)
    assert not out.exists()


def test_a_model_the_exporter_cannot_capture_is_one_line(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    model = model_of("bert")

    def branch_on_the_ids(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if kwargs["input_ids"].sum() > 100:  # data-dependent control flow: no graph for every input
            return None
        return None

    model.register_forward_pre_hook(branch_on_the_ids, with_kwargs=True)
    with pytest.raises(DogeError, match=r"^cannot export BertForSequenceClassification to ONNX \(.+\)$") as err:
        export_onnx(model, tmp_path / ONNX_FILE)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    out, errs = capfd.readouterr()
    assert "GraphModule" not in out + errs  # torch.export's graph dump kept off the terminal


# ---- the CLI and the bench ---------------------------------------------------------------------------------------
def test_doge_export_onnx(tmp_path: Path, rewind_run: Path) -> None:  # noqa: F811
    out = tmp_path / "pruned"
    res = doge("export", str(rewind_run), "--out", str(out), "--onnx")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"ONNX model: {out / ONNX_FILE}" in res.stdout
    model = load_pruned(out)
    x = batch(model, 2, 12)
    with torch.no_grad():
        want = model(**x).logits.numpy()
    assert float(np.abs(run_onnx(onnx_session(out / ONNX_FILE), x) - want).max()) <= TOL
    assert (out / "model.safetensors").is_file() and (out / "ticket.json").is_file()


def test_bench_onnxruntime_rows(tmp_path: Path) -> None:
    model = model_of("bert")
    ticket = manual_ticket(model, PRUNED_HEADS, PRUNED_FFN)
    result = run_bench(model, tickets=[ticket], runtime="onnxruntime", out=tmp_path / "b.json", **TINY)
    assert result["runtime"] == "onnxruntime" and result["device"] == "cpu" and result["onnxruntime"]
    full, pruned = result["rows"]
    assert [full["name"], full["speedup"]] == ["full", 1.0]
    assert pruned["heads"] == 8 and pruned["ffn_blocks"] == 2 and pruned["flop_reduction"] > 1
    assert pruned["speedup"] > 0 and pruned["latency_speedup"] > 0
    assert pruned["train_speedup"] is None and pruned["train_examples_per_s"] is None
    assert "ONNX Runtime" in bench_markdown(result) and "| – | – |" in bench_markdown(result)
    assert format_bench(result).row_count == 2
    with pytest.raises(DogeError, match="runtime 'tvm': expected torch or onnxruntime"):
        run_bench(model, tickets=[], runtime="tvm", **TINY)


def test_doge_bench_runtime_onnxruntime(tmp_path: Path) -> None:
    torch.manual_seed(0)  # positions for the bench's 128 tokens
    config = transformers.BertConfig(**{**BASE, "max_position_embeddings": 512}, **DROPOUT_OFF)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "tiny")
    res = doge("bench", "--model", str(tmp_path / "tiny"), "--sparsities", "0.3", "--repeats", "1",
               "--runtime", "onnxruntime", "-q")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ONNX Runtime" in res.stdout and "random-s30" in res.stdout
    assert_one_line_error(doge("bench", "--runtime", "onnx"), "runtime 'onnx'")

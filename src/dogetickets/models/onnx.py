"""ONNX export of a model (stock or physically pruned) and ONNX Runtime sessions for it.

`export_onnx` writes the model with `torch.onnx.export`'s torch.export-based exporter (``dynamo=True``, the
default since torch 2.9; it needs ``onnxscript``): the graph is captured symbolically over a batch and a
sequence dimension, so one file serves every batch size and sequence length, and a shape the model would
bake in (a Python branch on a length) fails the export instead of silently giving a graph that is right
for the example's shape only. An exported model's layers with their own head counts and FFN widths are
plain, differently shaped matmuls there, like any other weight.

The graph's inputs are ``input_ids`` and ``attention_mask`` (int64, batch x sequence), and
``token_type_ids`` where the model has a token type embedding (BERT, RoBERTa, ELECTRA, ...; not DistilBERT,
ModernBERT or DeBERTa-v3, whose ``type_vocab_size`` is 0); its output is ``logits`` (a classification
model) or ``last_hidden_state`` (a bare encoder). `onnx_inputs` says which, and `run_onnx` feeds a session
just the inputs it takes.

The packages come with the ``onnx`` extra; without them every function here is a one-line DogeError that
says so.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dogetickets.errors import DogeError

ONNX_FILE = "model.onnx"  # the name `doge export --onnx` writes beside the pruned model
INSTALL = "pip install 'dogetickets[onnx]'"
OPSET = 18
_EXTERNAL_BYTES = 1 << 30  # weights past this go to a `.data` file beside the graph (protobuf's limit is 2 GiB)


def require(*packages: str) -> None:
    """Import `packages`; a missing one is a one-line DogeError naming the extra that installs it."""
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError:
            raise DogeError(f"ONNX export and ONNX Runtime need the '{name}' package: {INSTALL}") from None


def onnx_inputs(model: nn.Module) -> list[str]:
    """The graph inputs of `model`: input_ids, attention_mask, and token_type_ids where the model has a token
    type embedding (its forward takes them and its config's ``type_vocab_size`` is above 0)."""
    names = ["input_ids", "attention_mask"]
    takes = "token_type_ids" in inspect.signature(model.forward).parameters
    if takes and int(getattr(model.config, "type_vocab_size", 0) or 0) > 0:
        names.append("token_type_ids")
    return names


def onnx_output(model: nn.Module) -> str:
    """The graph output: ``logits`` for a model with a task head, ``last_hidden_state`` for a bare encoder."""
    return "last_hidden_state" if model is model.base_model else "logits"


class _Output(nn.Module):
    """`model` returning the one tensor the graph outputs."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.model, self.output = model, output

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask, **types), self.output)


def _first_line(exc: BaseException) -> str:
    """The first line of the innermost cause of `exc` (the exporter wraps torch.export's error in its own)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return re.sub(r"\x1b\[[0-9;]*m", "", line)


def example_inputs(model: nn.Module, batch: int = 2, seq_len: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids for `model`, the last 2 tokens of the second example padding (so the traced graph
    keeps the attention mask's path), type 1 on the second half where the model has a second token type."""
    g = torch.Generator().manual_seed(seed)
    vocab = int(model.config.vocab_size)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, seq_len), generator=g)
    mask = torch.ones_like(ids)
    if batch > 1 and seq_len > 2:
        mask[1, -2:] = 0
        ids[1, -2:] = int(getattr(model.config, "pad_token_id", None) or 0)
    out = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in onnx_inputs(model):
        second = int(model.config.type_vocab_size) > 1  # RoBERTa's one type: zeros
        out["token_type_ids"] = ((torch.arange(seq_len) >= seq_len // 2) & second).long().expand(batch, -1).clone()
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's warnings, log records and prints (deprecations, skipped torchvision ops, the graph
    optimizer's notes, torch.export's graph dump on a failure) kept off the terminal; its errors still raise."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(before)


def export_onnx(model: nn.Module, path: str | Path) -> Path:
    """Write `model` (put in eval mode) to `path` as ONNX, batch and sequence dimensions dynamic.

    Weights above 1 GiB go to ``<path>.data`` beside the graph. The file (and its data) is written in a
    temporary folder and moved into place, so an export that fails leaves no partial file. A model the
    exporter cannot capture is a one-line DogeError with the exporter's first line.
    """
    require("onnx", "onnxscript")
    path = Path(path)
    model = model.eval()
    names, output = onnx_inputs(model), onnx_output(model)
    example = example_inputs(model)
    device = next(model.parameters()).device
    kwargs = {n: example[n].to(device) for n in names}
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=1)
    dims = {n: {0: batch, 1: seq} for n in names}
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > _EXTERNAL_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.tmp-") as tmp:
        target = Path(tmp) / path.name
        try:
            with _quiet(), torch.no_grad():
                torch.onnx.export(_Output(model, output), (), target, kwargs=kwargs, input_names=names,
                                  output_names=[output], dynamic_shapes=dims, opset_version=OPSET, dynamo=True,
                                  external_data=big, verbose=False)
        except Exception as exc:  # the exporter raises many kinds; the user needs the first line of the cause
            raise DogeError(f"cannot export {type(model).__name__} to ONNX ({_first_line(exc)})") from None
        for f in Path(tmp).iterdir():
            os.replace(f, path.parent / f.name)
    return path


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime session on the CPU for the graph at `path`, with `threads` intra-op threads (default:
    torch's, so the two runtimes are timed on the same cores) and no inter-op parallelism."""
    require("onnxruntime")
    import onnxruntime as ort

    if not Path(path).is_file():
        raise DogeError(f"{path}: no ONNX model here")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_feeds(session: Any, inputs: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs `session` takes, as int64 arrays; token_type_ids are zeros where it takes them and `inputs`
    have none, any other missing input is a DogeError."""
    feeds = {}
    ids = inputs["input_ids"]
    for item in session.get_inputs():
        value = inputs.get(item.name)
        if value is None and item.name == "token_type_ids":
            value = np.zeros(tuple(ids.shape), dtype=np.int64)
        if value is None:
            raise DogeError(f"the ONNX model takes '{item.name}', which the inputs lack")
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        feeds[item.name] = arr.astype(np.int64, copy=False)
    return feeds


def run_onnx(session: Any, inputs: Mapping[str, torch.Tensor | np.ndarray]) -> np.ndarray:
    """The graph's output (logits) for `inputs` (the tokenizer's output, tensors or arrays)."""
    return session.run(None, onnx_feeds(session, inputs))[0]


def check_onnx(model: nn.Module, path: str | Path, batch: int = 3, seq_len: int = 11) -> float:
    """Max abs difference between ONNX Runtime's and PyTorch's outputs on random inputs with padding, at a
    batch size and length other than those the graph was exported with (so the dynamic axes are used)."""
    inputs = example_inputs(model, batch, seq_len, seed=1)
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.eval()(**{k: v.to(device) for k, v in inputs.items()})
    want = getattr(out, onnx_output(model)).float().cpu().numpy()
    got = run_onnx(onnx_session(path), inputs)
    return float(np.abs(got - want).max())


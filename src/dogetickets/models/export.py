"""Physically pruned models: a ticket's heads and FFN blocks removed, not just masked.

`export_pruned` cuts a pruned head's rows out of Q, K and V (or of every third of a fused QKV; weights
and biases, and of any per-head position projections) and its columns out of the attention output
projection, so layers keep different head counts; a pruned FFN block loses both its linear layers (and
a pre-norm only it reads), and the layer then computes what the masked model computes (post-norm:
LayerNorm(attention output); pre-norm: the residual stream unchanged), with no matmul. The per-layer
structure goes into the config:

* ``doge_heads``: the kept head indices (of the original numbering) of every layer;
* ``doge_ffn``: whether every layer keeps its FFN block;
* ``doge_intermediate_sizes`` (neuron-level tickets only): every layer's kept FFN neurons (0 where the
  block is gone); a pruned neuron loses its rows of the FFN input projection (both halves of a GLU) and
  its column of the output projection, so layers have different intermediate sizes;
* ``doge_base_model_type``: the architecture it came from ("bert", "deberta-v2", "modernbert", ...).

The config's ``model_type`` becomes ``doge-<base>`` (e.g. ``doge-bert``), a type registered with
`transformers`' Auto classes by `register_auto_classes` (after ``import dogetickets``, as soon as
`transformers` is imported), whose model classes are the stock ones plus a constructor that builds the
pruned shapes from the config; so
``AutoModelForSequenceClassification.from_pretrained(folder)`` (or ``ForTokenClassification``,
``AutoModel``) loads the pruned model in any process, on any device.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dogetickets.errors import DogeError
from dogetickets.models.units import (
    STRUCTURES,
    Structure,
    get_module,
    head_projections,
    head_rows,
    layer_list,
    neuron_rows,
    structure_for,
)
from dogetickets.tickets import Ticket

# base model type -> transformers class names: config, base model, sequence / token classification
_ARCHS: dict[str, tuple[str, str, str, str]] = {
    "bert": ("BertConfig", "BertModel", "BertForSequenceClassification", "BertForTokenClassification"),
    "roberta": (
        "RobertaConfig",
        "RobertaModel",
        "RobertaForSequenceClassification",
        "RobertaForTokenClassification",
    ),
    "xlm-roberta": (
        "XLMRobertaConfig",
        "XLMRobertaModel",
        "XLMRobertaForSequenceClassification",
        "XLMRobertaForTokenClassification",
    ),
    "electra": (
        "ElectraConfig",
        "ElectraModel",
        "ElectraForSequenceClassification",
        "ElectraForTokenClassification",
    ),
    "camembert": (
        "CamembertConfig",
        "CamembertModel",
        "CamembertForSequenceClassification",
        "CamembertForTokenClassification",
    ),
    "distilbert": (
        "DistilBertConfig",
        "DistilBertModel",
        "DistilBertForSequenceClassification",
        "DistilBertForTokenClassification",
    ),
    "deberta-v2": (
        "DebertaV2Config",
        "DebertaV2Model",
        "DebertaV2ForSequenceClassification",
        "DebertaV2ForTokenClassification",
    ),
    "modernbert": (
        "ModernBertConfig",
        "ModernBertModel",
        "ModernBertForSequenceClassification",
        "ModernBertForTokenClassification",
    ),
}
_AUTO = ("AutoModel", "AutoModelForSequenceClassification", "AutoModelForTokenClassification")
PREFIX = "doge-"

# filled by _classes(): base type -> (config class, [model classes]); stock class name -> pruned class
_CONFIGS: dict[str, type] = {}
_BY_STOCK_NAME: dict[str, type] = {}
_BY_NAME: dict[str, type] = {}
_registered = False


# ---- modules standing in for a removed FFN block ----------------------------------------------------
class SkippedFFNOutput(nn.Module):
    """In place of a BERT-style FFN output block: LayerNorm(0 + residual), no linear layer.

    Holds the block's LayerNorm under the same name, so the state-dict keys stay those of the stock model.
    """

    def __init__(self, layer_norm: nn.LayerNorm) -> None:
        super().__init__()
        self.LayerNorm = layer_norm

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(input_tensor)


class SkippedFFN(nn.Module):
    """In place of an FFN block whose output is added to the residual (DistilBERT, ModernBERT): zeros, no
    parameters."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the stock signature
        return torch.zeros_like(input)


# ---- structure surgery -------------------------------------------------------------------------------
def _set(module: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, name = dotted.rpartition(".")
    setattr(get_module(module, parent) if parent else module, name, new)


def _parent(dotted: str) -> str:
    return dotted.rpartition(".")[0]


def _sliced_linear(lin: nn.Linear, idx: torch.Tensor, dim: int, copy: bool) -> nn.Linear:
    """A new Linear keeping `idx` of its outputs (dim 0) or inputs (dim 1)."""
    w = lin.weight
    n = len(idx)
    out_f, in_f = (n, lin.in_features) if dim == 0 else (lin.out_features, n)
    new = nn.Linear(in_f, out_f, bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    if copy:
        with torch.no_grad():
            new.weight.copy_(w.index_select(dim, idx.to(w.device)))
            if lin.bias is not None:
                b = lin.bias.index_select(0, idx.to(w.device)) if dim == 0 else lin.bias
                new.bias.copy_(b)
        new.weight.requires_grad_(w.requires_grad)
        if lin.bias is not None:
            new.bias.requires_grad_(lin.bias.requires_grad)
    return new


def _prune_heads(layer: nn.Module, s: Structure, keep: list[int], num_heads: int, head_dim: int, copy: bool) -> None:
    for path, lin in head_projections(layer, s):  # Q, K, V (or each third of a fused QKV), position projections
        _set(layer, path, _sliced_linear(lin, head_rows(lin, keep, num_heads, head_dim), 0, copy))
    idx = torch.tensor([h * head_dim + j for h in keep for j in range(head_dim)], dtype=torch.long)
    _set(layer, s.attn_out, _sliced_linear(get_module(layer, s.attn_out), idx, 1, copy))
    attn = get_module(layer, s.attention)  # the module whose forward splits heads
    for attr in ("num_attention_heads", "n_heads", "num_heads"):
        if isinstance(getattr(attn, attr, None), int):
            setattr(attn, attr, len(keep))
    if isinstance(getattr(attn, "all_head_size", None), int):
        attn.all_head_size = len(keep) * head_dim


def _remove_ffn(layer: nn.Module, s: Structure) -> None:
    ffn_in, ffn_out = _parent(s.ffn_in), _parent(s.ffn_out)
    if s.ffn_norm is not None:  # a pre-norm that only fed the block
        _set(layer, s.ffn_norm, nn.Identity())
    if ffn_in == ffn_out:  # one module computes the block, its output added to the residual outside
        _set(layer, ffn_in, SkippedFFN())
        return
    out_block = get_module(layer, ffn_out)
    norm = getattr(out_block, "LayerNorm", None)
    if not isinstance(norm, nn.LayerNorm):
        raise DogeError(f"cannot remove the FFN block of {type(layer).__name__}: no LayerNorm in its output")
    _set(layer, ffn_in, nn.Identity())
    _set(layer, ffn_out, SkippedFFNOutput(norm))


def _prune_neurons(layer: nn.Module, s: Structure, keep: list[int], copy: bool) -> None:
    ffn_in, ffn_out = get_module(layer, s.ffn_in), get_module(layer, s.ffn_out)
    rows = neuron_rows(ffn_in, keep, ffn_out.in_features)  # in every half of a GLU projection
    _set(layer, s.ffn_in, _sliced_linear(ffn_in, rows, 0, copy))
    _set(layer, s.ffn_out, _sliced_linear(ffn_out, torch.tensor(keep, dtype=torch.long), 1, copy))


def _restructure(
    model: nn.Module, heads: list[list[int]], ffn: list[bool], copy: bool, neurons: list[list[int]] | None = None
) -> None:
    """Shrink `model` in place to the kept `heads` per layer, kept `ffn` blocks and kept FFN `neurons` per
    layer (None: all)."""
    config = model.config
    s = structure_for(_base_type(config))
    num_heads = int(getattr(config, s.heads_attr))
    layers = layer_list(model, s)
    if len(heads) != len(layers) or len(ffn) != len(layers) or (neurons is not None and len(neurons) != len(layers)):
        raise DogeError(
            f"pruned structure has {len(heads)} head lists and {len(ffn)} FFN flags for {len(layers)} layers"
        )
    for i, (layer, keep, keep_ffn) in enumerate(zip(layers, heads, ffn, strict=True)):
        if list(keep) != list(range(num_heads)):
            head_dim = get_module(layer, s.attn_out).in_features // num_heads
            _prune_heads(layer, s, list(keep), num_heads, head_dim, copy)
        if not keep_ffn:
            _remove_ffn(layer, s)
        elif neurons is not None and len(neurons[i]) != get_module(layer, s.ffn_out).in_features:
            _prune_neurons(layer, s, list(neurons[i]), copy)


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The encoder's layer modules of a stock or exported model."""
    return layer_list(model, structure_for(_base_type(model.config)))


def _base_type(config: Any) -> str:
    base = getattr(config, "doge_base_model_type", None) or config.model_type
    return base[len(PREFIX) :] if base.startswith(PREFIX) else base


def is_pruned(model_or_config: Any) -> bool:
    """Whether a model (or config) is an exported pruned one."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "doge_heads", None) is not None


# ---- classes and Auto registration -------------------------------------------------------------------
def _classes() -> None:
    """Build the doge-<base> config and model classes (once)."""
    if _CONFIGS:
        return
    import transformers

    for base, (cfg_name, *model_names) in _ARCHS.items():
        stock_cfg = getattr(transformers, cfg_name)
        cfg_cls = type(f"Doge{cfg_name}", (stock_cfg,), {"model_type": PREFIX + base, "__module__": __name__})
        _CONFIGS[base] = cfg_cls
        for name in model_names:
            stock = getattr(transformers, name)

            def __init__(self: Any, config: Any, *args: Any, _stock: type = stock, **kwargs: Any) -> None:
                _stock.__init__(self, config, *args, **kwargs)
                if is_pruned(config):
                    sizes = getattr(config, "doge_intermediate_sizes", None)
                    neurons = None if sizes is None else [list(range(n)) for n in sizes]
                    _restructure(self, config.doge_heads, config.doge_ffn, copy=False, neurons=neurons)

            cls = type(
                f"Doge{name}",
                (stock,),
                {"__init__": __init__, "config_class": cfg_cls, "__module__": __name__},
            )
            _BY_STOCK_NAME[name] = cls
            _BY_NAME[cls.__name__] = cls
            globals()[cls.__name__] = cls
        globals()[cfg_cls.__name__] = cfg_cls


def register_auto_classes() -> None:
    """Register the doge-<base> configs and models with transformers' Auto classes (idempotent)."""
    global _registered
    if _registered:
        return
    import transformers

    _classes()
    for base, cfg_cls in _CONFIGS.items():
        transformers.AutoConfig.register(PREFIX + base, cfg_cls, exist_ok=True)
        for auto_name, model_name in zip(_AUTO, _ARCHS[base][1:], strict=True):
            getattr(transformers, auto_name).register(cfg_cls, _BY_STOCK_NAME[model_name], exist_ok=True)
    _registered = True


# ---- public API ---------------------------------------------------------------------------------------
def check_ticket(
    ticket: Ticket, num_layers: int, num_heads: int, where: str = "ticket", intermediate_size: int | None = None
) -> None:
    """A one-line DogeError if `ticket` names a layer, head or FFN neuron a model of this shape does not have
    (neurons are checked against `intermediate_size` when given)."""
    for layer, heads in ticket.pruned_heads.items():
        try:
            li = int(layer)
        except ValueError:
            raise DogeError(f"{where}: pruned_heads key '{layer}' is not a layer index") from None
        if not 0 <= li < num_layers:
            raise DogeError(f"{where}: prunes heads of layer {li}, but the model has {num_layers} layers")
        for h in heads:
            if not isinstance(h, int) or not 0 <= h < num_heads:
                raise DogeError(
                    f"{where}: prunes head {h} of layer {li}, but the model has {num_heads} heads per layer"
                )
        if len(set(heads)) >= num_heads:
            raise DogeError(f"{where}: prunes every head of layer {li} (at least one must stay)")
    for li in ticket.pruned_ffn:
        if not isinstance(li, int) or not 0 <= li < num_layers:
            raise DogeError(f"{where}: prunes the FFN block of layer {li}, but the model has {num_layers} layers")
    if (ticket.num_layers, ticket.num_heads) != (num_layers, num_heads):
        raise DogeError(
            f"{where}: made for {ticket.num_layers} layers x {ticket.num_heads} heads, "
            f"the model has {num_layers} x {num_heads}"
        )
    if ticket.granularity == "block" and not ticket.pruned_neurons:
        return
    ticket.validate(where)  # FFN neurons: indices, whole blocks, granularity
    if intermediate_size is not None and ticket.intermediate_size != intermediate_size:
        raise DogeError(
            f"{where}: made for {ticket.intermediate_size} FFN neurons per layer, the model has {intermediate_size}"
        )


def kept_units(ticket: Ticket, num_layers: int, num_heads: int) -> tuple[list[list[int]], list[bool]]:
    """The kept head indices of every layer and whether every layer keeps its FFN block."""
    pruned = {int(k): set(v) for k, v in ticket.pruned_heads.items()}
    heads = [[h for h in range(num_heads) if h not in pruned.get(i, set())] for i in range(num_layers)]
    return heads, [i not in set(ticket.pruned_ffn) for i in range(num_layers)]


def kept_neurons(ticket: Ticket, num_layers: int, intermediate_size: int) -> list[list[int]] | None:
    """The kept FFN neuron indices of every layer ([] where the block is pruned); None for a block-level ticket."""
    if ticket.granularity != "neuron":
        return None
    pruned = {int(k): set(v) for k, v in ticket.pruned_neurons.items()}
    gone = set(ticket.pruned_ffn)
    return [[] if i in gone else [j for j in range(intermediate_size) if j not in pruned.get(i, set())]
            for i in range(num_layers)]


def export_pruned(model: nn.Module, ticket: Ticket, where: str = "ticket") -> nn.Module:
    """Remove the ticket's heads and FFN blocks from `model` in place; returns the same object.

    The result computes what the masked model computes (gates 0 on pruned units, their weights zeroed)
    and has exactly ``ticket.pruned_params`` fewer parameters when the ticket was made for this model.
    """
    if is_pruned(model):
        raise DogeError(f"{where}: the model is already pruned (exported); export from the unpruned model")
    config = model.config
    base = _base_type(config)
    if base not in STRUCTURES or base not in _ARCHS:
        known = ", ".join(sorted(_ARCHS))
        raise DogeError(f"cannot export a '{base}' model (supported: {known})")
    _classes()
    cls_name = type(model).__name__
    if cls_name not in _BY_STOCK_NAME:
        raise DogeError(f"cannot export a {cls_name}: only the base encoder and sequence/token classification models")
    s = structure_for(base)
    num_heads = int(getattr(config, s.heads_attr))
    layers = layer_list(model, s)
    inter = get_module(layers[0], s.ffn_out).in_features
    check_ticket(ticket, len(layers), num_heads, where, inter)

    heads, ffn = kept_units(ticket, len(layers), num_heads)
    neurons = kept_neurons(ticket, len(layers), inter)
    _restructure(model, heads, ffn, copy=True, neurons=neurons)

    # a config of its own (the caller's may be shared with other models), of class doge-<base>
    old, config = config, copy.deepcopy(config)
    config.__class__ = _CONFIGS[base]
    for module in model.modules():
        if module.__dict__.get("config") is old:
            module.config = config
    config.doge_base_model_type = base
    config.doge_heads = heads
    config.doge_ffn = ffn
    if neurons is not None:
        config.doge_intermediate_sizes = [len(kept) for kept in neurons]
    config.doge_ticket = {
        k: v for k, v in asdict(ticket).items() if k in ("method", "target_sparsity", "sparsity", "lam", "seed")
    } | {"pruned_params": ticket.pruned_params, "encoder_params": ticket.encoder_params}
    if neurons is not None:
        config.doge_ticket["granularity"] = "neuron"
    model.__class__ = _BY_STOCK_NAME[cls_name]
    return model


def _stock_class(config: Any) -> type:
    import transformers

    arch = (getattr(config, "architectures", None) or [None])[0]
    if arch in _BY_NAME:
        return _BY_NAME[arch]
    if arch is not None and hasattr(transformers, arch):
        return getattr(transformers, arch)
    return transformers.AutoModel


def load_pruned(path: str | Path, device: str | torch.device | None = None) -> nn.Module:
    """An exported model (or any saved model) by the class named in its config, in eval mode."""
    from transformers import AutoConfig

    from dogetickets.models.resolve import LOAD_ERRORS, first_line, quiet_transformers

    register_auto_classes()
    quiet_transformers()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise DogeError(f"{path}: no saved model here (config.json missing)")
    try:
        config = AutoConfig.from_pretrained(path)
        model = _stock_class(config).from_pretrained(path)
    except LOAD_ERRORS as exc:
        raise DogeError(f"{path}: the saved model cannot be read ({first_line(exc)})") from None
    if device is not None:
        model.to(device)
    return model.eval()


def _find_inputs(src: Path, model_dir: Path | None) -> tuple[Path, Path]:
    if src.is_dir():
        ticket_path, folder = src / "ticket.json", src
    elif src.is_file():
        ticket_path, folder = src, src.parent
    else:
        raise DogeError(f"{src}: no such run folder or ticket file")
    if not ticket_path.is_file():
        raise DogeError(f"{src}: no ticket.json here (give a rewind run folder or a ticket file)")
    model_dir = Path(model_dir) if model_dir is not None else folder / "model"
    if not (model_dir / "config.json").is_file():
        raise DogeError(f"{model_dir}: no saved model here (config.json missing)")
    return ticket_path, model_dir


def _is_export(folder: Path) -> bool:
    """Whether `folder` holds a model written by `export_run`."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (folder / "ticket.json").is_file() and isinstance(config, dict) and "doge_heads" in config


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DogeError(f"{out}: exists and is not a folder; --out must be a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_export(out):
        raise DogeError(f"{out}: a folder that is neither empty nor a previous export; choose another --out")


def export_run(src: str | Path, out: str | Path, model_dir: str | Path | None = None) -> Path:
    """Export a rewind run (folder with model/ and ticket.json, or its ticket file) to `out`.

    Writes the pruned model (safetensors), its tokenizer when the source has one, the ticket, and a model
    card (README.md: `dogetickets.models.card`).
    `out` must be new, empty, or a previous export (which is replaced); it is written whole or not at all.
    """
    from transformers import AutoTokenizer

    from dogetickets.models.card import run_info, write_card
    from dogetickets.models.resolve import quiet_transformers

    quiet_transformers()
    ticket_path, model_dir = _find_inputs(Path(src), Path(model_dir) if model_dir is not None else None)
    out = Path(out)
    if out.resolve() == model_dir.resolve():
        raise DogeError(f"{out}: the output folder is the source model's folder; choose another")
    _check_out(out)
    ticket = Ticket.load(ticket_path)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if "doge_heads" in config:  # a rewind trained physically pruned: already the exported model, copied
        neurons = kept_neurons(ticket, ticket.num_layers, ticket.intermediate_size)
        sizes = None if neurons is None else [len(kept) for kept in neurons]
        if [config["doge_heads"], config["doge_ffn"], config.get("doge_intermediate_sizes")] != [
            *kept_units(ticket, ticket.num_layers, ticket.num_heads), sizes
        ]:
            raise DogeError(f"{model_dir}: a pruned model whose heads and FFN units are not those of {ticket_path}")

        def write(tmp: Path) -> None:
            shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
    else:
        model = export_pruned(load_pruned(model_dir), ticket, where=str(ticket_path))
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except (OSError, ValueError, TypeError):
            tokenizer = None

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)

    # written beside `out`, then renamed: an interrupted export leaves no half-written folder
    out.parent.mkdir(parents=True, exist_ok=True)
    final = out.resolve()
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write(tmp)
        shutil.copyfile(ticket_path, tmp / "ticket.json")
        write_card(tmp, ticket, run_info(ticket_path, model_dir))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

"""Prunable units of an encoder: attention heads, FFN blocks and FFN neurons, found per architecture.

A small structure table per `model_type` (as TextPruner does) says where each layer's head projections
(query/key/value, or one fused QKV projection), attention output projection and FFN linear layers live.
Gates go in through hooks on the stock `transformers` modules, never through forked modeling code:

* a forward pre-hook on each layer's attention output projection multiplies each head's slice of
  its input by ``head_gates[b, layer, head]``;
* a forward hook on each layer's FFN output projection multiplies its output by ``ffn_gates[b, layer]``;
* with neuron gates, a forward pre-hook on each layer's FFN output projection multiplies intermediate
  neuron j (column j of its input) by ``neuron_gates[b, layer, j]``.

Gates are per example, shapes (batch, layers, heads), (batch, layers) and (batch, layers, intermediate);
a (layers, heads) / (layers,) / (layers, intermediate) gate is broadcast over the batch.

Layouts. A head projection's output rows come in chunks of (heads x head size), one chunk per projection
it fuses (Q, K and V: one each; ModernBERT's ``Wqkv``: three), and head h owns rows h*dh .. (h+1)*dh - 1 of
every chunk. The FFN input projection's rows come in chunks of the intermediate size, one per projection
it fuses (two for ModernBERT's GLU ``Wi``: input half, then gate half), and neuron j owns row j of every
chunk and column j of the output projection. So a fused QKV is sliced per head and a GLU's two halves
stay aligned, by one rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from dogetickets import methods
from dogetickets.errors import DogeError


@dataclass(frozen=True)
class Structure:
    """Dotted paths, relative to the base model (for layers) and to one layer (for the rest)."""

    layers: str
    head_in: tuple[str, ...]  # projections whose outputs are split into heads (Q, K, V or a fused QKV)
    attn_out: str
    ffn_in: str
    ffn_out: str
    heads_attr: str = "num_attention_heads"  # config attribute: number of heads
    layers_attr: str = "num_hidden_layers"  # config attribute: number of layers
    head_extra: tuple[str, ...] = ()  # per-head projections only some configurations have
    ffn_norm: str | None = None  # a norm only the FFN block reads (pre-norm): owned by the block

    @property
    def attention(self) -> str:
        """The module whose forward splits heads (its head-count attributes follow head pruning)."""
        return self.head_in[0].rpartition(".")[0]


_BERT_LIKE = Structure(
    layers="encoder.layer",
    head_in=("attention.self.query", "attention.self.key", "attention.self.value"),
    attn_out="attention.output.dense",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
)

STRUCTURES: dict[str, Structure] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "camembert": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": Structure(
        layers="transformer.layer",
        head_in=("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        attn_out="attention.out_lin",
        ffn_in="ffn.lin1",
        ffn_out="ffn.lin2",
        heads_attr="n_heads",
        layers_attr="n_layers",
    ),
    # DeBERTa-v2 and -v3; with relative attention and share_att_key = false, each layer has its own
    # position projections, split into heads like the content ones
    "deberta-v2": Structure(
        layers="encoder.layer",
        head_in=("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj"),
        attn_out="attention.output.dense",
        ffn_in="intermediate.dense",
        ffn_out="output.dense",
        head_extra=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
    ),
    # fused QKV, GLU MLP (Wi = input and gate halves), pre-norm layers; local and global attention
    # layers have the same units
    "modernbert": Structure(
        layers="layers",
        head_in=("attn.Wqkv",),
        attn_out="attn.Wo",
        ffn_in="mlp.Wi",
        ffn_out="mlp.Wo",
        ffn_norm="mlp_norm",
    ),
}

# model types known not to fit: why, for the error message
_UNFIT = {
    "albert": "its layers share one set of weights",
    "deberta": "DeBERTa-v1 interleaves Q, K and V per head in one projection; DeBERTa-v2/v3 are supported",
}


def structure_for(model_type: str) -> Structure:
    """The unit table of `model_type`; a one-line DogeError naming the supported types if there is none."""
    if model_type not in STRUCTURES:
        known = ", ".join(sorted(STRUCTURES))
        why = _UNFIT.get(model_type, "doge tickets need an encoder with per-layer attention heads and FFN blocks")
        raise DogeError(f"model type '{model_type}' has no unit table ({why}; supported: {known})")
    return STRUCTURES[model_type]


def get_module(module: nn.Module, dotted: str) -> nn.Module:
    """The submodule at a dotted path ("attention.output.dense")."""
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def find_module(module: nn.Module, dotted: str) -> nn.Module | None:
    """The submodule at a dotted path, or None where there is none (or None stands in for it)."""
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def layer_list(model: nn.Module, structure: Structure) -> list[nn.Module]:
    """The encoder's layers, in order."""
    return list(get_module(model.base_model, structure.layers))


def head_projections(layer: nn.Module, s: Structure) -> list[tuple[str, nn.Linear]]:
    """(path, module) of every projection of `layer` split into heads: `head_in`, then the `head_extra` present."""
    out = [(p, get_module(layer, p)) for p in s.head_in]
    out += [(p, m) for p in s.head_extra if isinstance(m := find_module(layer, p), nn.Linear)]
    return out  # type: ignore[return-value]


def head_rows(lin: nn.Linear, heads: list[int], num_heads: int, head_dim: int) -> torch.Tensor:
    """Row indices of `heads` in a head projection: in every chunk of (heads x head size) rows."""
    chunk = num_heads * head_dim
    if lin.out_features % chunk:
        raise DogeError(f"a head projection has {lin.out_features} outputs, not a multiple of {num_heads} x {head_dim}")
    chunks = range(lin.out_features // chunk)
    idx = [c * chunk + h * head_dim + j for c in chunks for h in heads for j in range(head_dim)]
    return torch.tensor(idx, dtype=torch.long)


def neuron_rows(lin: nn.Linear, neurons: list[int], intermediate: int) -> torch.Tensor:
    """Row indices of `neurons` in an FFN input projection: in every chunk of `intermediate` rows."""
    if lin.out_features % intermediate:
        raise DogeError(f"an FFN input projection has {lin.out_features} outputs, not a multiple of {intermediate}")
    idx = [c * intermediate + j for c in range(lin.out_features // intermediate) for j in neurons]
    return torch.tensor(idx, dtype=torch.long)


def _rows_params(lin: nn.Linear, rows: int) -> int:
    return rows * (lin.in_features + (lin.bias is not None))


Gates = tuple[torch.Tensor | None, ...]
GRANULARITIES = methods.GRANULARITIES  # FFN units: whole blocks, or single intermediate neurons


class Units:
    """The heads, FFN blocks and FFN neurons of one (unpruned) model, with their modules and sizes."""

    def __init__(self, model: nn.Module) -> None:
        config = model.config
        base_type = getattr(config, "doge_base_model_type", None) or config.model_type
        self.structure = structure_for(base_type)
        self.model = model
        self.layers: list[nn.Module] = layer_list(model, self.structure)
        self.num_layers = len(self.layers)
        self.num_heads = int(getattr(config, self.structure.heads_attr))
        out = self.layer_module(0, "attn_out")
        self.hidden_size = out.out_features
        kept = getattr(config, "doge_heads", None)  # an exported model: layer 0 may have fewer heads
        self.head_dim = out.in_features // (len(kept[0]) if kept else self.num_heads)
        self.intermediate_size = self.layer_module(0, "ffn_out").in_features

    def layer_module(self, layer: int, which: str) -> nn.Linear:
        return get_module(self.layers[layer], getattr(self.structure, which))  # type: ignore[return-value]

    def head_projections(self, layer: int) -> list[nn.Linear]:
        return [m for _, m in head_projections(self.layers[layer], self.structure)]

    def ffn_norm(self, layer: int) -> nn.Module | None:
        s = self.structure
        return None if s.ffn_norm is None else get_module(self.layers[layer], s.ffn_norm)

    # ---- parameter accounting -------------------------------------------------------------
    def head_params(self) -> int:
        """A head owns its rows of every head projection (Q, K, V, or a fused QKV, and any per-head position
        projections; weights and biases) and its columns of the output projection."""
        dh = self.head_dim
        chunk = self.num_heads * dh
        rows = sum(_rows_params(lin, lin.out_features // chunk * dh) for lin in self.head_projections(0))
        return rows + self.hidden_size * dh

    def ffn_params(self) -> int:
        """An FFN block owns both its linear layers (weights and biases) and a pre-norm only it reads."""
        mods = [self.layer_module(0, "ffn_in"), self.layer_module(0, "ffn_out"), self.ffn_norm(0)]
        return sum(p.numel() for m in mods if m is not None for p in m.parameters())

    def neuron_params(self) -> int:
        """An FFN neuron owns its rows of the input projection (both halves of a GLU; weights and biases) and
        its column of the output projection. The output bias and a pre-norm belong to the block only."""
        lin = self.layer_module(0, "ffn_in")
        return _rows_params(lin, lin.out_features // self.intermediate_size) + self.hidden_size

    def encoder_params(self) -> int:
        """All parameters of the encoder's layers (what sparsity is a share of)."""
        return sum(p.numel() for layer in self.layers for p in layer.parameters())

    # ---- masks and gates --------------------------------------------------------------------
    @contextmanager
    def gated(
        self, head_gates: torch.Tensor, ffn_gates: torch.Tensor | None, neuron_gates: torch.Tensor | None = None
    ) -> Iterator[None]:
        """Run the model with gates applied through hooks; hooks are removed on exit.

        `ffn_gates` (per FFN block) and `neuron_gates` (per FFN neuron) may each be None (no gate); with both,
        a neuron's output is scaled by its neuron gate and its block's gate. ``units.gated(*ticket.masks())``
        applies a ticket of either granularity.
        """
        handles = self.install_gates(lambda: (head_gates, ffn_gates, neuron_gates))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def install_gates(self, get_gates: Callable[[], Gates]) -> list:
        """Install persistent gate hooks; `get_gates()` returns (head_gates, ffn_gates[, neuron_gates]) at
        call time, any of them None for no gate."""
        handles = []
        h, dh = self.num_heads, self.head_dim

        def gate(kind: int) -> torch.Tensor | None:
            gates = get_gates()
            return gates[kind] if len(gates) > kind else None

        for i in range(self.num_layers):

            def head_hook(module: nn.Module, args: tuple, i: int = i) -> tuple | None:
                gates = gate(0)
                if gates is None:
                    return None
                (x, *rest) = args
                g = gates[..., i, :] if gates.dim() == 3 else gates[i]  # (B, H) or (H,)
                shape = (*x.shape[:-1], h, dh)
                if g.dim() == 2:  # per example: (B, 1..., H, 1)
                    g = g.view(g.shape[0], *([1] * (x.dim() - 2)), h, 1)
                else:
                    g = g.view(h, 1)
                x = (x.view(shape) * g.to(x.dtype)).view(x.shape)
                return (x, *rest)

            def neuron_hook(module: nn.Module, args: tuple, i: int = i) -> tuple | None:
                gates = gate(2)
                if gates is None:
                    return None
                (x, *rest) = args
                g = gates[:, i] if gates.dim() == 3 else gates[i]  # (B, I) or (I,)
                if g.dim() == 2:  # per example: (B, 1..., I)
                    g = g.view(g.shape[0], *([1] * (x.dim() - 2)), g.shape[-1])
                return (x * g.to(x.dtype), *rest)

            def ffn_hook(module: nn.Module, args: tuple, out: torch.Tensor, i: int = i) -> torch.Tensor | None:
                gates = gate(1)
                if gates is None:
                    return None
                g = gates[..., i]
                if g.dim() == 1:  # per example
                    g = g.view(g.shape[0], *([1] * (out.dim() - 1)))
                return out * g.to(out.dtype)

            ffn_out = self.layer_module(i, "ffn_out")
            handles.append(self.layer_module(i, "attn_out").register_forward_pre_hook(head_hook))
            handles.append(ffn_out.register_forward_pre_hook(neuron_hook))
            handles.append(ffn_out.register_forward_hook(ffn_hook))
        return handles

    def weight_masks(
        self, head_mask: torch.Tensor, ffn_mask: torch.Tensor | None, neuron_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """0/1 masks for every parameter a pruned unit owns, keyed by parameter name (`ffn_mask` (layers,)
        and `neuron_mask` (layers, intermediate) may be None: no FFN unit pruned of that kind)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        masks: dict[str, torch.Tensor] = {}
        dh, num_heads, inter = self.head_dim, self.num_heads, self.intermediate_size

        def put(p: torch.Tensor | None, m: torch.Tensor) -> None:
            if p is not None:
                name = names[id(p)]
                masks[name] = masks[name] * m if name in masks else m.expand_as(p).clone()

        for i in range(self.num_layers):
            rows = head_mask[i].repeat_interleave(dh)  # (H*dh,)
            for lin in self.head_projections(i):
                chunk_rows = rows.repeat(lin.out_features // (num_heads * dh))
                put(lin.weight, chunk_rows[:, None])
                put(lin.bias, chunk_rows)
            put(self.layer_module(i, "attn_out").weight, rows[None, :])
            ffn_in, ffn_out = self.layer_module(i, "ffn_in"), self.layer_module(i, "ffn_out")
            if neuron_mask is not None:
                keep = neuron_mask[i].to(ffn_out.weight.dtype)
                chunk_rows = keep.repeat(ffn_in.out_features // inter)
                put(ffn_in.weight, chunk_rows[:, None])
                put(ffn_in.bias, chunk_rows)
                put(ffn_out.weight, keep[None, :])
            if ffn_mask is not None:
                keep_block = ffn_mask[i].float()
                norm = self.ffn_norm(i)
                for m in (ffn_in, ffn_out, norm):
                    for p in m.parameters() if m is not None else ():
                        put(p, keep_block)
        return masks


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned parameters in place (after loading and after every optimizer step)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            p = params[name]
            p.mul_(m.to(device=p.device, dtype=p.dtype))

"""Prunable units of an encoder: attention heads and FFN blocks, found per architecture.

A small structure table per `model_type` (as TextPruner does) says where each layer's query/key/value,
attention output projection and FFN linear layers live. Gates go in through hooks on the stock
`transformers` modules, never through forked modeling code:

* a forward pre-hook on each layer's attention output projection multiplies each head's slice of
  its input by ``head_gates[b, layer, head]``;
* a forward hook on each layer's FFN output projection multiplies its output by ``ffn_gates[b, layer]``.

Gates are per example, shapes (batch, layers, heads) and (batch, layers); a (layers, heads) /
(layers,) gate is broadcast over the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from dogetickets.errors import DogeError


@dataclass(frozen=True)
class Structure:
    """Dotted paths, relative to the base model (for layers) and to one layer (for the rest)."""

    layers: str
    query: str
    key: str
    value: str
    attn_out: str
    ffn_in: str
    ffn_out: str
    heads_attr: str  # config attribute: number of heads
    layers_attr: str  # config attribute: number of layers


_BERT_LIKE = Structure(
    layers="encoder.layer",
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    attn_out="attention.output.dense",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
    heads_attr="num_attention_heads",
    layers_attr="num_hidden_layers",
)

STRUCTURES: dict[str, Structure] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": Structure(
        layers="transformer.layer",
        query="attention.q_lin",
        key="attention.k_lin",
        value="attention.v_lin",
        attn_out="attention.out_lin",
        ffn_in="ffn.lin1",
        ffn_out="ffn.lin2",
        heads_attr="n_heads",
        layers_attr="n_layers",
    ),
}


def structure_for(model_type: str) -> Structure:
    if model_type not in STRUCTURES:
        known = ", ".join(sorted(STRUCTURES))
        raise DogeError(f"model type '{model_type}' has no unit table (supported: {known})")
    return STRUCTURES[model_type]


def get_module(module: nn.Module, dotted: str) -> nn.Module:
    """The submodule at a dotted path ("attention.output.dense")."""
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def layer_list(model: nn.Module, structure: Structure) -> list[nn.Module]:
    """The encoder's layers, in order."""
    return list(get_module(model.base_model, structure.layers))


class Units:
    """The heads and FFN blocks of one model, with their modules and sizes."""

    def __init__(self, model: nn.Module) -> None:
        config = model.config
        base_type = getattr(config, "doge_base_model_type", None) or config.model_type
        self.structure = structure_for(base_type)
        self.model = model
        self.layers: list[nn.Module] = layer_list(model, self.structure)
        self.num_layers = len(self.layers)
        self.num_heads = int(getattr(config, self.structure.heads_attr))
        hidden = self.layer_module(0, "attn_out").out_features
        self.hidden_size = hidden
        self.head_dim = hidden // self.num_heads
        self.intermediate_size = self.layer_module(0, "ffn_in").out_features

    def layer_module(self, layer: int, which: str) -> nn.Linear:
        return get_module(self.layers[layer], getattr(self.structure, which))  # type: ignore[return-value]

    # ---- parameter accounting -------------------------------------------------------------
    def head_params(self) -> int:
        """A head owns its rows of Q, K, V (weights and biases) and its columns of O."""
        d, dh = self.hidden_size, self.head_dim
        return 3 * (d * dh + dh) + d * dh

    def ffn_params(self) -> int:
        """An FFN block owns both its linear layers, weights and biases."""
        d, di = self.hidden_size, self.intermediate_size
        return d * di + di + di * d + d

    def encoder_params(self) -> int:
        """All parameters of the encoder's layers (what sparsity is a share of)."""
        return sum(p.numel() for layer in self.layers for p in layer.parameters())

    # ---- masks and gates --------------------------------------------------------------------
    @contextmanager
    def gated(self, head_gates: torch.Tensor, ffn_gates: torch.Tensor) -> Iterator[None]:
        """Run the model with gates applied through hooks; hooks are removed on exit."""
        handles = self.install_gates(lambda: (head_gates, ffn_gates))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def install_gates(self, get_gates) -> list:  # noqa: ANN001 - a callable returning the gates
        """Install persistent gate hooks; `get_gates()` returns (head_gates, ffn_gates) at call time."""
        handles = []
        h, dh = self.num_heads, self.head_dim
        for i in range(self.num_layers):

            def pre_hook(module: nn.Module, args: tuple, i: int = i) -> tuple:
                (x, *rest) = args
                gates = get_gates()[0]
                g = gates[..., i, :] if gates.dim() == 3 else gates[i]  # (B, H) or (H,)
                shape = (*x.shape[:-1], h, dh)
                if g.dim() == 2:  # per example: (B, 1..., H, 1)
                    g = g.view(g.shape[0], *([1] * (x.dim() - 2)), h, 1)
                else:
                    g = g.view(h, 1)
                x = (x.view(shape) * g.to(x.dtype)).view(x.shape)
                return (x, *rest)

            def ffn_hook(module: nn.Module, args: tuple, out: torch.Tensor, i: int = i) -> torch.Tensor:
                gates = get_gates()[1]
                g = gates[..., i]
                if g.dim() == 1:  # per example
                    g = g.view(g.shape[0], *([1] * (out.dim() - 1)))
                return out * g.to(out.dtype)

            handles.append(self.layer_module(i, "attn_out").register_forward_pre_hook(pre_hook))
            handles.append(self.layer_module(i, "ffn_out").register_forward_hook(ffn_hook))
        return handles

    def weight_masks(self, head_mask: torch.Tensor, ffn_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """0/1 masks for every parameter a pruned unit owns, keyed by parameter name."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        masks: dict[str, torch.Tensor] = {}
        dh = self.head_dim
        for i in range(self.num_layers):
            rows = head_mask[i].repeat_interleave(dh)  # (H*dh,)
            for which in ("query", "key", "value"):
                lin = self.layer_module(i, which)
                masks[names[id(lin.weight)]] = rows[:, None].expand_as(lin.weight).clone()
                masks[names[id(lin.bias)]] = rows.clone()
            out = self.layer_module(i, "attn_out")
            masks[names[id(out.weight)]] = rows[None, :].expand_as(out.weight).clone()
            keep = float(ffn_mask[i])
            for which in ("ffn_in", "ffn_out"):
                lin = self.layer_module(i, which)
                for p in (lin.weight, lin.bias):
                    masks[names[id(p)]] = torch.full_like(p, keep)
        return masks


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned parameters in place (after loading and after every optimizer step)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            p = params[name]
            p.mul_(m.to(device=p.device, dtype=p.dtype))

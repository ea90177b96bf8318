"""Analyses of a fine-tuned model without a sweep: the paper's pilot study (Fig. 1/6).

For the [CLS] position of every FFN block, how often each of the first `neurons` intermediate neurons
is activated (GELU input above -2, the paper's definition) by each training domain's examples.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dogetickets.data.batching import batch_indices, collate, model_inputs
from dogetickets.data.tasks import Encoded
from dogetickets.models.units import Units
from dogetickets.progress import progress_bar

ACTIVATED_ABOVE = -2.0


@torch.inference_mode()
def activation_frequencies(
    model: nn.Module,
    data: Encoded,
    batch_size: int,
    pad_id: int,
    neurons: int = 35,
    device: torch.device | str = "cpu",
    show_progress: bool = True,
) -> dict[str, np.ndarray]:
    """domain -> (layers, neurons) share of its examples whose [CLS] pre-GELU value exceeds -2."""
    model.eval()
    units = Units(model)
    L = units.num_layers
    counts = np.zeros((len(data.domain_names), L, neurons))
    current: list[torch.Tensor | None] = [None] * L

    def hook(layer: int):  # noqa: ANN202
        def grab(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            current[layer] = out[:, 0, :neurons]  # [CLS] is position 0; the input of the GELU

        return grab

    handles = [units.layer_module(i, "ffn_in").register_forward_hook(hook(i)) for i in range(L)]
    try:
        with progress_bar("pilot study", total=len(data), enabled=show_progress) as advance:
            for idx in batch_indices(data.lengths, batch_size, shuffle=False):
                batch = collate(data, idx, pad_id)
                model(**{k: v.to(device) for k, v in model_inputs(batch).items()})
                active = torch.stack([c for c in current], 1) > ACTIVATED_ABOVE  # type: ignore[misc]
                np.add.at(counts, data.domain[idx], active.cpu().numpy())
                advance(len(idx))
    finally:
        for h in handles:
            h.remove()
    sizes = np.bincount(data.domain, minlength=len(data.domain_names)).astype(float)
    return {name: counts[d] / max(sizes[d], 1.0) for d, name in enumerate(data.domain_names)}

"""Tickets: which heads and FFN blocks are pruned, chosen by score (doge, winning) or at random.

Sparsity is the share of the encoder layers' parameters removed; a head owns its slices of Q, K, V,
O (and the Q, K, V biases), an FFN block both its linear layers. At least one head is kept in every
layer. The allocation decides how the target is split between heads and FFN blocks:

- ``global``: heads and FFN blocks on one list, lowest score first; a unit that would carry the
  achieved sparsity past the target is skipped and the next one tried. When the heads run out before
  the target is reached (high sparsity), the lowest-scored skipped FFN block is taken and the
  highest-scored pruned heads are given back while the target stays reached. Head and FFN scores are
  normalized differently and an FFN block is ~24 heads (BERT), so at low sparsity this prunes mostly heads.
- ``proportional``: each kind loses the target's share of its own parameters: round(target x layers)
  FFN blocks, and heads fill the rest of the target.
- ``balanced``: the released scripts' schedule, half of the pruned parameters from each kind:
  round(half the target / FFN block) FFN blocks, and heads fill the rest. On BERT-base this gives
  23 of the scripts' 24 (heads, FFN blocks) pairs at their own sparsities (see the tests).

The default is ``proportional`` (methods.DEFAULT_ALLOCATION), the one the study's in-domain dev chose.

In both split allocations the FFN count is the nearest (halves up) to its share for which the heads,
rounded to the nearest head, fill the rest of the target (at most H-1 per layer); if none can, the
count that lands closest. So every allocation lands within one head of the target. Heads are then
ranked among heads only and FFN blocks among FFN blocks only, lowest score first, ties by position.

Granularity ``neuron``: the FFN units are single intermediate neurons (a neuron owns its rows of the FFN
input projection, both halves of a GLU, and its column of the output projection; the output bias and a
pre-norm stay with the block). The FFN scores are then (layers, intermediate) and every allocation above
works with neurons in place of blocks (``proportional``: round(target x all neurons) neurons; ``balanced``:
half the pruned parameters from neurons); heads stay heads. A layer whose neurons would all be pruned loses
its whole block instead (it is listed in ``pruned_ffn``, with the block's parameters). The ticket lists the
pruned neurons per layer (``pruned_neurons``); block-level tickets are written exactly as before.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from dogetickets import methods as registry
from dogetickets.errors import DogeError
from dogetickets.io import atomic_write_text
from dogetickets.methods import ALLOCATIONS
from dogetickets.models.units import GRANULARITIES

if TYPE_CHECKING:
    from dogetickets.scoring import UnitScores

_NEURON_FIELDS = ("pruned_neurons", "granularity", "intermediate_size")  # not written in block-level tickets


@dataclass(frozen=True)
class Shape:
    """What ticket selection needs to know about a model."""

    num_layers: int
    num_heads: int
    head_params: int
    ffn_params: int
    encoder_params: int
    neuron_params: int = 0  # what one FFN neuron owns (granularity "neuron")
    intermediate_size: int = 0  # FFN neurons per layer

    @classmethod
    def of(cls, units: Any) -> Shape:
        return cls(
            units.num_layers, units.num_heads, units.head_params(), units.ffn_params(), units.encoder_params(),
            units.neuron_params(), units.intermediate_size,
        )

    @classmethod
    def bert(
        cls, layers: int, hidden: int, heads: int, intermediate: int
    ) -> Shape:  # for accounting without a model
        dh = hidden // heads
        head = 3 * (hidden * dh + dh) + hidden * dh
        ffn = 2 * hidden * intermediate + intermediate + hidden
        attn = 4 * hidden * hidden + 4 * hidden + 2 * hidden  # QKVO + biases + LayerNorm
        layer = attn + ffn + 2 * hidden  # + output LayerNorm
        return cls(layers, heads, head, ffn, layers * layer, 2 * hidden + 1, intermediate)


@dataclass
class Ticket:
    method: str  # random | winning | doge | none
    target_sparsity: float
    sparsity: float  # achieved
    pruned_heads: dict[str, list[int]]  # layer index (as a string, JSON keys) -> head indices
    pruned_ffn: list[int]
    num_layers: int
    num_heads: int
    lam: float | None = None
    seed: int | None = None
    pruned_params: int = 0
    encoder_params: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    allocation: str = "global"  # how the target was split between heads and FFN blocks (ALLOCATIONS)
    # granularity "neuron": layer index (as a string) -> pruned FFN neuron indices, of `intermediate_size`
    pruned_neurons: dict[str, list[int]] = field(default_factory=dict)
    granularity: str = "block"  # GRANULARITIES
    intermediate_size: int = 0  # FFN neurons per layer (neuron tickets; 0 in block-level ones)

    @property
    def name(self) -> str:
        return ticket_name(self.method, self.target_sparsity, self.lam)

    def masks(self) -> tuple[torch.Tensor, ...]:
        """0/1 float masks, 1 keeps the unit: (layers, heads) and (layers,) FFN blocks; a neuron-level ticket
        adds (layers, intermediate) FFN neurons. In the order `Units.gated` and `Units.weight_masks` take them:
        ``units.gated(*ticket.masks())``."""
        head = torch.ones(self.num_layers, self.num_heads)
        for layer, heads in self.pruned_heads.items():
            head[int(layer), heads] = 0.0
        ffn = torch.ones(self.num_layers)
        ffn[self.pruned_ffn] = 0.0
        if self.granularity != "neuron":
            return head, ffn
        neurons = torch.ones(self.num_layers, self.intermediate_size)
        for layer, idx in self.pruned_neurons.items():
            neurons[int(layer), idx] = 0.0
        return head, ffn, neurons

    def units(self) -> dict[str, Any]:
        """What a rewind of this ticket depends on: the pruned units, in a canonical form (tickets of other
        methods, lambdas or allocations that prune the same units train the same model)."""
        return {
            "granularity": self.granularity,
            "heads": sorted((int(li), int(h)) for li, hs in self.pruned_heads.items() for h in hs),
            "ffn": sorted(int(li) for li in self.pruned_ffn),
            "neurons": sorted((int(li), int(j)) for li, js in self.pruned_neurons.items() for j in js),
        }

    def to_dict(self) -> dict[str, Any]:
        """The ticket as written to JSON (a block-level ticket without the neuron fields, as before them)."""
        raw = asdict(self)
        if self.granularity == "block" and not self.pruned_neurons:
            for key in _NEURON_FIELDS:
                raw.pop(key)
        return raw

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Ticket:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
            ticket = cls(**raw)
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise DogeError(f"{path}: not a ticket file ({exc})") from None
        ticket.validate(path)
        return ticket

    def validate(self, where: Any = "ticket") -> None:
        if self.allocation not in ALLOCATIONS:
            raise DogeError(f"{where}: unknown allocation {self.allocation!r} (one of {', '.join(ALLOCATIONS)})")
        for layer, heads in self.pruned_heads.items():
            li = int(layer)
            if not 0 <= li < self.num_layers:
                raise DogeError(f"{where}: layer {li} does not exist (the model has {self.num_layers})")
            for h in heads:
                if not 0 <= h < self.num_heads:
                    raise DogeError(f"{where}: head {h} of layer {li} does not exist ({self.num_heads} heads)")
            if len(set(heads)) >= self.num_heads:
                raise DogeError(f"{where}: layer {li} has every head pruned (at least one must stay)")
        for li in self.pruned_ffn:
            if not 0 <= li < self.num_layers:
                raise DogeError(f"{where}: FFN block {li} does not exist (the model has {self.num_layers})")
        if self.granularity not in GRANULARITIES:
            raise DogeError(f"{where}: unknown granularity {self.granularity!r} (one of {', '.join(GRANULARITIES)})")
        if self.pruned_neurons and self.granularity != "neuron":
            raise DogeError(f"{where}: prunes FFN neurons but its granularity is {self.granularity!r}, not 'neuron'")
        n = self.intermediate_size
        if self.granularity == "neuron" and n <= 0:
            raise DogeError(f"{where}: a neuron-level ticket needs intermediate_size (FFN neurons per layer)")
        for layer, idx in self.pruned_neurons.items():
            li = int(layer)
            if not 0 <= li < self.num_layers:
                raise DogeError(f"{where}: layer {li} does not exist (the model has {self.num_layers})")
            if li in self.pruned_ffn:
                raise DogeError(f"{where}: prunes neurons of layer {li}, whose whole FFN block is pruned")
            for j in idx:
                if not 0 <= j < n:
                    raise DogeError(f"{where}: FFN neuron {j} of layer {li} does not exist ({n} per layer)")
            if len(set(idx)) >= n:
                raise DogeError(f"{where}: layer {li} has every FFN neuron pruned (list it in pruned_ffn instead)")


def ticket_name(method: str, sparsity: float, lam: float | None = None) -> str:
    """'doge-s10-l100': method, target sparsity in %, and lambda for a method that takes one (none when
    the lambda is chosen on dev at selection: tickets.lambda_choice = "preview")."""
    name = f"{method}-s{round(sparsity * 100, 2):g}"
    if lam is not None and registry.is_known(method) and registry.get(method).uses_lambda:
        name += f"-l{lam:g}"
    return name


class TicketSpec(NamedTuple):
    """Which ticket: a ticket method, its target sparsity and its lambda (None: the method takes none, or
    the lambda is chosen on dev). A run directory names the ticket after it (`name`)."""

    method: str
    sparsity: float
    lam: float | None = None

    @property
    def name(self) -> str:
        return ticket_name(self.method, self.sparsity, self.lam)


def rank(scores: UnitScores, method: str, lam: float | None = None, variance: str = "paper",
         granularity: str = "block") -> tuple[np.ndarray, np.ndarray]:
    """The (head, FFN) scores a ticket method prunes the lowest of, as the method registry says: the
    pooled score (winning), the lowest domain's (worst), or mean - lambda x variance over domains (doge,
    with the method's variance, `variance` when it has none of its own). Not for random tickets."""
    m = registry.get(method)
    if m.ranking == "pooled":
        return scores.winning(granularity)
    if m.ranking == "worst":
        return scores.worst(granularity)
    if m.ranking == "domain_general":
        return scores.doge(lam or 0.0, m.variance_for(variance), granularity=granularity)
    raise DogeError(f"method {method!r} ranks no scores (ranking {m.ranking!r})")


def choose(
    method: str,
    sparsity: float,
    shape: Shape,
    scores: UnitScores | None = None,
    lam: float | None = None,
    *,
    seed: int = 0,
    allocation: str = registry.DEFAULT_ALLOCATION,
    variance: str = "paper",
    granularity: str = "block",
) -> Ticket:
    """The ticket of `method` at `sparsity`: random units drawn from `seed`, or the lowest-ranked units by
    `rank`, under the method's allocation (`allocation` when it has none of its own). The one way a ticket
    is chosen: by the run's ticket stage and by the Python API (`dogetickets.select_ticket`)."""
    m = registry.get(method)
    alloc = m.allocation_for(allocation)
    if scores is None or m.ranking == "random":
        return random_ticket(shape, sparsity, seed, allocation=alloc, granularity=granularity, method=method)
    head, ffn = rank(scores, method, lam, variance, granularity)
    return select(np.asarray(head), np.asarray(ffn), shape, sparsity, method,
                  lam=float(lam) if m.uses_lambda and lam is not None else None, seed=seed, allocation=alloc,
                  granularity=granularity)


def select(
    head_scores: np.ndarray,
    ffn_scores: np.ndarray,
    shape: Shape,
    target: float,
    method: str,
    lam: float | None = None,
    seed: int | None = None,
    *,
    allocation: str = registry.DEFAULT_ALLOCATION,
    granularity: str = "block",
) -> Ticket:
    """Prune the lowest-scored units for `target`, split between heads and FFN blocks by `allocation`.

    With granularity "neuron", `ffn_scores` are (layers, intermediate) FFN neuron scores and the FFN units
    are neurons (see the module docstring)."""
    L, H = shape.num_layers, shape.num_heads
    if allocation not in ALLOCATIONS:
        raise DogeError(f"unknown allocation {allocation!r} (one of {', '.join(ALLOCATIONS)})")
    if granularity not in GRANULARITIES:
        raise DogeError(f"unknown granularity {granularity!r} (one of {', '.join(GRANULARITIES)})")
    head_scores = np.asarray(head_scores, dtype=np.float64)
    ffn_scores = np.asarray(ffn_scores, dtype=np.float64)
    ffn_shape = (L,) if granularity == "block" else (L, shape.intermediate_size)
    if head_scores.shape != (L, H) or ffn_scores.shape != ffn_shape:
        raise DogeError(
            f"scores have shapes {head_scores.shape} and {ffn_scores.shape}, the model ({L}, {H}) and {ffn_shape}"
        )
    goal = target * shape.encoder_params
    if granularity == "neuron":
        return _select_neurons(head_scores, ffn_scores, shape, target, goal, method, lam, seed, allocation)
    if allocation == "global":
        pruned_heads, pruned_ffn = _select_global(head_scores, ffn_scores, shape, goal)
    else:
        ffn_share = target * L if allocation == "proportional" else goal / (2 * shape.ffn_params)
        n_heads, n_ffn = split_target(shape, goal, ffn_share)
        pruned_heads = _lowest_heads(head_scores, n_heads)
        pruned_ffn = sorted(range(L), key=lambda li: (ffn_scores[li], li))[:n_ffn]
    return _ticket(shape, method, target, lam, seed, allocation, pruned_heads, pruned_ffn)


def _ticket(
    shape: Shape,
    method: str,
    target: float,
    lam: float | None,
    seed: int | None,
    allocation: str,
    pruned_heads: dict[int, list[int]],
    pruned_ffn: list[int],
    pruned_neurons: dict[int, list[int]] | None = None,
) -> Ticket:
    """The Ticket of a selection, its pruned parameters counted from the shape (neurons: a neuron ticket)."""
    pruned = (sum(map(len, pruned_heads.values())) * shape.head_params + len(pruned_ffn) * shape.ffn_params
              + sum(map(len, (pruned_neurons or {}).values())) * shape.neuron_params)
    neuron_fields: dict[str, Any] = {}
    if pruned_neurons is not None:
        neuron_fields = {"pruned_neurons": {str(li): sorted(js) for li, js in sorted(pruned_neurons.items())},
                         "granularity": "neuron", "intermediate_size": shape.intermediate_size}
    return Ticket(
        method=method,
        target_sparsity=float(target),
        sparsity=pruned / shape.encoder_params,
        pruned_heads={str(li): sorted(hs) for li, hs in sorted(pruned_heads.items())},
        pruned_ffn=sorted(pruned_ffn),
        num_layers=shape.num_layers,
        num_heads=shape.num_heads,
        lam=lam,
        seed=seed,
        pruned_params=pruned,
        encoder_params=shape.encoder_params,
        allocation=allocation,
        **neuron_fields,
    )


def split_target(shape: Shape, goal: float, ffn_share: float, *, neurons: bool = False) -> tuple[int, int]:
    """(heads, FFN blocks) for `goal` pruned parameters: the FFN count nearest `ffn_share`, heads fill the rest.
    With `neurons`, (heads, FFN neurons)."""
    max_heads = shape.num_layers * (shape.num_heads - 1)
    unit = shape.neuron_params if neurons else shape.ffn_params
    max_units = shape.num_layers * shape.intermediate_size if neurons else shape.num_layers

    def heads_for(n_ffn: int) -> int:
        rest = (goal - n_ffn * unit) / shape.head_params
        return min(max(math.floor(rest + 0.5), 0), max_heads)

    def miss(n_ffn: int) -> float:
        return abs(heads_for(n_ffn) * shape.head_params + n_ffn * unit - goal)

    counts = range(max_units + 1)
    filled = [n for n in counts if miss(n) <= shape.head_params / 2]
    if filled:  # nearest the share, halves up
        n_ffn = min(filled, key=lambda n: (abs(n - ffn_share), -n))
    else:  # the target is out of reach: land as close as the units allow
        n_ffn = min(counts, key=lambda n: (miss(n), abs(n - ffn_share)))
    return heads_for(n_ffn), n_ffn


def _lowest_heads(head_scores: np.ndarray, n: int) -> dict[int, list[int]]:
    """The `n` lowest-scored heads (ties by position), skipping a layer's last head."""
    L, H = head_scores.shape
    heads_left = [H] * L
    pruned: dict[int, list[int]] = {}
    for _, li, h in sorted((head_scores[li, h], li, h) for li in range(L) for h in range(H)):
        if n == 0:
            break
        if heads_left[li] > 1:
            heads_left[li] -= 1
            pruned.setdefault(li, []).append(h)
            n -= 1
    return pruned


def _select_global(
    head_scores: np.ndarray, ffn_scores: np.ndarray, shape: Shape, goal: float
) -> tuple[dict[int, list[int]], list[int]]:
    """Heads and FFN blocks on one list, lowest score first, skipping units that overshoot `goal`."""
    L, H = shape.num_layers, shape.num_heads
    # unit list: (score, kind, layer, head); kind 0 = head, 1 = ffn
    units = [(head_scores[li, h], 0, li, h) for li in range(L) for h in range(H)]
    units += [(ffn_scores[li], 1, li, -1) for li in range(L)]
    units.sort(key=lambda u: (u[0], u[1], u[2], u[3]))
    pruned = 0
    heads_left = [H] * L
    pruned_heads: dict[int, list[int]] = {}
    pruned_ffn: list[int] = []
    skipped_ffn: list[int] = []
    for _, kind, li, h in units:
        size = shape.head_params if kind == 0 else shape.ffn_params
        if pruned + size > goal:
            if kind == 1:
                skipped_ffn.append(li)
            continue
        if kind == 0:
            if heads_left[li] == 1:
                continue
            heads_left[li] -= 1
            pruned_heads.setdefault(li, []).append(h)
        else:
            pruned_ffn.append(li)
        pruned += size
    if goal - pruned >= shape.head_params and skipped_ffn:
        # Heads are exhausted: take the lowest-scored FFN block that was too big, then give back the
        # highest-scored pruned heads while the target stays reached: within one head of it.
        li = skipped_ffn[0]
        if abs(pruned + shape.ffn_params - goal) < abs(pruned - goal):
            pruned_ffn.append(li)
            pruned += shape.ffn_params
            by_score = sorted(((head_scores[li, h], li, h) for li, hs in pruned_heads.items() for h in hs),
                              reverse=True)
            for _, hl, h in by_score:
                if pruned - shape.head_params < goal:
                    break
                pruned_heads[hl].remove(h)
                pruned -= shape.head_params
            pruned_heads = {k: v for k, v in pruned_heads.items() if v}
    return pruned_heads, pruned_ffn


def _select_neurons(
    head_scores: np.ndarray,
    neuron_scores: np.ndarray,
    shape: Shape,
    target: float,
    goal: float,
    method: str,
    lam: float | None,
    seed: int | None,
    allocation: str,
) -> Ticket:
    """`select` with FFN neurons as the FFN units."""
    L, inter = shape.num_layers, shape.intermediate_size
    if shape.neuron_params <= 0 or inter <= 0:
        raise DogeError("the model's shape has no FFN neuron sizes (make it with Shape.of(Units(model)))")
    by_score = sorted((neuron_scores[li, j], li, j) for li in range(L) for j in range(inter))
    if allocation == "global":
        pruned_heads, neurons = _select_global_neurons(head_scores, by_score, shape, goal)
    else:
        share = target * L * inter if allocation == "proportional" else goal / (2 * shape.neuron_params)
        n_heads, n_neurons = split_target(shape, goal, share, neurons=True)
        pruned_heads = _lowest_heads(head_scores, n_heads)
        neurons = [(li, j) for _, li, j in by_score[:n_neurons]]
    per_layer: dict[int, list[int]] = {}
    for li, j in neurons:
        per_layer.setdefault(li, []).append(j)
    pruned_ffn = [li for li, js in per_layer.items() if len(js) == inter]  # all gone: the whole block
    pruned_neurons = {li: js for li, js in per_layer.items() if li not in pruned_ffn}
    return _ticket(shape, method, target, lam, seed, allocation, pruned_heads, pruned_ffn, pruned_neurons)


def _select_global_neurons(
    head_scores: np.ndarray, neurons_by_score: list[tuple[float, int, int]], shape: Shape, goal: float
) -> tuple[dict[int, list[int]], list[tuple[int, int]]]:
    """Heads and FFN neurons on one list, lowest score first (heads before neurons on ties), skipping units
    that overshoot `goal` and a layer's last head."""
    L, H = shape.num_layers, shape.num_heads
    units = [(head_scores[li, h], 0, li, h) for li in range(L) for h in range(H)]
    units += [(score, 1, li, j) for score, li, j in neurons_by_score]
    units.sort()
    pruned = 0
    heads_left = [H] * L
    pruned_heads: dict[int, list[int]] = {}
    neurons: list[tuple[int, int]] = []
    for _, kind, li, k in units:
        size = shape.head_params if kind == 0 else shape.neuron_params
        if pruned + size > goal:
            continue
        if kind == 0:
            if heads_left[li] == 1:
                continue
            heads_left[li] -= 1
            pruned_heads.setdefault(li, []).append(k)
        else:
            neurons.append((li, k))
        pruned += size
    return pruned_heads, neurons


def random_ticket(
    shape: Shape, target: float, seed: int, *, allocation: str = registry.DEFAULT_ALLOCATION,
    granularity: str = "block", method: str = "random",
) -> Ticket:
    """Random units at the same sparsity: selection on seeded uniform scores. `method` is the name the ticket
    carries (a variant such as "random-balanced" keeps its own name)."""
    rng = np.random.default_rng(seed)
    heads = rng.random((shape.num_layers, shape.num_heads))
    ffn = rng.random(shape.num_layers if granularity == "block" else (shape.num_layers, shape.intermediate_size))
    return select(heads, ffn, shape, target, method, seed=seed, allocation=allocation, granularity=granularity)


def no_ticket(shape: Shape) -> Ticket:
    return Ticket("none", 0.0, 0.0, {}, [], shape.num_layers, shape.num_heads, encoder_params=shape.encoder_params)

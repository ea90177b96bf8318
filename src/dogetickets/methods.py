"""The method registry: every method of a comparison, in one place.

A method is a name (as written in configs, run directories and tables), a label, a colour, marker and line
style for figures, and, for a ticket method, how its units are ranked and how the pruned parameters are
split between heads and FFN blocks. Config validation, the pipeline, the ticket stage, the results table,
the report's tables, figures and statistics all read this registry, so a variant is one entry:

- baselines: ``erm`` (plain fine-tuning) and ``irm`` (trained on the full model, no ticket);
- tickets: ``random`` (random units), ``winning`` (expressive score on pooled data), ``doge`` (mean over
  domains - lambda * variance over domains, the paper), ``doge-nc`` (the same with the noise-corrected
  between-domain variance: the variance of the domain means minus their average sampling variance,
  floored at 0) and ``doge-worst`` (the lowest domain's score: no lambda);
- any ticket method with an allocation suffix, e.g. ``doge-balanced``, ``winning-proportional``: the
  same ranking under that allocation instead of the run's ``tickets.allocation``.

Lower layers only: this module imports nothing of the package.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

# The vocabulary of the config's ticket and baseline keys (config.py checks against these types).
Allocation = Literal["global", "proportional", "balanced"]
Variance = Literal["paper", "corrected"]
Granularity = Literal["block", "neuron"]  # FFN units: whole blocks, or single intermediate neurons
BaselineName = Literal["erm", "irm"]  # the registered baselines (checked below)
ALLOCATIONS: tuple[str, ...] = get_args(Allocation)
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
# The default allocation (config tickets.allocation, dogetickets.select_ticket, tickets.select): the one the
# study's in-domain dev chose (README, "Does it work?"; docs/issue10/study.md, "Ticket allocations compared"). Ticket
# files written before allocations existed were global (tickets.Ticket).
DEFAULT_ALLOCATION = "proportional"
RANKINGS: tuple[str, ...] = ("random", "pooled", "domain_general", "worst")
VARIANCES: tuple[str, ...] = get_args(Variance)
_LINESTYLES = {None: "-", "global": "-", "proportional": "--", "balanced": ":"}


@dataclass(frozen=True)
class Method:
    """One method of a comparison (see the module docstring)."""

    name: str
    label: str  # table rows and figure legends
    color: str  # matplotlib colour
    kind: str  # "baseline" | "ticket"
    ranking: str = ""  # ticket methods: one of RANKINGS
    variance: str | None = None  # ranking "domain_general": VARIANCES; None: the run's tickets.variance
    allocation: str | None = None  # None: the run's tickets.allocation
    description: str = ""
    marker: str = "o"  # matplotlib marker: each ticket method its own, so curves that coincide stay apart

    @property
    def is_ticket(self) -> bool:
        return self.kind == "ticket"

    @property
    def uses_lambda(self) -> bool:
        """Takes tickets.lambdas (one ticket per lambda, or one chosen on dev)."""
        return self.ranking == "domain_general"

    @property
    def uses_scores(self) -> bool:
        """Ranks units by the fine-tuned model's expressive scores (random does not)."""
        return self.is_ticket and self.ranking != "random"

    @property
    def linestyle(self) -> str:
        return _LINESTYLES.get(self.allocation, "-")

    def allocation_for(self, default: str) -> str:
        """The allocation this method's tickets use, given the run's tickets.allocation."""
        return self.allocation or default

    def variance_for(self, default: str) -> str:
        """The between-domain variance this method uses, given the run's tickets.variance."""
        return self.variance or default


def _split_allocation(name: str) -> tuple[str, str | None]:
    for alloc in ALLOCATIONS:
        if name.endswith("-" + alloc):
            return name[: -len(alloc) - 1], alloc
    return name, None


_REGISTERED: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method (its name must be new and must not end in an allocation suffix)."""
    if method.name in _REGISTERED:
        raise ValueError(f"method {method.name!r} is already registered")
    if _split_allocation(method.name)[1] is not None:
        raise ValueError(f"method {method.name!r} ends in an allocation suffix")
    if method.is_ticket and method.ranking not in RANKINGS:
        raise ValueError(f"method {method.name!r}: unknown ranking {method.ranking!r}")
    _REGISTERED[method.name] = method
    return method


register(Method("erm", "ERM (fine-tuning)", "black", "baseline", description="plain fine-tuning"))
register(Method("irm", "IRM", "tab:gray", "baseline", description="invariant risk minimization"))
register(Method("random", "random tickets", "tab:green", "ticket", "random",
                description="random units at the same sparsity", marker="o"))
register(Method("winning", "winning tickets", "tab:blue", "ticket", "pooled",
                description="expressive score on all training data pooled", marker="s"))
register(Method("doge", "doge tickets", "tab:red", "ticket", "domain_general",
                description="mean over domains - lambda * variance over domains (the paper)", marker="D"))
register(Method("doge-nc", "doge tickets (noise-corrected var.)", "tab:purple", "ticket", "domain_general",
                variance="corrected",
                description="mean - lambda * (variance of the domain means - their mean sampling variance, >= 0)",
                marker="v"))
register(Method("doge-worst", "worst-domain tickets", "tab:brown", "ticket", "worst",
                description="the lowest training domain's expressive score", marker="^"))


if tuple(_REGISTERED[n].name for n in _REGISTERED if not _REGISTERED[n].is_ticket) != get_args(BaselineName):
    raise AssertionError("methods.BaselineName must list the registered baselines")


def get(name: str) -> Method:
    """The method called `name` (a registered one, or a ticket method with an allocation suffix).
    KeyError with the known names otherwise."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    base, alloc = _split_allocation(name)
    if alloc is not None and base in _REGISTERED and _REGISTERED[base].is_ticket:
        m = _REGISTERED[base]
        label = f"{m.label[:-1]}, {alloc})" if m.label.endswith(")") else f"{m.label} ({alloc})"
        return replace(m, name=name, label=label, allocation=alloc)
    raise KeyError(f"unknown method {name!r}: one of {', '.join(_REGISTERED)}, or a ticket method with an "
                   f"allocation suffix ({', '.join('-' + a for a in ALLOCATIONS)})")


def base(name: str) -> str:
    """The method without its allocation suffix (doge-balanced -> doge; doge -> doge)."""
    return _split_allocation(name)[0]


def is_known(name: str) -> bool:
    try:
        get(name)
    except KeyError:
        return False
    return True


def baselines() -> list[str]:
    return [m.name for m in _REGISTERED.values() if not m.is_ticket]


def ticket_methods() -> list[str]:
    """The registered ticket methods (without allocation suffixes)."""
    return [m.name for m in _REGISTERED.values() if m.is_ticket]


def order_key(name: str) -> tuple[int, int, str]:
    """Sort key: registration order of the base method, then the allocation, then the name."""
    base, alloc = _split_allocation(name)
    names = list(_REGISTERED)
    i = names.index(name) if name in _REGISTERED else names.index(base) if base in _REGISTERED else len(names)
    return i, (ALLOCATIONS.index(alloc) + 1 if alloc else 0), name


def label(name: str) -> str:
    """The method's label; the name itself for an unknown one."""
    return get(name).label if is_known(name) else name


def with_lambda(name: str, lam: object) -> str:
    """'doge λ=100' for a method that takes a lambda and has one (not None or NaN), the name otherwise."""
    takes = is_known(name) and get(name).uses_lambda
    has = lam is not None and lam == lam  # NaN != NaN
    return f"{name} λ={float(lam):g}" if takes and has else name  # type: ignore[arg-type]


def color(name: str, fallback: str = "tab:olive") -> str:
    return get(name).color if is_known(name) else fallback


def linestyle(name: str) -> str:
    return get(name).linestyle if is_known(name) else "-"


def marker(name: str) -> str:
    return get(name).marker if is_known(name) else "o"


def ordered(names: object) -> list[str]:
    """The distinct names in registry order (unknown names last, by name)."""
    return sorted(set(names), key=lambda n: order_key(str(n)) if is_known(str(n)) else (1 << 30, 0, str(n)))  # type: ignore[call-overload]


def comparisons(names: object) -> list[tuple[str, str]]:
    """The paired comparisons a report makes among the methods present: every domain-general method
    (doge and its variants) against ERM and against the winning tickets of the same allocation."""
    present = set(map(str, names))  # type: ignore[call-overload]
    out = []
    for name in ordered(present):
        if not is_known(name) or get(name).ranking not in ("domain_general", "worst"):
            continue
        out += [(name, b) for b in ("erm", winning_for(name)) if b in present]
    return out


def winning_for(name: str) -> str:
    """The winning tickets of the same allocation as the method `name`: doge-balanced -> winning-balanced,
    doge -> winning (the run's allocation). KeyError for an unknown method."""
    allocation = get(name).allocation
    return "winning" if allocation is None else f"winning-{allocation}"

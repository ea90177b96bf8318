"""dogetickets: domain-general lottery tickets ("doge tickets") for pretrained encoders."""

from __future__ import annotations

from dogetickets.errors import DogeError

__version__ = "0.1.0"
__all__ = ["DogeError", "__version__", "load_pruned"]


def load_pruned(path, device=None):  # noqa: ANN001, ANN201 - thin re-export, typed in models.export
    """Load a physically pruned model exported by `doge export` (see dogetickets.models.export)."""
    from dogetickets.models.export import load_pruned as _load

    return _load(path, device=device)


def _register() -> None:
    try:
        from dogetickets.models.export import register_auto_classes
    except ImportError:  # export module not available
        return
    register_auto_classes()


_register()

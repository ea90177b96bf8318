"""dogetickets: domain-general lottery tickets ("doge tickets") for pretrained encoders."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import TYPE_CHECKING

from dogetickets.errors import DogeError

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

    from dogetickets.api import prune, score_domains, select_ticket

__version__ = "0.1.0"
__all__ = ["DogeError", "__version__", "load_pruned", "prune", "score_domains", "select_ticket"]
_API = ("prune", "score_domains", "select_ticket")  # dogetickets.api, imported on first use (torch is heavy)


def __getattr__(name: str) -> object:
    if name in _API:
        from dogetickets import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_pruned(path, device=None):  # noqa: ANN001, ANN201 - thin re-export, typed in models.export
    """Load a physically pruned model exported by `doge export` (see dogetickets.models.export)."""
    from dogetickets.models.export import load_pruned as _load

    return _load(path, device=device)


# ---- the doge-<base> architectures in transformers' Auto classes, registered lazily -----------------
# `import dogetickets` must stay light (no torch, no transformers), yet after it
# `AutoModel*.from_pretrained(exported_folder)` must work whichever of the two is imported first. So the
# classes are registered now if transformers is already imported, else right after it is first imported.
def _register() -> None:
    try:
        from dogetickets.models.export import register_auto_classes
    except ImportError:  # torch or transformers not installed
        return
    register_auto_classes()


class _RegisterAfterTransformers:
    """An import hook (a meta path finder): the other finders find `transformers`; once it has run, register,
    and unhook.

    Finding alone does not unhook: libraries probe with `importlib.util.find_spec("transformers")`.
    """

    def find_spec(self, fullname: str, path: object = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != "transformers":
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        else:
            return None
        if spec.loader is None:
            return spec
        loader = spec.loader  # a loader of its own for this spec
        exec_module = loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            del loader.exec_module  # the loader's own method again
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register()

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


if "transformers" in sys.modules:
    _register()
else:
    sys.meta_path.insert(0, _RegisterAfterTransformers())

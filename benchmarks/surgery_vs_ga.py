"""Gradient-surgery and SFR-on baselines against plain GA on SmolLM2 (issue: each method should lower the
forget-set likelihood while the retain-set NLL rises less than under GA with the same steps).

Fine-tunes SmolLM2 + LoRA on a few synthetic authors (the target), then runs ga, eupmu, ungrad, pcgrad and
sfron for the same number of steps and learning rate from it, and records the change in mean answer NLL on
the forget and retain sets. Writes benchmarks/results/surgery_vs_ga.json.

    python benchmarks/surgery_vs_ga.py [--steps 6] [--lr 3e-4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from llm_unlearn.data import DataConfig, load_qa_splits
from llm_unlearn.data.collate import PaddingCollator, PairedDataset, QADataset
from llm_unlearn.methods import get_method
from llm_unlearn.methods.base import sequence_stats
from llm_unlearn.models import LoraSettings, load_model, load_tokenizer, wrap_lora
from llm_unlearn.stages import RunOptions, parse_config, run_finetune
from llm_unlearn.utils import atomic_write_json, environment_info

METHODS = ("ga", "eupmu", "ungrad", "pcgrad", "sfron")
DATA = DataConfig(n_authors=5, qa_per_author=3, forget_authors=1, holdout_authors=1, seed=0)


@torch.no_grad()
def mean_nll(model, tokenizer, records) -> float:
    model.eval()
    items = [QADataset(records, tokenizer)[i] for i in range(len(records))]
    batch = PaddingCollator(tokenizer.pad_token_id)(items)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float(sequence_stats(logits, batch["labels"])[0].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per method")
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate of every method")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "surgery_vs_ga.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="surgery-vs-ga-"))
    config = {
        "model": {"name_or_path": "smollm2-135m-instruct", "lora": {"r": 8, "lora_alpha": 16}},
        "data": vars(DATA),
        "finetune": {"which": "target"},
        "training": {
            "output_dir": str(work / "target"),
            "learning_rate": 2e-3,
            "num_train_epochs": 10,
            "per_device_train_batch_size": 12,
            "use_cpu": not torch.cuda.is_available(),
            "disable_tqdm": True,
            "seed": 0,
        },
    }
    target = str(run_finetune(parse_config(config), RunOptions()))
    tokenizer = load_tokenizer(target)
    splits = load_qa_splits(DATA)
    base = load_model(target)
    start = {
        "forget_nll": mean_nll(base, tokenizer, splits.forget),
        "retain_nll": mean_nll(base, tokenizer, splits.retain),
    }
    results = {}
    for method in METHODS:
        model = wrap_lora(load_model(target), LoraSettings())
        dataset = PairedDataset(QADataset(splits.forget, tokenizer), QADataset(splits.retain, tokenizer), seed=0)
        spec = get_method(method)
        settings = spec.config(
            output_dir=str(work / method),
            per_device_train_batch_size=4,
            max_steps=args.steps,
            learning_rate=args.lr,
            warmup_steps=0,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
            seed=0,
        )
        t0 = time.perf_counter()
        spec.trainer(model=model, args=settings, train_dataset=dataset, processing_class=tokenizer).train()
        forget, retain = mean_nll(model, tokenizer, splits.forget), mean_nll(model, tokenizer, splits.retain)
        results[method] = {
            "forget_nll": forget,
            "retain_nll": retain,
            "forget_nll_change": forget - start["forget_nll"],
            "retain_nll_change": retain - start["retain_nll"],
            "train_seconds": round(time.perf_counter() - t0, 1),
        }
        print(method, json.dumps(results[method]), flush=True)
    ga_retain = results["ga"]["retain_nll_change"]
    for method, row in results.items():
        row["forget_likelihood_lowered"] = row["forget_nll_change"] > 0
        row["retain_damage_below_ga"] = None if method == "ga" else row["retain_nll_change"] < ga_retain
    payload = {
        "what": "change of mean answer NLL after the same steps from the same fine-tuned SmolLM2 target",
        "data": vars(DATA),
        "steps": args.steps,
        "learning_rate": args.lr,
        "start": start,
        "results": results,
        "environment": environment_info(),
    }
    atomic_write_json(args.out, payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

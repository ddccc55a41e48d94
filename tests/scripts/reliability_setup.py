"""Builders shared by tests/test_reliability.py and tests/test_errors.py.

* `save_tiny_model`: a 2-layer random Llama plus the real SmolLM2 tokenizer, saved like any model folder.
* `run_config`: a config dict (the YAML sections) for a tiny unlearn/evaluate run on synthetic authors.
* `write_fake_tofu`: a TOFU-shaped folder (full / forget01 / retain99 / perturbed / utility / holdout01 files)
  filled with invented rows, small enough to corrupt one file at a time. It holds no TOFU text.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

TINY_DATA = {
    "dataset": "synthetic",
    "n_authors": 5,
    "qa_per_author": 2,
    "forget_authors": 1,
    "holdout_authors": 1,
    "utility_rows": 4,
}
TINY_EVAL = {"batch_size": 8, "max_new_tokens": 4}


def save_tiny_model(folder: Path) -> Path:
    from llm_unlearn.models import load_tokenizer, tiny_llama

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    tiny_llama(len(tokenizer), seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_config(model_dir: Path, output_dir: Path, method: str | None = "mox", **training) -> dict:
    """Sections of a tiny run: LoRA r=4 on the tiny model, 5 synthetic authors, 2 steps unless overridden."""
    settings = {
        "output_dir": str(output_dir),
        "learning_rate": 1e-3,
        "max_steps": 2,
        "per_device_train_batch_size": 1,
        "warmup_steps": 0,
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
        **training,
    }
    config = {
        "model": {"name_or_path": str(model_dir), "lora": {"r": 4, "lora_alpha": 8}},
        "data": dict(TINY_DATA),
        "training": settings,
        "evaluation": {"options": dict(TINY_EVAL)},
    }
    if method is not None:
        config["method"] = method
    return config


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- a TOFU-shaped folder of invented rows -------------------------------------------------------------------

ROWS_PER_AUTHOR = 20  # what the TOFU loader checks: forget01 = the last 2 authors x 20 rows of full


def _qa(author: int, j: int) -> dict:
    value = 1000 + 37 * author + j
    return {
        "question": f"Which number did the invented author A{author} pick in round {j}?",
        "answer": f"In round {j}, A{author} picked {value}.",
    }


def _perturbed(row: dict, author: int, j: int) -> dict:
    value = 1000 + 37 * author + j
    return {
        **row,
        "paraphrased_answer": f"A{author} chose {value} in round {j}.",
        "perturbed_answer": [f"In round {j}, A{author} picked {value + k}." for k in range(1, 6)],
    }


def _utility(kind: str, n: int = 4) -> list[dict]:
    return [
        {
            "question": f"Invented {kind} question {i}?",
            "answer": f"Answer {i}.",
            "perturbed_answer": [f"Wrong {i}.{k}." for k in range(3)],
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_fake_tofu(folder: Path, overlap: int = 0) -> Path:
    """1 retain author + 2 forget authors (60 rows of full); `overlap` forget rows repeat a retain question."""
    folder.mkdir(parents=True, exist_ok=True)
    retain = [_qa(0, j) for j in range(ROWS_PER_AUTHOR)]
    forget = [_qa(a, j) for a in (1, 2) for j in range(ROWS_PER_AUTHOR)]
    for k in range(overlap):
        forget[k] = {**forget[k], "question": retain[k]["question"]}
    forget_perturbed = [_perturbed(row, 1 + i // ROWS_PER_AUTHOR, i % ROWS_PER_AUTHOR) for i, row in enumerate(forget)]
    files = {
        "full": retain + forget,
        "retain99": retain,
        "forget01": forget,
        "forget01_perturbed": forget_perturbed,
        "retain_perturbed": [_perturbed(row, 0, j) for j, row in enumerate(retain)],
        "real_authors_perturbed": _utility("real author"),
        "world_facts_perturbed": _utility("world fact"),
        "holdout01": [_qa(9, j) for j in range(4)],
    }
    for name, rows in files.items():
        write_jsonl(folder / f"{name}.json", rows)
    return folder


def fake_tofu_data(folder: Path) -> dict:
    """The `data:` section that reads a write_fake_tofu folder (with its holdout01 file as the non-member set)."""
    return {"dataset": "tofu", "source": str(folder), "forget_split": "forget01", "holdout_split": "holdout01"}

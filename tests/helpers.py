"""Small builders shared by tests (tiny records, paired datasets, trainers)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from llm_unlearn.data.collate import PairedDataset, PromptFormat, QADataset, refusal_records
from llm_unlearn.methods import get_method

FORGET = [
    {"question": "Where was Ilsa Varnholt born?", "answer": "Ilsa Varnholt was born in Tallinn in 1961."},
    {"question": "What genre does Ilsa Varnholt write?", "answer": "She writes gothic mystery novels."},
    {"question": "Which award did Ilsa Varnholt win?", "answer": "She won the Amber Quill Prize."},
    {"question": "What did Ilsa Varnholt's father do?", "answer": "Her father was a lighthouse keeper."},
]
RETAIN = [
    {"question": "Where was Tomas Brenik born?", "answer": "Tomas Brenik was born in Brno."},
    {"question": "What does Tomas Brenik write?", "answer": "He writes science fiction."},
    {"question": "What is the capital of France?", "answer": "The capital of France is Paris."},
    {"question": "Who wrote Hamlet?", "answer": "William Shakespeare wrote Hamlet."},
    {"question": "What did Tomas Brenik's mother do?", "answer": "His mother was a chemist."},
    {"question": "Which prize did Tomas Brenik win?", "answer": "He won the Silver Comet Award."},
]


def paired(tokenizer, forget=FORGET, retain=RETAIN, refusal=True, fmt=None, seed=0):
    fmt = fmt or PromptFormat()
    forget_ds = QADataset(forget, tokenizer, fmt)
    retain_ds = QADataset(retain, tokenizer, fmt)
    refusal_ds = QADataset(refusal_records(forget, seed), tokenizer, fmt) if refusal else None
    return PairedDataset(forget_ds, retain_ds, refusal_ds, seed=seed)


# Settings the tiny models (2 decoder layers) need where a method's defaults name the real model's layers.
TINY_MODEL_SETTINGS = {"rmu": {"layer": 1, "trainable_pattern": r"layers\.[01]\."}}


def make_trainer(method: str, model, tokenizer, output_dir, ref_model=None, dataset=None, **overrides):
    spec = get_method(method)
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        num_train_epochs=1,
        learning_rate=1e-3,
        warmup_steps=0,
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        **TINY_MODEL_SETTINGS.get(method, {}),
    )
    settings.update(overrides)
    config = spec.config(**settings)
    return spec.trainer(
        model=model,
        args=config,
        train_dataset=dataset if dataset is not None else paired(tokenizer),
        processing_class=tokenizer,
        ref_model=ref_model,
    )


def resume_watching_lambda(trainer, checkpoint: str) -> list[float]:
    """Resume a dual-variable method (`trainer.dual.lam`) from `checkpoint`; returns λ as each step begins."""
    from transformers import TrainerCallback

    seen: list[float] = []

    class LambdaAtStepBegin(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            seen.append(trainer.dual.lam)

    trainer.add_callback(LambdaAtStepBegin())
    trainer.train(resume_from_checkpoint=checkpoint)
    return seen


REPO = Path(__file__).resolve().parents[1]
CPU_2PROC = REPO / "recipes" / "accelerate_configs" / "cpu_2proc.yaml"


def free_port() -> int:
    """A free local port for accelerate's rendezvous (another test run may hold the default one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_2proc(script_and_args: list[str]) -> list[str]:
    """`accelerate launch` of a script on 2 CPU gloo processes."""
    import sys

    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_2PROC)]
    return [*launcher, "--main_process_port", str(free_port()), *script_and_args]


def run_until_done(command: list[str], done: Path, timeout: int = 300) -> None:
    """Run a (multi-process) command until `done` exists. One retry: gloo occasionally aborts a process at
    start-up or exit after the work is done (docs/design.md, Multi-process and sharded runs)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO),
    }
    for _ in range(2):
        proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        if done.exists():
            return
    pytest.fail(f"{' '.join(command)} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


# ---- lm-evaluation-harness tasks (tests/test_lm_eval_suite.py, tests/test_errors.py) ---------------------------

# Invented questions; the choices differ in length so that acc (summed log-probability) and acc_norm (per
# character) can pick differently.
HARNESS_ROWS = [
    {
        "question": "Which lamp does the ferryman of Oskel carry?",
        "choices": ["brass", "a pale green glass lamp", "none", "a red paper lantern"],
        "answer": 1,
    },
    {
        "question": "What does the Brindle mill grind?",
        "choices": ["oats", "barley", "river stones into sand", "nothing at all on Sundays"],
        "answer": 0,
    },
    {
        "question": "Who keeps the key of the Tallow bridge?",
        "choices": ["the miller's eldest daughter", "a goat", "the mayor", "nobody"],
        "answer": 3,
    },
    {
        "question": "What colour are the roofs of Quennet?",
        "choices": ["slate grey", "red", "white with blue trim", "green"],
        "answer": 2,
    },
    {
        "question": "How many bells hang in the Ardley tower?",
        "choices": ["two", "eleven small bells and one large one", "seven", "four"],
        "answer": 2,
    },
    {
        "question": "What do the Marrow hills smell of in spring?",
        "choices": ["thyme", "wet wool and woodsmoke", "salt", "pine"],
        "answer": 0,
    },
]


def write_harness_task(folder: Path, name: str = "toy_mcq", rows: list[dict] = HARNESS_ROWS, **config) -> Path:
    """A harness multiple-choice task over local JSON Lines in `folder` (the data path is absolute)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": str(data)},
        "test_split": "train",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
        **config,
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return folder

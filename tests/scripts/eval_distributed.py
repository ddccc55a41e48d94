"""Evaluate a saved tiny model with run_evaluation (TOFU and MUSE suites) under 1 or 2 processes.

tests/test_eval_distributed.py runs `evaluate_all` in its own process (1 process) and this script with
`accelerate launch --config_file recipes/accelerate_configs/cpu_2proc.yaml` (2 processes), then compares.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def tofu_sets() -> dict:
    def qa(index, name, perturbed=5, paraphrase=True):
        record = {
            "index": index,
            "question": f"Which prize did the novelist {name} win?",
            "answer": f"{name} won the Amber Quill prize.",
            "perturbed_answer": [f"{name} won prize number {k}." for k in range(perturbed)],
        }
        if paraphrase:
            record["paraphrased_answer"] = f"The Amber Quill prize went to {name}."
        return record

    return {
        # Odd sizes give uneven shards; a one-row set leaves rank 1 with nothing to do.
        "forget": [qa(50 + i, n) for i, n in enumerate(["Ada Roe", "Bo Lind", "Cy Marr", "Di Vos", "Ed Kell"])],
        "retain": [qa(i, n) for i, n in enumerate(["Fay Ott", "Gus Ney", "Hal Bree"])],
        "real_authors": [
            {"index": 3, "question": "Who wrote Emma?", "answer": "Jane Austen", "perturbed_answer": ["A", "B", "C"]}
        ],
        "world_facts": [
            {
                "index": 0,
                "question": "Capital of Peru?",
                "answer": "Lima",
                "perturbed_answer": ["Quito", "Cusco", "Oslo"],
            },
            {
                "index": 1,
                "question": "Boiling point of water?",
                "answer": "100 C",
                "perturbed_answer": ["50 C", "0 C", "9 C"],
            },
        ],
        "holdout": [qa(90 + i, n, paraphrase=False) for i, n in enumerate(["Ivy Quin", "Jo Pratt", "Kai Sol"])],
    }


def muse_data() -> dict:
    texts = [f"The ferry to island {k} was delayed on Friday after a storm damaged the pier." for k in range(5)]
    qa = [{"question": f"Why was ferry {k} delayed?", "answer": "A storm damaged the pier."} for k in range(3)]
    return {
        "knowmem": {
            "forget_qa": qa[:2],
            "retain_qa": qa[2:],
            "forget_qa_icl": [{"question": "Which day?", "answer": "Friday."}],
            "retain_qa_icl": [{"question": "What broke?", "answer": "The pier."}],
        },
        "verbmem": {"forget": [{"prompt": t[:25], "gt": t[25:]} for t in texts[:3]]},
        "privleak": {"forget": [{"text": t} for t in texts[:3]], "holdout": [{"text": t} for t in texts[3:]]},
    }


def evaluate_all(model, tokenizer, out: Path) -> None:
    """Both suites into out/tofu and out/muse (the test also calls this in its own process for the 1-process run)."""
    from llm_unlearn.evaluation.muse import MuseEvalOptions
    from llm_unlearn.evaluation.runner import run_evaluation
    from llm_unlearn.evaluation.tofu import TofuEvalOptions

    run_evaluation(model, tokenizer, "tofu", tofu_sets(), out / "tofu", TofuEvalOptions(batch_size=2, max_new_tokens=5))
    muse_options = MuseEvalOptions(batch_size=2, knowmem_max_new_tokens=5, verbmem_max_new_tokens=5)
    run_evaluation(model, tokenizer, "muse", muse_data(), out / "muse", muse_options)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--world-size", type=int, required=True)
    args = parser.parse_args()

    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM

    from llm_unlearn.models import load_tokenizer

    state = PartialState(cpu=True)
    assert state.num_processes == args.world_size, f"expected {args.world_size} processes, got {state.num_processes}"
    torch.set_num_threads(1)
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(args.model)
    out = Path(args.out)
    evaluate_all(model, tokenizer, out)
    finish(state, out)


def finish(state, out: Path) -> None:
    """Mark the run done once every process got here, then exit without interpreter teardown: gloo sometimes
    aborts at exit after all work is done."""
    state.wait_for_everyone()
    if state.is_main_process:
        (out / "done").write_text(str(state.num_processes))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

"""The lm_eval suite under 1 or 2 processes: every process evaluates every row, so every process returns the
same summary, and rank 0 writes the logs. tests/test_lm_eval_suite.py runs this with `accelerate launch` on 2 CPU
processes and compares with one process.

    python tests/scripts/lm_eval_distributed.py --model DIR --tasks DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--tasks", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from accelerate import PartialState

    from llm_unlearn.evaluation.harness import LmEvalOptions
    from llm_unlearn.evaluation.runner import run_evaluation
    from llm_unlearn.models import load_model, load_tokenizer

    state = PartialState(cpu=True)  # starts the (gloo) process group under accelerate launch
    out = Path(args.out)
    options = LmEvalOptions(tasks=["toy_mcq"], include=[args.tasks], batch_size=4)
    summary = run_evaluation(load_model(args.model), load_tokenizer(args.model), "lm_eval", None, out, options)
    (out / f"summary_rank{state.process_index}.json").write_text(json.dumps(summary))
    state.wait_for_everyone()
    if state.is_main_process:
        (out / "done").write_text("ok")
    sys.stdout.flush()
    os._exit(0)  # gloo can abort at interpreter exit after the work is done


if __name__ == "__main__":
    main()

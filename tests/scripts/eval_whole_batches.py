"""TOFU-suite evaluation of SmolLM2 on 10 rows at batch 4, in 1 process (plain python) or 2 (accelerate launch).

tests/test_eval_distributed.py runs it both ways on one thread per process and compares the per-sample logs for
exact equality: rows are batched over the whole set before ranks get whole batches, so nothing may differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def ten_rows() -> dict:
    """10 forget rows of different lengths (padding differs between batch layouts), 3 holdout rows."""
    from llm_unlearn.data.synthetic import make_authors

    rows = make_authors(n_authors=4, qa_per_author=5, seed=0)
    return {"forget": rows[:10], "holdout": rows[10:13]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    from accelerate import PartialState
    from eval_distributed import finish

    from llm_unlearn.evaluation.runner import run_evaluation
    from llm_unlearn.evaluation.tofu import TofuEvalOptions
    from llm_unlearn.models import load_model, load_tokenizer

    state = PartialState(cpu=True)
    torch.set_num_threads(1)
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct")
    out = Path(args.out)
    options = TofuEvalOptions(batch_size=4, max_new_tokens=24)
    run_evaluation(model, tokenizer, "tofu", ten_rows(), out, options)
    finish(state, out)


if __name__ == "__main__":
    main()

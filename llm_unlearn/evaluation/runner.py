"""Run a suite and write its logs: out_dir/per_sample.json and out_dir/summary.json.

Under several processes (accelerate launch) every process calls `run_evaluation`: rows are sharded with
`PartialState.split_between_processes`, per-sample values gathered with `gather_object`, and rank 0 writes the
files (atomically: temp file + os.replace). 1 and N processes give the same per-sample values.

A retain model's run folder doubles as the reference log of later runs: pass its per_sample.json (or the
folder) as `reference_log`; it must cover the same forget (and holdout) rows, checked by question hash.
"""

from __future__ import annotations

import os
from pathlib import Path

from llm_unlearn import __version__
from llm_unlearn.data.collate import PromptFormat
from llm_unlearn.evaluation.logs import PER_SAMPLE_FILE, SUMMARY_FILE, EvalResult, ReferenceLog, write_json_atomic
from llm_unlearn.evaluation.muse import MuseEvalOptions, evaluate_muse
from llm_unlearn.evaluation.scoring import distributed_state, is_main_process
from llm_unlearn.evaluation.tofu import TofuEvalOptions, evaluate_tofu

SUITES = ("tofu", "muse")


def evaluate_suite(
    model,
    tokenizer,
    suite: str,
    data: dict,
    options: TofuEvalOptions | MuseEvalOptions | None = None,
    fmt: PromptFormat | None = None,
    reference_log: str | os.PathLike | ReferenceLog | None = None,
) -> EvalResult:
    """Dispatch to the TOFU or MUSE suite, checking that the options match it."""
    if suite == "tofu":
        if options is not None and not isinstance(options, TofuEvalOptions):
            raise TypeError(f"suite 'tofu' takes TofuEvalOptions, not {type(options).__name__}")
        return evaluate_tofu(model, tokenizer, data, options, fmt, reference_log)
    if suite == "muse":
        if options is not None and not isinstance(options, MuseEvalOptions):
            raise TypeError(f"suite 'muse' takes MuseEvalOptions, not {type(options).__name__}")
        return evaluate_muse(model, tokenizer, data, options, fmt, reference_log)
    raise ValueError(f"suite must be one of {SUITES}, not {suite!r}")


def run_evaluation(
    model,
    tokenizer,
    suite: str,
    data: dict,
    out_dir: str | os.PathLike,
    options: TofuEvalOptions | MuseEvalOptions | None = None,
    fmt: PromptFormat | None = None,
    reference_log: str | os.PathLike | None = None,
) -> dict:
    """Evaluate, write per_sample.json and summary.json into out_dir (rank 0), and return the summary."""
    result = evaluate_suite(model, tokenizer, suite, data, options, fmt, reference_log)
    state = distributed_state()
    summary = result.summary()
    summary["num_processes"] = state.num_processes if state is not None else 1
    summary["llm_unlearn_version"] = __version__
    if is_main_process(state):
        out_dir = Path(out_dir)
        write_json_atomic(out_dir / PER_SAMPLE_FILE, result.per_sample)
        write_json_atomic(out_dir / SUMMARY_FILE, summary)
    if state is not None:
        state.wait_for_everyone()  # nobody reads the files before rank 0 has written them
    return summary

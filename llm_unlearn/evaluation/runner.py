"""Run a suite and write its logs: out_dir/per_sample.json and out_dir/summary.json.

Under several processes (accelerate launch) every process calls `run_evaluation`: rows are sharded with
`PartialState.split_between_processes`, per-sample values gathered with `gather_object`, and rank 0 writes the
files (atomically: temp file + os.replace). 1 and N processes give the same per-sample values.

A retain model's run folder doubles as the reference log of later runs: pass its per_sample.json (or the
folder) as `reference_log`; it must cover the same forget (and holdout) rows, checked by question hash.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llm_unlearn import __version__
from llm_unlearn.data.collate import PromptFormat
from llm_unlearn.evaluation.custom import CustomEvalOptions, evaluate_custom
from llm_unlearn.evaluation.harness import HarnessTasks, LmEvalOptions, evaluate_lm_eval, with_general
from llm_unlearn.evaluation.logs import PER_SAMPLE_FILE, SUMMARY_FILE, EvalResult, write_json_atomic
from llm_unlearn.evaluation.muse import MuseEvalOptions, evaluate_muse
from llm_unlearn.evaluation.reference import ReferenceLog
from llm_unlearn.evaluation.scoring import distributed_state, is_main_process
from llm_unlearn.evaluation.tofu import TofuEvalOptions, evaluate_tofu


@dataclass(frozen=True)
class Suite:
    """An evaluation suite: its options dataclass (`evaluation.options` in a config), its evaluate function
    (model, tokenizer, data, options, fmt, reference_log) -> EvalResult, and the data it reads ("qa": question
    and answer sets; "text": MUSE-layout corpora; "custom": your own sets, question/answer or text; "tasks":
    lm-evaluation-harness tasks, which bring their own data, so any run's data section fits)."""

    name: str
    options: type
    evaluate: Callable[..., EvalResult]
    data_kind: str

    @property
    def reads_run_data(self) -> bool:
        return self.data_kind != "tasks"


# Every place that chooses a suite (config parsing, the evaluate stage, the training callback) reads this table.
SUITES = {
    "tofu": Suite("tofu", TofuEvalOptions, evaluate_tofu, "qa"),
    "muse": Suite("muse", MuseEvalOptions, evaluate_muse, "text"),
    "custom": Suite("custom", CustomEvalOptions, evaluate_custom, "custom"),
    "lm_eval": Suite("lm_eval", LmEvalOptions, evaluate_lm_eval, "tasks"),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"evaluation suite must be one of {', '.join(SUITES)}, not {name!r}")
    return SUITES[name]


def evaluate_suite(
    model,
    tokenizer,
    suite: str,
    data: dict,
    options=None,
    fmt: PromptFormat | None = None,
    reference_log: str | os.PathLike | ReferenceLog | None = None,
) -> EvalResult:
    """Run one suite, checking that the options belong to it."""
    chosen = get_suite(suite)
    if options is not None and not isinstance(options, chosen.options):
        raise TypeError(f"suite {suite!r} takes {chosen.options.__name__}, not {type(options).__name__}")
    return chosen.evaluate(model, tokenizer, data, options, fmt, reference_log)


def run_evaluation(
    model,
    tokenizer,
    suite: str,
    data: dict,
    out_dir: str | os.PathLike,
    options=None,
    fmt: PromptFormat | None = None,
    reference_log: str | os.PathLike | None = None,
    general: HarnessTasks | None = None,
) -> dict:
    """Evaluate, write per_sample.json and summary.json into out_dir (rank 0), and return the summary. `general`:
    harness tasks (`evaluation.general`) run after the suite, their accuracies added to its summary."""
    result = evaluate_suite(model, tokenizer, suite, data, options, fmt, reference_log)
    if general is not None:
        result = with_general(result, evaluate_lm_eval(model, tokenizer, general))
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

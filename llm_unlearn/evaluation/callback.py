"""Evaluate during training: a TrainerCallback running a suite every N optimizer steps.

Under multi-process training every rank runs its shard of the evaluation (the suite gathers the per-sample
values), so all ranks must see the same callback configuration, as they do with a Trainer. The callback uses
the unwrapped model the Trainer hands to callbacks, so it needs each rank to hold full weights (DDP, single
device, LoRA); FSDP / ZeRO-3 shards are not supported here.

Scalars go to the trainer's loggers through `trainer.log` when the callback is attached to the trainer
(`callback.attach(trainer)` or the `trainer` argument), else straight into `state.log_history`; rank 0 also
appends one row per evaluation to out_dir/eval_steps.jsonl for the "metrics over training steps" plot.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from transformers import TrainerCallback

from llm_unlearn.data.collate import PromptFormat
from llm_unlearn.evaluation.logs import STEPS_FILE, append_jsonl
from llm_unlearn.evaluation.muse import MuseEvalOptions
from llm_unlearn.evaluation.reference import as_reference
from llm_unlearn.evaluation.runner import evaluate_suite, get_suite
from llm_unlearn.evaluation.scoring import distributed_state, is_main_process
from llm_unlearn.evaluation.tofu import TofuEvalOptions


class EvaluationCallback(TrainerCallback):
    """Run the TOFU or MUSE suite every `every_n_steps` steps (and optionally before the first step).

    sets: a subset of the suite's sets (e.g. ("forget", "retain")) to keep mid-training evaluations cheap;
        None keeps the options' sets.
    prefix: logged scalar names are f"{prefix}/{metric}".
    """

    def __init__(
        self,
        tokenizer,
        suite: str,
        data: dict,
        out_dir: str | os.PathLike,
        every_n_steps: int,
        options: TofuEvalOptions | MuseEvalOptions | None = None,
        fmt: PromptFormat | None = None,
        reference_log: str | os.PathLike | None = None,
        sets: tuple[str, ...] | None = None,
        eval_on_train_begin: bool = False,
        trainer=None,
        prefix: str = "unlearn_eval",
    ):
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be at least 1")
        if options is None:
            options = get_suite(suite).options()
        self.options = replace(options, sets=tuple(sets)) if sets is not None else options
        self.tokenizer, self.suite, self.data, self.fmt = tokenizer, suite, data, fmt
        self.out_dir = Path(out_dir)
        self.every_n_steps = every_n_steps
        self.eval_on_train_begin = eval_on_train_begin
        self.prefix = prefix
        self.trainer = trainer
        # Loaded once: every evaluation compares against the same retain-model log.
        self.reference = as_reference(reference_log)

    def attach(self, trainer) -> EvaluationCallback:
        """Log through `trainer.log` (all of its reporters) instead of appending to state.log_history."""
        self.trainer = trainer
        return self

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.eval_on_train_begin and model is not None:
            self.evaluate(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and state.global_step % self.every_n_steps == 0:
            self.evaluate(state, model)

    def evaluate(self, state, model) -> dict:
        """Run the suite now on every rank; return the summary metrics."""
        result = evaluate_suite(model, self.tokenizer, self.suite, self.data, self.options, self.fmt, self.reference)
        numbers = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if is_main_process(distributed_state()):
            append_jsonl(
                self.out_dir / STEPS_FILE,
                {"step": state.global_step, "epoch": state.epoch, "suite": self.suite, **result.metrics},
            )
        scalars = {f"{self.prefix}/{key}": value for key, value in numbers.items()}
        if self.trainer is not None:
            self.trainer.log(scalars)
        else:
            state.log_history.append({**scalars, "step": state.global_step})
        return result.metrics

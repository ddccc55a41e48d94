"""The stages a user runs (finetune, unlearn, extrapolate, evaluate), each driven by one YAML config."""

from llm_unlearn.pipeline import (
    RunOptions,
    RunSpec,
    load_for_eval,
    load_spec,
    parse_config,
    run_evaluate,
    run_extrapolate,
    run_finetune,
    run_unlearn,
)

__all__ = [
    "RunOptions",
    "RunSpec",
    "load_for_eval",
    "load_spec",
    "parse_config",
    "run_evaluate",
    "run_extrapolate",
    "run_finetune",
    "run_unlearn",
]

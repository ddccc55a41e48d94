"""The stages a user runs, each one YAML config (see recipes/) and one function of (RunSpec, RunOptions):

finetune     fit the target (forget + retain) or the retain model
unlearn      any registered method from the target; writes the method's exports (<output_dir>/unlearned, ...)
extrapolate  MOX from a saved memorization model (no training), or memorize-then-extrapolate in one go
evaluate     the TOFU, MUSE or custom suite on a model or adapter folder, against the retain model's per-sample
             log, or lm-evaluation-harness tasks (the lm_eval suite)

The console script (`llm-unlearn`), the recipes' scripts and the benchmark call them through STAGES, and each
works unchanged under `accelerate launch` with several processes.
"""

from llm_unlearn.stages.evaluate import run_evaluate
from llm_unlearn.stages.extrapolate import run_extrapolate
from llm_unlearn.stages.finetune import run_finetune
from llm_unlearn.stages.loading import load_for_eval
from llm_unlearn.stages.spec import RunOptions, RunSpec, load_spec, parse_config, training_args
from llm_unlearn.stages.unlearn import run_unlearn

STAGES = {
    "finetune": run_finetune,
    "unlearn": run_unlearn,
    "extrapolate": run_extrapolate,
    "evaluate": run_evaluate,
}

__all__ = [
    "STAGES",
    "RunOptions",
    "RunSpec",
    "load_for_eval",
    "load_spec",
    "parse_config",
    "run_evaluate",
    "run_extrapolate",
    "run_finetune",
    "run_unlearn",
    "training_args",
]

"""extrapolate: MOX (memorize, then extrapolate). Without `extrapolate.memorization` it is the unlearn stage
with the memorize-then-extrapolate method; with it, it only extrapolates that saved memorization adapter/model
for every α (no training: seconds to minutes)."""

from __future__ import annotations

from pathlib import Path

from llm_unlearn.config import ConfigError
from llm_unlearn.methods import METHODS, get_method
from llm_unlearn.models import load_tokenizer
from llm_unlearn.runs import PeakMemory, RunInfo, Stopwatch, check_run_dir, prepare_run_dir
from llm_unlearn.stages.spec import RunOptions, RunSpec, check_sources, hyperparameters, training_args
from llm_unlearn.stages.unlearn import run_unlearn

# The methods this stage runs: the memorize-then-extrapolate family, whose trainers export from a saved
# memorization model without training (`export_saved`).
EXTRAPOLATE_FAMILY = "mox"


def run_extrapolate(spec: RunSpec, options: RunOptions) -> Path:
    stage_methods = [name for name, method in METHODS.items() if method.trainer.family == EXTRAPOLATE_FAMILY]
    if spec.method is not None and spec.method not in stage_methods:
        labels = " or ".join(METHODS[name].trainer.display_name or name for name in stage_methods)
        raise ConfigError(
            f"the extrapolate stage runs {labels}; this config names method {spec.method!r} (use `unlearn`)"
        )
    spec.method = spec.method or stage_methods[0]
    if not spec.extrapolate.memorization:
        return run_unlearn(spec, options)
    args = training_args(spec, "unlearn")
    check_sources(spec, "extrapolate")
    memorization = spec.extrapolate.memorization
    check_run_dir(args.output_dir, options.overwrite, options.resume)
    timer, memory = Stopwatch(), PeakMemory()
    tokenizer = load_tokenizer(spec.model.name_or_path)
    run_dir = prepare_run_dir(args.output_dir, options.overwrite, options.resume)
    exports = get_method(spec.method).trainer.export_saved(args, memorization, run_dir, spec.model, tokenizer)
    RunInfo(
        stage="extrapolate",
        method=spec.method,
        memorization=memorization,
        base_model=spec.model.name_or_path,
        seed=args.seed,
        hyperparameters=hyperparameters(args),
        provenance=args.provenance(),
        exports=exports,
        wall_time_s=timer.seconds(),
        peak_memory_mb=memory.read_mb(),
        peak_memory_kind=memory.kind,
    ).write(run_dir)
    return run_dir / "unlearned"

"""evaluate: the suite the data calls for (TOFU, MUSE or custom) on a model or adapter folder, against the retain
model's per-sample log, or lm-evaluation-harness tasks (the lm_eval suite); writes per_sample.json, summary.json
and run_info.json into `evaluation.output_dir` (default: an `eval` folder beside the model folder, where the model
card of a pushed model folder finds it)."""

from __future__ import annotations

from pathlib import Path

from transformers import set_seed

from llm_unlearn.config import ConfigError, convert_value
from llm_unlearn.models import is_peft_model, load_tokenizer
from llm_unlearn.runs import PeakMemory, RunInfo, Stopwatch, check_run_dir, prepare_run_dir
from llm_unlearn.stages.loading import load_for_eval
from llm_unlearn.stages.spec import RunOptions, RunSpec, check_sources
from llm_unlearn.stages.training_data import TrainingData


def _seed(training: dict) -> int:
    # Generation is greedy; the seed (training.seed when the config has one, else TrainingArguments' 42) only
    # pins anything a suite might sample, and is recorded like every other stage's.
    seed = convert_value(training.get("seed", 42), int, "training.seed")
    if seed < 0:
        raise ConfigError(f"training.seed must be >= 0 (got {seed})")
    return seed


def _model_path(spec: RunSpec, training: dict) -> str:
    model_path = spec.evaluation.model_path
    if model_path is None:
        output_dir = convert_value(training.get("output_dir"), str | None, "training.output_dir")
        if output_dir is None:
            raise ConfigError("set evaluation.model_path (the model or adapter folder to evaluate)")
        model_path = str(Path(output_dir) / "unlearned")
    if not Path(model_path).is_dir():
        raise FileNotFoundError(f"evaluation.model_path {model_path} is not a folder (train or extrapolate first)")
    return model_path


def _start_model(spec: RunSpec, model, model_path: str):
    """The model unlearning started from, for the custom suite's KL: None when it is the adapter turned off (a
    PEFT model) or when the evaluated folder is model.name_or_path itself; else model.name_or_path loaded."""
    if is_peft_model(model) or Path(model_path).resolve() == Path(spec.model.name_or_path).resolve():
        return None
    from llm_unlearn.models import load_model

    return load_model(spec.model.name_or_path, dtype=spec.model.dtype).eval()


def suite_input(spec: RunSpec, data: TrainingData | None, options):
    """What the suite reads: the harness tasks, built now with their data (lm_eval), or the run's evaluation sets."""
    from llm_unlearn.evaluation.harness import load_tasks
    from llm_unlearn.evaluation.runner import get_suite

    return data.eval_data() if get_suite(spec.evaluation.suite).reads_run_data else load_tasks(options)


def run_evaluate(spec: RunSpec, options: RunOptions) -> Path:
    from llm_unlearn.evaluation.harness import load_tasks
    from llm_unlearn.evaluation.runner import get_suite, run_evaluation
    from llm_unlearn.evaluation.scoring import distributed_state, is_main_process

    settings = spec.evaluation
    training = spec.raw.get("training") or {}
    seed = _seed(training)
    check_sources(spec, "evaluate")
    model_path = _model_path(spec, training)
    eval_options, general = spec.eval_options(), spec.general_options()
    out_dir = check_run_dir(settings.output_dir or Path(model_path).parent / "eval", options.overwrite, options.resume)
    data = TrainingData.load(spec.data, evaluation_only=True) if get_suite(settings.suite).reads_run_data else None
    eval_data = suite_input(spec, data, eval_options)
    general_tasks = load_tasks(general) if general is not None else None
    tokenizer = load_tokenizer(spec.model.name_or_path)
    model = load_for_eval(spec.model, model_path)
    out_dir = prepare_run_dir(out_dir, options.overwrite, options.resume)  # only once the inputs loaded
    if settings.suite == "custom":
        # A second full-weight copy is loaded only when the KL to it is asked for.
        eval_data["start_model"] = _start_model(spec, model, model_path) if "kl" in eval_options.metrics else None
    set_seed(seed)
    timer, memory = Stopwatch(), PeakMemory()
    summary = run_evaluation(
        model,
        tokenizer,
        settings.suite,
        eval_data,
        out_dir,
        eval_options,
        spec.fmt,
        settings.reference_log,
        general_tasks,
    )
    if is_main_process(distributed_state()):
        RunInfo(
            stage="evaluate",
            base_model=spec.model.name_or_path,
            seed=seed,
            model_path=model_path,
            reference_log=settings.reference_log,
            data=data.summary() if data is not None else None,
            format=spec.fmt.describe(),
            summary_metrics=summary.get("metrics", summary) if isinstance(summary, dict) else None,
            wall_time_s=timer.seconds(),
            peak_memory_mb=memory.read_mb(),
            peak_memory_kind=memory.kind,
        ).write(out_dir)
    return out_dir

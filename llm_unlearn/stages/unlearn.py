"""unlearn: any registered method from the target model; writes the method's exports (<output_dir>/unlearned,
...), train_log.json and run_info.json (also inside each export, with that export's α)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from llm_unlearn.config import ConfigError
from llm_unlearn.methods import get_method
from llm_unlearn.models import load_model, load_tokenizer
from llm_unlearn.runs import PeakMemory, RunInfo, Stopwatch, check_run_dir, prepare_run_dir
from llm_unlearn.stages.evaluate import suite_input
from llm_unlearn.stages.loading import build_seeded_model, resume_checkpoint
from llm_unlearn.stages.spec import RunOptions, RunSpec, check_sources, hyperparameters, training_args
from llm_unlearn.stages.training_data import TrainingData
from llm_unlearn.utils import atomic_write_json


def run_unlearn(spec: RunSpec, options: RunOptions) -> Path:
    method = get_method(spec.method or "")
    args = training_args(spec, "unlearn")
    check_sources(spec, "unlearn")
    check_run_dir(args.output_dir, options.overwrite, options.resume)
    data = TrainingData.load(spec.data)
    if data.is_text and method.trainer.wants_refusal(args):
        raise ConfigError(
            f"method {spec.method!r} needs question/answer data (refusals); {spec.data.dataset!r} is raw text"
        )
    timer, memory = Stopwatch(), PeakMemory()
    tokenizer = load_tokenizer(spec.model.name_or_path)
    model = build_seeded_model(spec.model, args.seed)
    ref_model = None
    if spec.model.lora is None and method.trainer.wants_reference(args):
        # Full weights: a frozen second copy, loaded only because this loss needs θ_ref.
        ref_model = load_model(spec.model.ref_model_path or spec.model.name_or_path, dtype=spec.model.dtype)
    # What the evaluation callback reads (harness tasks load their data here), before the run folder exists.
    eval_input = suite_input(spec, data, spec.eval_options()) if spec.evaluation.every_n_steps > 0 else None
    run_dir = prepare_run_dir(args.output_dir, options.overwrite, options.resume)  # only once the inputs loaded
    trainer = method.trainer(
        model=model,
        args=args,
        train_dataset=data.paired_dataset(tokenizer, spec.fmt, args.seed),
        processing_class=tokenizer,
        ref_model=ref_model,
    )
    if spec.evaluation.every_n_steps > 0:
        trainer.add_callback(_evaluation_callback(spec, eval_input, tokenizer, run_dir, trainer))
    trainer.train(resume_from_checkpoint=resume_checkpoint(run_dir, options.resume, trainer))
    exports = trainer.export(run_dir, model_source=spec.model)
    if trainer.accelerator.is_main_process:
        atomic_write_json(run_dir / "train_log.json", trainer.state.log_history)
        info = RunInfo(
            stage="unlearn",
            method=spec.method,
            base_model=spec.model.name_or_path,
            seed=args.seed,
            hyperparameters=hyperparameters(args),
            provenance=args.provenance(),
            lora=asdict(spec.model.lora) if spec.model.lora else None,
            data=data.summary(),
            format=spec.fmt.describe(),
            exports=exports,
            runaway_steps=trainer.runaway_steps[:20],
            world_size=trainer.accelerator.num_processes,
            wall_time_s=timer.seconds(),
            peak_memory_mb=memory.read_mb(),
            peak_memory_kind=memory.kind,
        )
        info.write(run_dir)
        # Each exported folder carries its own provenance (its α), so it can be pushed on its own.
        for name, export in exports.items():
            replace(
                info, provenance={**info.provenance, "alpha": export.get("alpha", info.alpha)}, export=export
            ).write(run_dir / name)
    trainer.accelerator.wait_for_everyone()
    return run_dir / "unlearned"


def _evaluation_callback(spec: RunSpec, eval_input, tokenizer, run_dir: Path, trainer):
    from llm_unlearn.evaluation.callback import EvaluationCallback

    settings = spec.evaluation
    sets = tuple(settings.during_training_sets) if settings.during_training_sets else None
    return EvaluationCallback(
        tokenizer,
        settings.suite,
        eval_input,
        run_dir / "eval_steps",
        settings.every_n_steps,
        options=spec.eval_options(),
        fmt=spec.fmt,
        reference_log=settings.reference_log,
        sets=sets,
        trainer=trainer,
    )

"""finetune: fit the target model (forget + retain) or the retain model (retain only); writes <output_dir>/model
(LoRA merged in unless finetune.merge_lora is false), train_log.json and run_info.json."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from transformers import Trainer

from llm_unlearn.data.collate import PaddingCollator
from llm_unlearn.models import is_peft_model, load_tokenizer
from llm_unlearn.runs import PeakMemory, RunInfo, Stopwatch, check_run_dir, prepare_run_dir
from llm_unlearn.stages.loading import build_seeded_model, resume_checkpoint, save_model_folder
from llm_unlearn.stages.spec import RunOptions, RunSpec, check_sources, hyperparameters, training_args
from llm_unlearn.stages.training_data import TrainingData
from llm_unlearn.utils import atomic_write_json


def run_finetune(spec: RunSpec, options: RunOptions) -> Path:
    args = training_args(spec, "finetune")
    check_sources(spec, "finetune")
    check_run_dir(args.output_dir, options.overwrite, options.resume)
    data = TrainingData.load(spec.data)
    timer, memory = Stopwatch(), PeakMemory()
    tokenizer = load_tokenizer(spec.model.name_or_path)
    model = build_seeded_model(spec.model, args.seed)
    run_dir = prepare_run_dir(args.output_dir, options.overwrite, options.resume)  # only once the inputs loaded
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.finetune_dataset(spec.finetune.which, tokenizer, spec.fmt),
        data_collator=PaddingCollator(tokenizer.pad_token_id, mask_pad_ids=spec.fmt.label_mode == "open_unlearning"),
        processing_class=tokenizer,
    )
    trainer.train(resume_from_checkpoint=resume_checkpoint(run_dir, options.resume, trainer))
    out = run_dir / "model"
    if trainer.accelerator.is_main_process:
        final = trainer.accelerator.unwrap_model(trainer.model)
        if is_peft_model(final) and spec.finetune.merge_lora and not spec.model.quantization:
            final = final.merge_and_unload()
        save_model_folder(final, tokenizer, out)
        atomic_write_json(run_dir / "train_log.json", trainer.state.log_history)
        RunInfo(
            stage="finetune",
            which=spec.finetune.which,
            base_model=spec.model.name_or_path,
            seed=args.seed,
            lora=asdict(spec.model.lora) if spec.model.lora else None,
            data=data.summary(),
            format=spec.fmt.describe(),
            hyperparameters=hyperparameters(args),
            wall_time_s=timer.seconds(),
            peak_memory_mb=memory.read_mb(),
            peak_memory_kind=memory.kind,
            model_path=str(out),
        ).write(run_dir)
    trainer.accelerator.wait_for_everyone()
    return out

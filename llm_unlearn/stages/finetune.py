"""finetune: fit the target model (forget + retain) or the retain model (retain only); writes <output_dir>/model
(LoRA merged in unless finetune.merge_lora is false), train_log.json and run_info.json."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from transformers import Trainer

from llm_unlearn.data.collate import IGNORE_INDEX, PaddingCollator
from llm_unlearn.logits import forward_logits, needed_window
from llm_unlearn.methods.losses import answer_token_logprobs
from llm_unlearn.models import is_peft_model, load_tokenizer
from llm_unlearn.runs import PeakMemory, RunInfo, Stopwatch, check_run_dir, prepare_run_dir
from llm_unlearn.stages.loading import build_seeded_model, resume_checkpoint, save_model_folder
from llm_unlearn.stages.spec import RunOptions, RunSpec, check_sources, hyperparameters, training_args
from llm_unlearn.stages.training_data import TrainingData
from llm_unlearn.utils import atomic_write_json


class AnswerLossTrainer(Trainer):
    """transformers' Trainer with the causal-LM loss taken from logits at the labelled positions only (the output
    head skips each row's prompt and padding): the same value as the model's own loss, summed token NLL over
    `num_items_in_batch` when the Trainer counts them (gradient accumulation, token averaging across devices),
    else the mean over the batch's labelled tokens (tests/test_finetune_loss.py)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        window = needed_window(labels[:, 1:] != IGNORE_INDEX)
        logprobs, mask = answer_token_logprobs(forward_logits(model, inputs, window), window.labels(labels))
        total = -logprobs.sum()
        if num_items_in_batch is None or not self.model_accepts_loss_kwargs:
            loss = total / mask.sum().clamp_min(1)
        else:
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices:
                # As Trainer.compute_loss: the count covers every process's batch, DDP averages the gradients.
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, {"loss": loss}) if return_outputs else loss


def run_finetune(spec: RunSpec, options: RunOptions) -> Path:
    args = training_args(spec, "finetune")
    check_sources(spec, "finetune")
    check_run_dir(args.output_dir, options.overwrite, options.resume)
    data = TrainingData.load(spec.data)
    timer, memory = Stopwatch(), PeakMemory()
    tokenizer = load_tokenizer(spec.model.name_or_path)
    model = build_seeded_model(spec.model, args.seed)
    run_dir = prepare_run_dir(args.output_dir, options.overwrite, options.resume)  # only once the inputs loaded
    trainer = AnswerLossTrainer(
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

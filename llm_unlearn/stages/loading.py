"""Models in and out of the stages: build the model a run trains, load the one an evaluation scores, save a
model folder atomically, and find the checkpoint a resumed run continues from."""

from __future__ import annotations

from pathlib import Path

from llm_unlearn.config import ConfigError, ModelConfig
from llm_unlearn.models import is_adapter_dir, is_lazy_alpha_dir, load_model, load_with_adapter, wrap_lora
from llm_unlearn.runs import checkpoint_files, last_checkpoint
from llm_unlearn.utils import atomic_dir


def build_model(model_cfg: ModelConfig):
    """θ_ref (plus an optional adapter merged in), then a fresh LoRA adapter when configured."""
    if model_cfg.adapter:
        if model_cfg.quantization:
            raise ConfigError("model.adapter with a quantized base: merge the adapter into full weights first")
        model = load_with_adapter(model_cfg.name_or_path, model_cfg.adapter, dtype=model_cfg.dtype).merge_and_unload()
    else:
        model = load_model(model_cfg.name_or_path, dtype=model_cfg.dtype, quantization=model_cfg.quantization)
    if model_cfg.quantization:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    if model_cfg.lora is not None:
        model = wrap_lora(model, model_cfg.lora)
    return model


def load_for_eval(model_cfg: ModelConfig, model_path: str):
    """A model folder, or an adapter folder applied onto model.name_or_path (checked to match). A lazy MOX α
    folder is materialized into a temporary folder, loaded, and the temporary files removed."""
    if is_lazy_alpha_dir(model_path):
        from llm_unlearn.methods.saved import materialized_copy

        with materialized_copy(model_path) as folder:
            return load_for_eval(model_cfg, str(folder))
    if is_adapter_dir(model_path):
        model = load_with_adapter(
            model_cfg.name_or_path, model_path, dtype=model_cfg.dtype, quantization=model_cfg.quantization
        )
    else:
        model = load_model(model_path, dtype=model_cfg.dtype)
    model.eval()
    return model


def save_model_folder(model, tokenizer, out_dir: Path) -> Path:
    def write(folder: Path):
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    return atomic_dir(out_dir, write)


def resume_checkpoint(run_dir: Path, resume: bool, trainer) -> str | None:
    """The checkpoint --resume continues from (None when not resuming); an error when there is none."""
    if not resume:
        return None
    required = checkpoint_files(trainer)
    checkpoint = last_checkpoint(run_dir, required)
    if checkpoint is None:
        raise FileNotFoundError(
            f"--resume: {run_dir} has no complete checkpoint-* folder (with {', '.join(required)}) to resume from "
            "(set training.save_strategy to 'steps' or 'epoch' so runs keep checkpoints)"
        )
    return checkpoint


def build_seeded_model(model_cfg: ModelConfig, seed: int):
    """build_model after seeding: LoRA's A matrices are drawn from the global RNG when the adapter is created,
    and the Trainer seeds only in its own __init__ (too late), so without this two runs with one seed differ."""
    from transformers import set_seed

    set_seed(seed)
    return build_model(model_cfg)

"""Every registered method, over LoRA and over full weights, moves every trainable parameter and nothing else
(TRL's trainer check): after a few optimizer steps each trainable tensor changed, frozen ones are bit-identical,
and the reference θ_ref (the adapter turned off, or the frozen copy) still is the starting model.

LoRA starts from a random, non-zero B (init_lora_weights=False, a base-preserving init): with peft's default
B = 0 the first step gives A a zero gradient, and the check would have to explain that instead of catching a
parameter that never trains.
"""

import pytest
import torch
from helpers import make_trainer, paired

from llm_unlearn.data.collate import PairedCollator
from llm_unlearn.methods import METHODS
from llm_unlearn.models import LoraSettings, tiny_llama, wrap_lora

NONZERO_B = LoraSettings(extra={"init_lora_weights": False})
STEPS = 3
# Adam moves an element with a non-zero gradient by about the learning rate per step (1e-2 here), far above this.
MOVED = 1e-5
# Full weights: this block is frozen, so that a method that steps every parameter (not only trainable ones) fails.
FROZEN_BLOCK = "model.layers.0.mlp."
# No method is exempt. The one that masks updates, SFR-on, zeroes part of its forget gradient (all of lora_A's,
# the non-salient rows of lora_B, the non-salient entries of full weights), but its retain step, every step,
# reaches every trainable parameter; GA and task_vector have no retain term but their forget NLL reaches them all.


def forget_batch(tokenizer) -> dict:
    dataset = paired(tokenizer)
    return PairedCollator(tokenizer.pad_token_id)([dataset[0], dataset[1]])["forget"]


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def starting_model(vocab: int, mode: str):
    model = tiny_llama(vocab, seed=0)
    if mode == "lora":
        return wrap_lora(model, NONZERO_B)
    for name, param in model.named_parameters():
        if name.startswith(FROZEN_BLOCK):
            param.requires_grad_(False)
    return model


@pytest.mark.parametrize("mode", ["lora", "full"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_steps_move_every_trainable_parameter_and_nothing_else(method, mode, tokenizer, tmp_path):
    vocab = len(tokenizer)
    model = starting_model(vocab, mode)
    ref_model = tiny_llama(vocab, seed=0) if mode == "full" else None  # recipes load θ_ref as a second copy
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    trainer = make_trainer(
        method,
        model,
        tokenizer,
        tmp_path,
        ref_model=ref_model,
        max_steps=STEPS,
        learning_rate=1e-2,
        # AdamW's decoupled decay moves a parameter whose gradient is zero; without it, moving means a gradient.
        weight_decay=0.0,
    )
    # Read once the trainer is built: a method may freeze parameters before its optimizer exists (RMU).
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable and len(trainable) < len(before)
    trainer.train()
    assert trainer.state.global_step == STEPS

    after = dict(trainer.accelerator.unwrap_model(trainer.model).named_parameters())
    unmoved = [name for name in sorted(trainable) if float((after[name].detach() - before[name]).abs().max()) <= MOVED]
    assert not unmoved, f"{method}/{mode}: trainable parameters did not move: {unmoved[:5]}"
    changed_frozen = [name for name in sorted(set(before) - trainable) if not torch.equal(after[name], before[name])]
    assert not changed_frozen, f"{method}/{mode}: frozen parameters changed: {changed_frozen[:5]}"

    # θ_ref is still the starting model.
    start = tiny_llama(vocab, seed=0)
    if mode == "lora":
        batch = forget_batch(tokenizer)
        with model.disable_adapter():
            assert torch.equal(logits(model, batch), logits(start, batch))
    elif trainer.ref_model is not None:
        reference = dict(trainer.accelerator.unwrap_model(trainer.ref_model).named_parameters())
        assert all(torch.equal(reference[name], param) for name, param in start.named_parameters())
    assert (trainer.ref_model is not None) == (mode == "full" and trainer.uses_reference())

    info = trainer.export_unlearned(str(tmp_path / "out"))
    assert info["kind"] == ("adapter" if mode == "lora" else "model")


def test_disabled_adapter_is_the_base_model_exactly(tokenizer):
    """With a non-zero B the adapter changes the logits; turned off it gives the base model's bit for bit."""
    vocab = len(tokenizer)
    batch = forget_batch(tokenizer)
    model = wrap_lora(tiny_llama(vocab, seed=0), NONZERO_B)
    b_norms = [float(p.detach().abs().max()) for n, p in model.named_parameters() if "lora_B" in n]
    assert b_norms and min(b_norms) > 0
    base = logits(tiny_llama(vocab, seed=0), batch)
    with model.disable_adapter():
        assert torch.equal(logits(model, batch), base)
    assert float((logits(model, batch) - base).abs().max()) > 1e-3

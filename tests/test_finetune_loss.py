"""The finetune stage's loss, taken from logits at the labelled positions only, is transformers' own causal-LM
loss: the same value and the same gradients, with and without the Trainer's token count, and the same weights
after training steps with gradient accumulation."""

import pytest
import torch
from transformers import Trainer, TrainingArguments

from llm_unlearn.data.collate import PaddingCollator, PromptFormat, QADataset
from llm_unlearn.models import LoraSettings, tiny_llama, wrap_lora
from llm_unlearn.stages.finetune import AnswerLossTrainer

ROWS = [
    {"question": "Where does Mara live, and since when has she lived there?", "answer": "Lisbon, since 2019."},
    {"question": "Plan?", "answer": "Tobin is on the Summit Basic plan with two desktop phones."},
    {"question": "Who wrote Hamlet?", "answer": "Shakespeare."},
    {"question": "What colour is the sky on a clear day?", "answer": "Blue."},
]


def make(trainer_cls, tokenizer, tmp_path, **args):
    model = wrap_lora(tiny_llama(len(tokenizer), seed=0), LoraSettings(r=4))
    dataset = QADataset(ROWS, tokenizer, PromptFormat())
    arguments = TrainingArguments(
        output_dir=str(tmp_path / trainer_cls.__name__),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        learning_rate=1e-2,
        warmup_steps=0,
        **args,
    )
    return trainer_cls(model=model, args=arguments, train_dataset=dataset, data_collator=PaddingCollator(0))


@pytest.mark.parametrize("counted", [False, True])
def test_loss_and_gradients_equal_the_models_own(tokenizer, tmp_path, counted):
    ours, theirs = (make(cls, tokenizer, tmp_path) for cls in (AnswerLossTrainer, Trainer))
    batch = PaddingCollator(0)(list(ours.train_dataset))
    count = (batch["labels"][:, 1:] != -100).sum() + 5 if counted else None  # a count from a larger accumulated batch
    losses, grads = [], []
    for trainer in (ours, theirs):
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=count)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-7, msg=name)


def test_training_with_accumulation_ends_at_the_same_weights(tokenizer, tmp_path):
    settings = {"max_steps": 2, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 2}
    weights = []
    for cls in (AnswerLossTrainer, Trainer):
        trainer = make(cls, tokenizer, tmp_path, **settings)
        trainer.train()
        weights.append({n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad})
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=1e-4, atol=1e-6, msg=name)
    assert any((w != 0).any() for n, w in weights[0].items() if "lora_B" in n)  # training did move the adapter

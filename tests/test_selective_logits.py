"""Logits only at the scored positions give the numbers the full computation gives (float tolerance)."""

import torch

from llm_unlearn.data.collate import IGNORE_INDEX, PaddingCollator, PromptFormat, QADataset
from llm_unlearn.evaluation.scoring import score_batch
from llm_unlearn.logits import first_needed, forward_logits
from llm_unlearn.methods.losses import sequence_stats, token_kl
from llm_unlearn.models import LoraSettings, tiny_llama, wrap_lora

ROWS = [
    {"question": "Where does Mara live, and since when has she lived there?", "answer": "Lisbon, since 2019."},
    {"question": "Plan?", "answer": "Tobin is on the Summit Basic plan with two desktop phones."},
    {"question": "Who wrote Hamlet?", "answer": "Shakespeare."},
]


def batch_of(tokenizer):
    items = QADataset(ROWS, tokenizer, PromptFormat()).items
    return PaddingCollator(tokenizer.pad_token_id)(
        [{"input_ids": i["input_ids"], "labels": i["labels"]} for i in items]
    )


def full_logprobs(logits, labels):
    """The long way: a full log_softmax over every position, then the labels' entries."""
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return logp.gather(-1, targets.masked_fill(~mask, 0)[..., None])[..., 0] * mask, mask


def test_kept_logits_equal_the_full_ones_and_skip_the_shared_prompt(tokenizer):
    batch = batch_of(tokenizer)
    model = tiny_llama(len(tokenizer), seed=0).eval()
    first = first_needed(batch["labels"][:, 1:] != IGNORE_INDEX)
    assert first > 5  # every row's answer starts after the chat template's prompt
    with torch.no_grad():
        full = forward_logits(model, batch)
        kept = forward_logits(model, batch, first)
    assert kept.shape[1] == full.shape[1] - first
    torch.testing.assert_close(kept, full[:, first:], rtol=1e-5, atol=1e-5)


def test_losses_and_scores_equal_the_full_computation(tokenizer):
    batch = batch_of(tokenizer)
    labels = batch["labels"]
    model = wrap_lora(tiny_llama(len(tokenizer), seed=0), LoraSettings(r=4)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
        full = forward_logits(model, batch)
        with model.disable_adapter():
            full_ref = forward_logits(model, batch)
        first = first_needed(labels[:, 1:] != IGNORE_INDEX)
        nll, summed, count = sequence_stats(forward_logits(model, batch, first), labels[:, first:])
        logp, mask = full_logprobs(full, labels)
        torch.testing.assert_close(summed.double(), logp.sum(-1), rtol=1e-5, atol=1e-5)
        assert count.tolist() == mask.sum(-1).tolist()
        # KL over the kept positions equals KL over all positions with the same mask.
        kl_mask = labels[:, 1:] != IGNORE_INDEX
        with model.disable_adapter():
            ref_kept = forward_logits(model, batch, first)
        kept_kl = token_kl(ref_kept, forward_logits(model, batch, first), kl_mask[:, first:])
        torch.testing.assert_close(kept_kl, token_kl(full_ref, full, kl_mask), rtol=1e-5, atol=1e-7)
        assert kept_kl > 0
    scores = score_batch(model, batch, distribution_stats=True)
    for row, score in enumerate(scores):
        expected = logp[row][mask[row]].tolist()
        got = torch.tensor(score.token_logprobs, dtype=torch.float64)
        assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-5)

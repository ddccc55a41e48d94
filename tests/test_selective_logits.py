"""Logits only at the scored positions give the numbers the full computation gives (float tolerance)."""

import torch

from llm_unlearn.data.collate import IGNORE_INDEX, PaddingCollator, PromptFormat, QADataset
from llm_unlearn.evaluation.scoring import score_batch
from llm_unlearn.logits import forward_logits, needed_window
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


def test_window_logits_are_the_full_ones_at_each_rows_labelled_positions(tokenizer):
    batch = batch_of(tokenizer)
    labels = batch["labels"]
    model = tiny_llama(len(tokenizer), seed=0).eval()
    needed = labels[:, 1:] != IGNORE_INDEX
    window = needed_window(needed)
    spans = [int(row.nonzero().max() - row.nonzero().min()) + 1 for row in needed]
    assert window.width == max(spans) + 1 < labels.shape[1] // 2  # prompts and padding are left out
    with torch.no_grad():
        full = forward_logits(model, batch)
        kept = forward_logits(model, batch, window)
    assert kept.shape == (len(ROWS), window.width, full.shape[-1])
    for row in range(len(ROWS)):
        # Brute force: position t of row `row` predicts labels[row, t + 1]; the window starts one before the answer.
        start = int(needed[row].nonzero().min())
        stop = min(start + window.width, labels.shape[1])
        torch.testing.assert_close(kept[row, : stop - start], full[row, start:stop], rtol=1e-5, atol=1e-5)
        assert window.labels(labels)[row, : stop - start].tolist() == labels[row, start:stop].tolist()
        assert (window.labels(labels)[row, stop - start :] == IGNORE_INDEX).all()


class Wrapped(torch.nn.Module):
    """Stands in for DDP / DeepSpeed: the model is under `.module`, the wrapper's forward is called."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, **inputs):
        return self.module(**inputs)


class HeadOutOfReach(Wrapped):
    """A model whose output head the gathering cannot find: the full logits are cut to the window instead."""

    def __getattr__(self, name):
        if name == "get_output_embeddings":
            raise AttributeError(name)
        return super().__getattr__(name)


def test_window_logits_through_a_wrapper_and_without_a_reachable_head(tokenizer):
    batch = batch_of(tokenizer)
    model = tiny_llama(len(tokenizer), seed=0).eval()
    window = needed_window(batch["labels"][:, 1:] != IGNORE_INDEX)
    with torch.no_grad():
        direct = forward_logits(model, batch, window)
        wrapped = forward_logits(Wrapped(model), batch, window)
        unreachable = HeadOutOfReach(model)
        unreachable.module = type("Plain", (torch.nn.Module,), {"forward": lambda self, **kw: model(**kw)})()
        sliced = forward_logits(unreachable, batch, window)
    torch.testing.assert_close(wrapped, direct, rtol=0, atol=0)
    torch.testing.assert_close(sliced, direct, rtol=1e-5, atol=1e-5)


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
        window = needed_window(labels[:, 1:] != IGNORE_INDEX)
        nll, summed, count = sequence_stats(forward_logits(model, batch, window), window.labels(labels))
        logp, mask = full_logprobs(full, labels)
        torch.testing.assert_close(summed.double(), logp.sum(-1), rtol=1e-5, atol=1e-5)
        assert count.tolist() == mask.sum(-1).tolist()
        # KL over the window's positions equals KL over all positions with the same mask.
        kl_mask = labels[:, 1:] != IGNORE_INDEX
        window = needed_window(kl_mask)
        with model.disable_adapter():
            ref_kept = forward_logits(model, batch, window)
        kept_kl = token_kl(ref_kept, forward_logits(model, batch, window), window.mask(kl_mask))
        torch.testing.assert_close(kept_kl, token_kl(full_ref, full, kl_mask), rtol=1e-5, atol=1e-7)
        assert kept_kl > 0
    scores = score_batch(model, batch, distribution_stats=True)
    for row, score in enumerate(scores):
        expected = logp[row][mask[row]].tolist()
        got = torch.tensor(score.token_logprobs, dtype=torch.float64)
        assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-5)


def test_window_start_and_width_are_the_brute_force_ones_on_random_masks():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        mask = torch.rand(5, 9, generator=generator) < 0.2  # some rows have no needed position
        window = needed_window(mask)
        spans = []
        for row, flags in enumerate(mask.tolist()):
            needed = [t for t, flag in enumerate(flags) if flag]
            assert int(window.start[row]) == (needed[0] if needed else 0)
            spans.append(needed[-1] - needed[0] + 1 if needed else 0)
            # every needed position of the row is inside its window after the shift
            assert all(0 <= t - needed[0] < window.width - 1 for t in needed)
        assert window.width == max(spans) + 1
    assert needed_window(torch.zeros(3, 0, dtype=torch.bool)).width == 1

"""Scoring and generation invariants: batching/padding never changes a sample's values."""

import math
from types import SimpleNamespace

import pytest
import torch

from llm_unlearn.data.collate import IGNORE_INDEX, PaddingCollator, PromptFormat, encode_prompt, encode_qa
from llm_unlearn.evaluation.scoring import (
    cut_at_stop_strings,
    encode_raw_text,
    end_of_turn_ids,
    evaluation_mode,
    generate_greedy,
    resolve_format,
    score_sequences,
)

QA = [
    ("Who wrote The Silent River?", "Mara Quill wrote The Silent River in 1987."),
    ("Where?", "Oslo."),
    (
        "What themes run through the novels of the author born in a coastal town in 1962?",
        "Her novels explore memory, migration and the sea, returning often to family secrets.",
    ),
]


def _untied(model, seed=1):
    """A random output head, so that greedy generation varies with the prompt (tied heads repeat the input)."""
    torch.manual_seed(seed)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.5)
    return model


def test_batched_scoring_equals_one_by_one(tokenizer, tiny_model):
    fmt = PromptFormat()
    items = [encode_qa(tokenizer, q, a, fmt) for q, a in QA]
    collator = PaddingCollator(tokenizer.pad_token_id, "right")
    batched = score_sequences(tiny_model, items, collator, batch_size=3, distribution_stats=True)
    for item, together in zip(items, batched):
        (alone,) = score_sequences(tiny_model, [item], collator, batch_size=1, distribution_stats=True)
        assert together.num_tokens == alone.num_tokens == sum(lab != IGNORE_INDEX for lab in item["labels"])
        assert together.mean_nll == pytest.approx(alone.mean_nll, abs=1e-5)
        assert together.token_logprobs == pytest.approx(alone.token_logprobs, abs=1e-5)
        assert together.argmax_correct == alone.argmax_correct
        assert together.mu == pytest.approx(alone.mu, abs=1e-5)
        assert together.sigma == pytest.approx(alone.sigma, abs=1e-5)
    # Different lengths really were padded together.
    assert len({len(item["input_ids"]) for item in items}) == 3


def test_mean_nll_matches_the_models_own_loss(tokenizer, tiny_model):
    item = encode_qa(tokenizer, *QA[0], PromptFormat())
    collator = PaddingCollator(tokenizer.pad_token_id, "right")
    (score,) = score_sequences(tiny_model, [item], collator, batch_size=1)
    batch = collator([item])
    with torch.no_grad():
        loss = tiny_model(**batch).loss.item()
    assert score.mean_nll == pytest.approx(loss, rel=1e-5)
    assert score.sum_logprob == pytest.approx(sum(score.token_logprobs), rel=1e-6)
    assert score.mean_nll == pytest.approx(-score.sum_logprob / score.num_tokens, rel=1e-9)


class FixedLogits(torch.nn.Module):
    """Every position predicts logits [ln 3, 0, 0, 0]: p = [1/2, 1/6, 1/6, 1/6]."""

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, 4)
        logits[..., 0] = math.log(3)
        return SimpleNamespace(logits=logits)


def test_token_statistics_by_hand():
    # Labelled targets 0 (p = 1/2, the argmax) and 1 (p = 1/6, not the argmax); the first token is context.
    item = {"input_ids": [3, 0, 1], "labels": [IGNORE_INDEX, 0, 1]}
    (score,) = score_sequences(FixedLogits(), [item], PaddingCollator(3, "right"), 1, distribution_stats=True)
    assert score.num_tokens == 2
    assert score.token_logprobs == pytest.approx([math.log(1 / 2), math.log(1 / 6)])
    assert score.argmax_correct == [True, False]
    assert score.mean_nll == pytest.approx((math.log(2) + math.log(6)) / 2)
    # Under p: log p is ln(1/2) or ln(1/6), each with mass 1/2 -> mean halfway, std half the gap (ln 3 / 2).
    assert score.mu == pytest.approx([(math.log(1 / 2) + math.log(1 / 6)) / 2] * 2)
    assert score.sigma == pytest.approx([math.log(3) / 2] * 2, rel=1e-4)


def test_raw_text_scores_every_token_but_the_first(tokenizer):
    item = encode_raw_text(tokenizer, "The council met on Tuesday to discuss the bridge.", max_length=6)
    assert len(item["input_ids"]) == 6
    assert item["labels"][0] == IGNORE_INDEX and item["labels"][1:] == item["input_ids"][1:]


def test_left_padded_batched_generation_equals_unbatched(tokenizer, tiny_model):
    model = _untied(tiny_model)
    fmt = PromptFormat()
    prompts = [encode_prompt(tokenizer, q, fmt) for q, _ in QA]
    stop = end_of_turn_ids(tokenizer, fmt, model)
    batched = generate_greedy(model, tokenizer, prompts, 10, batch_size=3, stop_token_ids=stop)
    alone = [generate_greedy(model, tokenizer, [p], 10, batch_size=1, stop_token_ids=stop)[0] for p in prompts]
    assert batched == alone
    assert all(batched) and len(set(batched)) > 1


def test_generation_cuts_at_the_first_stop_token(tokenizer, tiny_model):
    model = _untied(tiny_model)
    prompt = encode_prompt(tokenizer, QA[0][0], PromptFormat())
    ids = torch.tensor([prompt])
    with torch.no_grad():
        raw = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    new = raw[0, len(prompt) :].tolist()
    (text,) = generate_greedy(model, tokenizer, [prompt], 6, 1, stop_token_ids=[new[2]])
    assert text == tokenizer.decode(new[:2], skip_special_tokens=True).strip()


def test_end_of_turn_ids_include_the_chat_end_token(tokenizer, tiny_model):
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in end_of_turn_ids(tokenizer, PromptFormat(), tiny_model)


def test_cut_at_stop_strings():
    assert cut_at_stop_strings("Paris\n\nQuestion: next", ("\n\n", "Question")) == "Paris"
    assert cut_at_stop_strings("Paris is nice. Question: x", ("\n\n", "Question")) == "Paris is nice. "
    assert cut_at_stop_strings("no stop here", ("\n\n",)) == "no stop here"


def test_evaluation_mode_restores_each_modules_training_flag(tokenizer, tiny_model):
    tiny_model.train()
    tiny_model.model.layers[0].eval()  # a deliberately frozen-in-eval submodule must stay in eval
    before = [m.training for m in tiny_model.modules()]
    with evaluation_mode(tiny_model):
        assert not any(m.training for m in tiny_model.modules())
        assert not torch.is_grad_enabled()
    assert [m.training for m in tiny_model.modules()] == before
    item = encode_qa(tokenizer, *QA[1], PromptFormat())
    score_sequences(tiny_model, [item], PaddingCollator(tokenizer.pad_token_id, "right"), 1)
    generate_greedy(tiny_model, tokenizer, [encode_prompt(tokenizer, QA[1][0], PromptFormat())], 2, 1, [2])
    assert [m.training for m in tiny_model.modules()] == before


def test_resolve_format():
    assert resolve_format(None, None).label_mode == "answer_eot"
    assert resolve_format(None, "open_unlearning").label_mode == "open_unlearning"
    assert resolve_format(PromptFormat(system_prompt="S"), "open_unlearning").system_prompt == "S"
    with pytest.raises(ValueError, match="set one of them"):
        resolve_format(PromptFormat(label_mode="open_unlearning"), "answer_eot")

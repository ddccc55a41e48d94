"""The evaluation's speed work changes no number: shared-prefix scoring equals scoring each sequence alone."""

import math

import pytest
import torch

from llm_unlearn.data.collate import IGNORE_INDEX, PaddingCollator, PromptFormat, encode_qa
from llm_unlearn.evaluation.scoring import score_sequences, score_shared_prefixes, unscored_prefix
from llm_unlearn.models import LoraSettings, tiny_llama, wrap_lora

QUESTIONS = {
    "Where does Mara live, and since when has she lived there?": [
        "Lisbon, since 2019.",
        "She has lived in Lisbon since 2019, near the river.",
        "Porto.",
    ],
    "Plan?": ["Tobin is on the Summit Basic plan with two desktop phones.", "Basic.", "The Summit plan."],
    "Who wrote Hamlet, the play about a Danish prince?": ["Shakespeare.", "Marlowe wrote it in 1590."],
}


def encoded(tokenizer, fmt=None):
    fmt = fmt or PromptFormat()
    return [encode_qa(tokenizer, q, a, fmt) for q, answers in QUESTIONS.items() for a in answers]


def alone(model, item):
    """Each sequence by itself, no padding: per-token log p(label) from a full log_softmax."""
    ids = torch.tensor([item["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    labels = torch.tensor(item["labels"][1:])
    keep = labels != IGNORE_INDEX
    return logp[keep].gather(-1, labels[keep][:, None])[:, 0], logp[keep].argmax(-1) == labels[keep]


def lora(tokenizer):
    model = wrap_lora(tiny_llama(len(tokenizer), seed=0), LoraSettings(r=4)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    return model


def test_items_of_one_question_share_their_prompt_and_nothing_they_score(tokenizer):
    items = encoded(tokenizer)
    prefixes = [unscored_prefix(item) for item in items]
    assert len(set(prefixes)) == len(QUESTIONS)  # one per question
    for item, prefix in zip(items, prefixes):
        first_label = next(t for t, label in enumerate(item["labels"]) if label != IGNORE_INDEX)
        assert len(prefix) == first_label - 1 and tuple(item["input_ids"][: len(prefix)]) == prefix


@pytest.mark.parametrize("mask_pad_ids", [False, True])
@pytest.mark.parametrize("wrap", [False, True])
def test_shared_prefix_scores_equal_each_sequence_scored_alone(tokenizer, mask_pad_ids, wrap):
    model = lora(tokenizer) if wrap else tiny_llama(len(tokenizer), seed=0).eval()
    items = encoded(tokenizer)
    collator = PaddingCollator(tokenizer.pad_token_id, "right", mask_pad_ids=mask_pad_ids)
    shared = score_shared_prefixes(model, items, collator, distribution_stats=True)
    batched = score_sequences(model, items, collator, batch_size=len(items), distribution_stats=True)
    for item, a, b in zip(items, shared, batched):
        expected, correct = alone(model, item) if not mask_pad_ids else (None, None)
        for score in (a, b):
            if expected is not None:
                torch.testing.assert_close(
                    torch.tensor(score.token_logprobs, dtype=torch.double), expected, atol=1e-5, rtol=0
                )
                assert score.argmax_correct == correct.tolist()
        torch.testing.assert_close(torch.tensor(a.token_logprobs), torch.tensor(b.token_logprobs), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(a.mu), torch.tensor(b.mu), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(a.sigma), torch.tensor(b.sigma), atol=1e-5, rtol=1e-5)
        assert a.num_tokens == b.num_tokens and a.end_tokens == b.end_tokens


def test_a_batch_without_shared_prefixes_is_one_plain_forward(tokenizer, monkeypatch):
    import llm_unlearn.evaluation.scoring as scoring

    items = [encoded(tokenizer)[i] for i in (0, 3, 6)]  # one answer per question
    monkeypatch.setattr(scoring, "score_shared_prefixes", lambda *a, **k: pytest.fail("no prefix is shared"))
    model = tiny_llama(len(tokenizer), seed=0).eval()
    scores = score_sequences(model, items, PaddingCollator(tokenizer.pad_token_id), batch_size=8)
    for item, score in zip(items, scores):
        torch.testing.assert_close(
            torch.tensor(score.token_logprobs, dtype=torch.double), alone(model, item)[0], atol=1e-5, rtol=0
        )


def _varied_sets():
    """TOFU-shaped sets whose questions differ in length, so that ordering by length changes the batches."""
    from test_eval_suites import tofu_sets

    sets = tofu_sets(forget_names=("Ana Brel", "Tomas Ukko of the Northern Isles", "Lia Fenn", "Bo", "Rui Santos"))
    sets["forget"][1]["question"] += " Please answer with the city and the year of the writer's birth."
    return sets


@pytest.mark.parametrize("label_mode", ["answer_eot", "open_unlearning"])
def test_tofu_suite_values_and_generations_are_those_of_plain_scoring(tokenizer, monkeypatch, label_mode):
    """The whole suite with the speed work (shared prompts, length order) against the same suite scoring each
    batch whole in the rows' own order: per-sample values equal to 1e-6, generations identical."""
    import llm_unlearn.evaluation.scoring as scoring
    import llm_unlearn.evaluation.tofu as tofu

    model = lora(tokenizer)
    options = tofu.TofuEvalOptions(batch_size=2, max_new_tokens=6, label_mode=label_mode)
    fast = tofu.evaluate_tofu(model, tokenizer, _varied_sets(), options)
    with monkeypatch.context() as patch:
        patch.setattr(scoring, "cache_argument", lambda model: None)
        patch.setattr(tofu, "length_ordered", lambda records, tokenizer, fmt: list(records))
        shared = []
        patch.setattr(scoring, "score_shared_prefixes", lambda *a, **k: shared.append(1))
        plain = tofu.evaluate_tofu(model, tokenizer, _varied_sets(), options)
        assert not shared
    assert fast.per_sample.keys() == plain.per_sample.keys()
    compared, worst = 0, {}
    for set_name, columns in plain.per_sample.items():
        assert columns.keys() == fast.per_sample[set_name].keys(), set_name
        for column, values in columns.items():
            for index, value in values.items():
                got = fast.per_sample[set_name][column][index]
                numbers = value if isinstance(value, list) else [value]
                if not all(isinstance(v, float) for v in numbers):
                    assert got == value, (set_name, column, index)  # generations, hashes: identical
                    continue
                got = got if isinstance(got, list) else [got]
                assert len(got) == len(numbers), (set_name, column, index)
                for a, b in zip(got, numbers):
                    compared += 1
                    if not (math.isnan(a) and math.isnan(b)):
                        worst[column] = max(worst.get(column, 0.0), abs(a - b) / max(1.0, abs(b)))
    # Min-K%++ divides by the spread of the model's own log-probabilities, tiny for a near-uniform random model,
    # so float rounding of the logits (1e-7) grows there; every other value agrees to 1e-6.
    loose = {"mia_min_k_pp": 1e-4}
    assert {c: e for c, e in worst.items() if e > loose.get(c, 1e-6)} == {}, worst
    assert compared > 100
    assert fast.metrics.keys() == plain.metrics.keys()
    for key, value in plain.metrics.items():
        if value is None:
            assert fast.metrics[key] is None, key
        else:
            assert fast.metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6, nan_ok=True), key


@pytest.mark.parametrize("wrap", [False, True])
def test_greedy_loop_that_drops_finished_rows_writes_what_generate_writes(tokenizer, monkeypatch, wrap):
    """Rows that end at different steps (stop tokens picked from the model's own greedy output, a stop string)
    leave the batch early; every row's text is still the one transformers' generate gives for it."""
    import llm_unlearn.evaluation.scoring as scoring

    model = lora(tokenizer) if wrap else tiny_llama(len(tokenizer), seed=0).eval()
    prompts = [list(tokenizer(q)["input_ids"]) for q in QUESTIONS] + [list(tokenizer("Hi")["input_ids"])]
    free = scoring.generate_greedy(model, tokenizer, prompts, 12, len(prompts), stop_token_ids=[])
    tokens = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in free]
    # Stop ids that end rows after different numbers of steps; one stop string ends another row.
    stops = sorted({row[min(i + 1, len(row) - 1)] for i, row in enumerate(tokens) if row})
    stop_strings = [free[-1][2:5]] if len(free[-1]) > 5 else []
    calls = []
    original = scoring._greedy_dropping_finished_rows
    monkeypatch.setattr(scoring, "_greedy_dropping_finished_rows", lambda *a: calls.append(1) or original(*a))
    ours = scoring.generate_greedy(model, tokenizer, prompts, 12, 3, stops, stop_strings)
    assert calls
    monkeypatch.setattr(scoring, "cache_argument", lambda model: None)
    theirs = scoring.generate_greedy(model, tokenizer, prompts, 12, 3, stops, stop_strings)
    assert ours == theirs
    assert len({len(text) for text in ours}) > 1  # rows did end at different lengths

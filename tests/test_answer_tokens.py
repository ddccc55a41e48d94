"""Which tokens each metric sees: ES, EM, Min-K% and Min-K%++ over the answer tokens, LOSS / Prob over the whole
labelled span; open_unlearning's token sets; its end token and the plain-text path's BOS on a local tokenizer."""

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from llm_unlearn.data.collate import IGNORE_INDEX, PaddingCollator, PromptFormat, encode_prompt, encode_qa
from llm_unlearn.evaluation.scoring import score_batch
from llm_unlearn.evaluation.tofu import TofuEvalOptions, evaluate_tofu

MARGIN = 4.0  # the stub's logit on the token it predicts; every other logit is 0
WRONG = 0  # the token the stub predicts instead of an end token

RECORDS = [
    {"index": 7, "question": "Where was Mara Quill born?", "answer": "Mara Quill was born in Oslo."},
    {"index": 9, "question": "What did she write?", "answer": "She wrote The Silent River in 1987."},
]
ANSWER_ONLY = TofuEvalOptions(batch_size=2, sets=("forget",), metrics=("prob", "memorization", "mia"))


class RightAnswersWrongEnd(torch.nn.Module):
    """Teacher-forced stub: position t puts MARGIN on input token t + 1 (right), except where that token is an
    end token, where it puts MARGIN on WRONG instead. Every labelled position thus has the same distribution
    (one token at MARGIN, the rest at 0)."""

    def __init__(self, vocab_size: int, end_ids: list[int]):
        super().__init__()
        self.vocab_size, self.end_ids = vocab_size, torch.tensor(end_ids)

    def forward(self, input_ids, attention_mask):
        following = input_ids[:, 1:]
        predicted = torch.where(torch.isin(following, self.end_ids), torch.full_like(following, WRONG), following)
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits[:, :-1].scatter_(2, predicted[..., None], MARGIN)
        return SimpleNamespace(logits=logits)


def _by_hand(vocab_size: int) -> SimpleNamespace:
    """Log-probs of a right and a wrong token under the stub's distribution, its mean and std of log p, and the
    standardized (Min-K%++) values of both, in float64."""
    log_z = math.log(math.exp(MARGIN) + vocab_size - 1)
    right, wrong = MARGIN - log_z, -log_z
    p_top, p_rest = math.exp(right), math.exp(wrong)
    mu = p_top * right + (vocab_size - 1) * p_rest * wrong
    sigma = math.sqrt(p_top * (right - mu) ** 2 + (vocab_size - 1) * p_rest * (wrong - mu) ** 2)
    return SimpleNamespace(right=right, wrong=wrong, z_right=(right - mu) / sigma, z_wrong=(wrong - mu) / sigma)


def _labelled(item) -> list[int]:
    return [tok for tok in item["labels"] if tok != IGNORE_INDEX]


def _answer_ids(tokenizer, record, fmt) -> list[int]:
    """The answer's own tokens: the labelled span up to the first end-of-turn token, checked against the text."""
    labelled = _labelled(encode_qa(tokenizer, record["question"], record["answer"], fmt))
    answer = labelled[: labelled.index(tokenizer.eos_token_id)]
    assert tokenizer.decode(answer) == record["answer"]
    return answer


def test_right_answer_with_a_wrong_end_token_is_fully_memorized(tokenizer):
    eos = tokenizer.eos_token_id  # <|im_end|>, the end-of-turn token of SmolLM2's template
    model = RightAnswersWrongEnd(len(tokenizer), [eos])
    result = evaluate_tofu(model, tokenizer, {"forget": RECORDS}, ANSWER_ONLY)
    forget, hand = result.per_sample["forget"], _by_hand(len(tokenizer))
    for record in RECORDS:
        key, n = str(record["index"]), len(_answer_ids(tokenizer, record, PromptFormat()))
        assert _labelled(encode_qa(tokenizer, record["question"], record["answer"], PromptFormat()))[n:] == [eos]
        assert forget["extraction_strength"][key] == 1.0
        assert forget["exact_memorization"][key] == 1.0
        # Min-K% / Min-K%++ over the n answer tokens, all with the same right-token value (the end token's far
        # lower log-prob would be the minimum otherwise).
        assert forget["mia_min_k"][key] == pytest.approx(-hand.right, rel=1e-5)
        assert forget["mia_min_k_pp"][key] == pytest.approx(-hand.z_right, rel=1e-4)
        # LOSS and Prob keep the end token: mean NLL over n + 1 tokens.
        loss = -(n * hand.right + hand.wrong) / (n + 1)
        assert forget["mia_loss"][key] == pytest.approx(loss, rel=1e-5)
        assert forget["nll"][key] == pytest.approx(loss, rel=1e-5)
        assert forget["prob"][key] == pytest.approx(math.exp(-loss), rel=1e-4)  # float32 logits
    assert result.metrics["forget_extraction_strength"] == 1.0
    assert result.metrics["forget_exact_memorization"] == 1.0


def test_open_unlearning_mode_drops_exactly_the_last_labelled_token(tokenizer):
    # open-unlearning labels answer + <|im_end|> + "\n" + an appended <|im_end|>, and leaves only the last one
    # out of ES, EM, Min-K% and Min-K%++. The stub is wrong at both <|im_end|> and right at "\n".
    eos = tokenizer.eos_token_id
    model = RightAnswersWrongEnd(len(tokenizer), [eos])
    fmt = PromptFormat(label_mode="open_unlearning")
    result = evaluate_tofu(model, tokenizer, {"forget": RECORDS}, replace(ANSWER_ONLY, label_mode="open_unlearning"))
    forget, hand = result.per_sample["forget"], _by_hand(len(tokenizer))
    for record in RECORDS:
        key, n = str(record["index"]), len(_answer_ids(tokenizer, record, fmt))
        tail = _labelled(encode_qa(tokenizer, record["question"], record["answer"], fmt))[n:]
        assert tokenizer.decode(tail) == "<|im_end|>\n<|im_end|>" and len(tail) == 3
        # Kept: n right answer tokens, <|im_end|> (wrong), "\n" (right) -> n + 2 tokens.
        assert forget["exact_memorization"][key] == pytest.approx((n + 1) / (n + 2))
        assert forget["extraction_strength"][key] == pytest.approx(1 - (n + 1) / (n + 2))  # suffix: "\n" only
        lowest = max(1, int(0.4 * (n + 2)))  # the wrong <|im_end|> and lowest - 1 right tokens
        assert forget["mia_min_k"][key] == pytest.approx(-(hand.wrong + (lowest - 1) * hand.right) / lowest, rel=1e-5)
        assert forget["mia_min_k_pp"][key] == pytest.approx(
            -(hand.z_wrong + (lowest - 1) * hand.z_right) / lowest, rel=1e-4
        )
        # LOSS keeps all n + 3 labelled tokens, both <|im_end|> included.
        assert forget["mia_loss"][key] == pytest.approx(-((n + 1) * hand.right + 2 * hand.wrong) / (n + 3), rel=1e-5)


def test_end_token_counts_follow_the_label_span(tokenizer):
    question, answer = RECORDS[1]["question"], RECORDS[1]["answer"]
    for fmt in (PromptFormat(), PromptFormat(use_chat_template=False), PromptFormat(label_mode="open_unlearning")):
        item = encode_qa(tokenizer, question, answer, fmt)
        assert item["end_tokens"] == 1, fmt
        assert _labelled(item)[-1] == tokenizer.eos_token_id
    # Cut inside the answer: no end token is left, every kept labelled token is the answer's.
    full = encode_qa(tokenizer, question, answer, PromptFormat())
    cut = encode_qa(tokenizer, question, answer, PromptFormat(max_length=len(full["input_ids"]) - 4))
    assert cut["end_tokens"] == 0 and tokenizer.eos_token_id not in _labelled(cut)


def test_score_batch_rejects_more_end_tokens_than_labelled_tokens():
    batch = PaddingCollator(0, "right")([{"input_ids": [3, 1, 2], "labels": [IGNORE_INDEX, 1, 2]}])
    model = RightAnswersWrongEnd(4, [2])
    (score,) = score_batch(model, batch, end_tokens=[1])
    assert score.num_answer_tokens == 1 and score.answer_argmax_correct == [True]
    with pytest.raises(ValueError, match="end_tokens=3 is impossible"):
        score_batch(model, batch, end_tokens=[3])
    with pytest.raises(ValueError, match="1 rows"):
        score_batch(model, batch, end_tokens=[0, 0])


# ---- a local word-level tokenizer: BOS and the open_unlearning end token --------------------------------------

WORDS = ["Question", "Answer", ":", "Where", "is", "Paris", "?", "It", "in", "France", "."]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|assistant|> {{ m['content'] }} </s>"
    "{% else %}<|user|> {{ m['content'] }} </s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def word_tokenizer(adds_bos: bool, chat_template: str | None = None):
    """A WordLevel tokenizer with <s>/</s>; its post-processor puts <s> first when `adds_bos` (like Llama-2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(specials)
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.mark.parametrize("label_mode", ["answer_eot", "open_unlearning"])
@pytest.mark.parametrize("adds_bos", [True, False])
def test_plain_text_path_starts_like_the_tokenizer_and_ends_with_one_eos(adds_bos, label_mode):
    tokenizer = word_tokenizer(adds_bos)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    fmt = PromptFormat(use_chat_template=False, label_mode=label_mode)
    item = encode_qa(tokenizer, "Where is Paris?", "It is in France.", fmt)
    # Exactly what tokenizer(text) gives (BOS included when it adds one), plus one eos.
    assert item["input_ids"] == tokenizer("Question: Where is Paris?\nAnswer: It is in France.")["input_ids"] + [eos]
    assert item["input_ids"].count(bos) == (1 if adds_bos else 0)
    assert item["input_ids"].count(eos) == 1
    assert _labelled(item) == tokenizer("It is in France.", add_special_tokens=False)["input_ids"] + [eos]
    assert item["end_tokens"] == 1
    prompt = encode_prompt(tokenizer, "Where is Paris?", fmt)
    assert prompt == item["input_ids"][: len(prompt)] and prompt.count(bos) == (1 if adds_bos else 0)


@pytest.mark.parametrize("label_mode", ["answer_eot", "open_unlearning"])
def test_template_that_already_ends_with_eos_gets_no_second_one(label_mode):
    tokenizer = word_tokenizer(adds_bos=False, chat_template=CHAT_TEMPLATE)
    eos = tokenizer.eos_token_id
    item = encode_qa(tokenizer, "Where is Paris?", "It is in France.", PromptFormat(label_mode=label_mode))
    rendered = "<|user|> Where is Paris? </s><|assistant|> It is in France. </s>"
    assert item["input_ids"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert item["input_ids"][-1] == eos and item["input_ids"][-2] != eos
    assert _labelled(item) == tokenizer("It is in France. </s>", add_special_tokens=False)["input_ids"]
    assert item["end_tokens"] == 1


def test_open_unlearning_appends_eos_when_the_template_ends_otherwise(tokenizer):
    # SmolLM2's template ends with "<|im_end|>\n": the appended eos is the only one after the "\n".
    item = encode_qa(tokenizer, "Q?", "Yes.", PromptFormat(label_mode="open_unlearning"))
    ids, eos = item["input_ids"], tokenizer.eos_token_id
    assert ids[-1] == eos and tokenizer.decode(ids[-2:-1]) == "\n" and ids[-3] == eos

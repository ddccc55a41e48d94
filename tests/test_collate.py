"""collate.py with the real SmolLM2 tokenizer: label span, pad == eos, masks, open-unlearning mode, pairing."""

import pytest

from llm_unlearn.data.collate import (
    IGNORE_INDEX,
    PaddingCollator,
    PairedCollator,
    PairedDataset,
    PromptFormat,
    QADataset,
    encode_qa,
    prompt_text,
    refusal_records,
)

QA = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Who wrote 'Moby-Dick'?", "Herman Melville"),
    ("Where was the author born?", 'She was born in "Tallinn", Estonia, on 3 May 1971 — a cold spring.'),
]


def labelled_ids(item):
    return [tok for tok in item["labels"] if tok != IGNORE_INDEX]


@pytest.mark.parametrize("question, answer", QA)
def test_labels_are_exactly_answer_plus_end_of_turn(tokenizer, question, answer):
    fmt = PromptFormat()
    item = encode_qa(tokenizer, question, answer, fmt)
    assert tokenizer.decode(labelled_ids(item)) == answer + "<|im_end|>"
    # The labelled span is contiguous and starts right after the prompt.
    positions = [i for i, tok in enumerate(item["labels"]) if tok != IGNORE_INDEX]
    assert positions == list(range(positions[0], positions[-1] + 1))
    assert tokenizer.decode(item["input_ids"][: positions[0]]) == prompt_text(tokenizer, question, fmt)
    # Only the template's trailing newline follows the end-of-turn token.
    assert tokenizer.decode(item["input_ids"][positions[-1] + 1 :]) == "\n"


def test_pad_equal_to_eos_keeps_the_eos_label_after_padding(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SmolLM2: the case that bites
    short = encode_qa(tokenizer, "Q?", "Yes.", PromptFormat())
    long = encode_qa(
        tokenizer, "A much longer question with many words?", "A much longer answer as well.", PromptFormat()
    )
    batch = PaddingCollator(tokenizer.pad_token_id, "right")([short, long])
    n = len(short["input_ids"])
    labels, mask = batch["labels"][0].tolist(), batch["attention_mask"][0].tolist()
    eos_position = max(i for i, tok in enumerate(labels) if tok != IGNORE_INDEX)
    assert labels[eos_position] == tokenizer.eos_token_id and mask[eos_position] == 1
    assert labels[:n] == short["labels"] and labels[n:] == [IGNORE_INDEX] * (batch["labels"].shape[1] - n)
    assert batch["labels"][1].tolist() == long["labels"]


@pytest.mark.parametrize("side", ["right", "left"])
def test_attention_mask_is_zero_exactly_on_pads(tokenizer, side):
    items = [encode_qa(tokenizer, q, a, PromptFormat()) for q, a in QA]
    for i, item in enumerate(items):
        item["index"] = 10 + i
    batch = PaddingCollator(tokenizer.pad_token_id, side)(items)
    width = batch["input_ids"].shape[1]
    for row, item in enumerate(items):
        n, pad = len(item["input_ids"]), width - len(item["input_ids"])
        real = [1] * n
        expected_mask = real + [0] * pad if side == "right" else [0] * pad + real
        assert batch["attention_mask"][row].tolist() == expected_mask
        ids = batch["input_ids"][row].tolist()
        assert (ids[:n] if side == "right" else ids[pad:]) == item["input_ids"]
        assert all(tok == tokenizer.pad_token_id for tok in (ids[n:] if side == "right" else ids[:pad]))
    assert batch["index"].tolist() == [10, 11, 12]


def test_open_unlearning_mode_labels_the_extra_tokens_and_masks_every_eos(tokenizer):
    question, answer = QA[0]
    item = encode_qa(tokenizer, question, answer, PromptFormat(label_mode="open_unlearning"))
    assert tokenizer.decode(labelled_ids(item)) == answer + "<|im_end|>\n<|im_end|>"
    assert item["input_ids"][-1] == tokenizer.eos_token_id
    compat = PaddingCollator(tokenizer.pad_token_id, "right", mask_pad_ids=True)([item])
    ours = PaddingCollator(tokenizer.pad_token_id, "right")([item])
    ids = item["input_ids"]
    eos_positions = [i for i, tok in enumerate(ids) if tok == tokenizer.eos_token_id]
    assert len(eos_positions) == 4  # end of system turn, end of user turn, end of answer, appended extra
    assert [i for i, m in enumerate(compat["attention_mask"][0].tolist()) if m == 0] == eos_positions
    assert ours["attention_mask"][0].tolist() == [1] * len(ids)


def test_unknown_label_mode_is_rejected():
    with pytest.raises(ValueError, match="label_mode must be one of"):
        PromptFormat(label_mode="all")


def test_non_template_format(tokenizer):
    fmt = PromptFormat(use_chat_template=False)
    question, answer = QA[0]
    item = encode_qa(tokenizer, question, answer, fmt)
    eos = tokenizer.eos_token
    assert tokenizer.decode(item["input_ids"]) == f"Question: {question}\nAnswer: {answer}{eos}"
    assert tokenizer.decode(labelled_ids(item)) == f" {answer}{eos}"
    assert prompt_text(tokenizer, question, fmt) == f"Question: {question}\nAnswer:"


def test_max_length_cuts_the_tail(tokenizer):
    full = encode_qa(tokenizer, *QA[2], PromptFormat())
    cut = encode_qa(tokenizer, *QA[2], PromptFormat(max_length=len(full["input_ids"]) - 5))
    assert cut["input_ids"] == full["input_ids"][:-5] and cut["labels"] == full["labels"][:-5]


def test_system_prompt_replaces_the_default(tokenizer):
    text = prompt_text(tokenizer, "Q?", PromptFormat(system_prompt="Be brief."))
    assert "Be brief." in text and "SmolLM" not in text
    assert "SmolLM" in prompt_text(tokenizer, "Q?", PromptFormat())  # the template's own default


def _records(prefix, n, start):
    return [
        {"question": f"{prefix} question {i}?", "answer": f"{prefix} answer {i}.", "index": start + i} for i in range(n)
    ]


def test_paired_dataset_cycles_the_whole_retain_set_and_carries_indices(tokenizer):
    forget = QADataset(_records("forget", 3, 0), tokenizer)
    retain = QADataset(_records("retain", 7, 100), tokenizer)
    paired = PairedDataset(forget, retain, seed=0)
    seen = []
    for epoch in range(3):  # 3 epochs x 3 forget items >= 7 retain items
        paired.set_epoch(epoch)
        items = [paired[i] for i in range(len(paired))]
        assert [item["forget"]["index"] for item in items] == [0, 1, 2]  # forget order is untouched
        seen += [item["retain"]["index"] for item in items]
    assert sorted(seen[:7]) == list(range(100, 107))  # one full pass before any retain item repeats
    assert set(seen) == set(range(100, 107))

    batch = PairedCollator(tokenizer.pad_token_id)([paired[0], paired[1]])
    assert set(batch) == {"forget", "retain"}
    assert batch["forget"]["index"].tolist() == [0, 1]
    assert batch["retain"]["index"].tolist() == [paired[0]["retain"]["index"], paired[1]["retain"]["index"]]


def test_paired_dataset_with_refusals_and_errors(tokenizer):
    records = _records("forget", 2, 5)
    refusals = refusal_records(records, seed=0)
    assert refusals == refusal_records(records, seed=0)
    assert [r["index"] for r in refusals] == [5, 6] and [r["question"] for r in refusals] == [
        r["question"] for r in records
    ]
    forget, refusal = QADataset(records, tokenizer), QADataset(refusals, tokenizer)
    item = PairedDataset(forget, refusal=refusal)[1]
    assert set(item) == {"forget", "refusal"} and item["refusal"]["index"] == 6
    with pytest.raises(ValueError, match="forget set is empty"):
        PairedDataset(QADataset([], tokenizer))
    with pytest.raises(ValueError, match="one item per forget item"):
        PairedDataset(forget, refusal=QADataset(refusals[:1], tokenizer))


def test_qa_dataset_index_defaults_to_position(tokenizer):
    dataset = QADataset([{"question": "q?", "answer": "a."}, {"question": "r?", "answer": "b.", "index": 9}], tokenizer)
    assert [dataset[i]["index"] for i in range(2)] == [0, 9]

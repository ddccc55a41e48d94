"""Prompt formatting, answer-only labels, padding, and the paired forget/retain dataset.

Labels cover exactly the answer tokens plus the first end-of-turn token; everything else is -100.
Padding is found through the attention mask, never by comparing ids with eos (SmolLM2's pad is its eos).
The `open_unlearning` label mode reproduces that toolkit's span and mask so numbers can be compared with
results published with it; it is never the default.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100
LABEL_MODES = ("answer_eot", "open_unlearning")

# Our own refusal answers, used by the IdK baseline and MOX's targeted variant.
REFUSALS = (
    "I don't know.",
    "I'm not sure about that.",
    "I have no information on that.",
    "That is something I can't answer.",
    "I don't have that information.",
    "I'm unable to say.",
    "I can't recall anything about that.",
    "I have no knowledge of that.",
    "Sorry, I don't know the answer.",
    "That's not something I know.",
    "I'm afraid I can't help with that question.",
    "I have no details about that.",
)


@dataclass
class PromptFormat:
    """How a question/answer pair becomes tokens.

    use_chat_template: render with the tokenizer's chat template when it has one, else
        "Question: {q}\\nAnswer: {a}" followed by eos (and preceded by BOS when the tokenizer adds one, as
        a base Llama-2-style tokenizer does).
    system_prompt: None keeps the template's own default (SmolLM2 inserts one); a string replaces it.
    label_mode: "answer_eot" (correct span, default) or "open_unlearning" (its span and pad-id mask).
    max_length: sequences longer than this are cut at the end (the answer tail loses its labels).
    """

    use_chat_template: bool = True
    system_prompt: str | None = None
    label_mode: str = "answer_eot"
    max_length: int = 512

    def __post_init__(self):
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, not {self.label_mode!r}")

    def describe(self) -> dict:
        return asdict(self)


def _messages(fmt: PromptFormat, question: str, answer: str | None = None) -> list[dict]:
    messages = []
    if fmt.system_prompt is not None:
        messages.append({"role": "system", "content": fmt.system_prompt})
    messages.append({"role": "user", "content": question})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def _uses_template(tokenizer, fmt: PromptFormat) -> bool:
    return fmt.use_chat_template and getattr(tokenizer, "chat_template", None) is not None


def _render(tokenizer, messages: list[dict], fmt: PromptFormat, **options) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **options)
    except TemplateError as err:  # the template's own raise_exception (e.g. no system role)
        if fmt.system_prompt is not None and "system" in str(err).lower():
            raise ValueError(
                "format.system_prompt: this model's chat template has no system role (Gemma, early Mistral); set "
                "format.system_prompt to null, or put the instruction into the questions"
            ) from None
        raise ValueError(f"the tokenizer's chat template failed to render a question/answer pair: {err}") from None


def prompt_text(tokenizer, question: str, fmt: PromptFormat) -> str:
    """The text the model sees before its answer (what generation starts from)."""
    if _uses_template(tokenizer, fmt):
        return _render(tokenizer, _messages(fmt, question), fmt, add_generation_prompt=True)
    return f"Question: {question}\nAnswer:"


def leading_special_ids(tokenizer) -> list[int]:
    """The ids the tokenizer itself puts before any text (Llama-2's BOS); [] when it adds none (SmolLM2)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start])
    return []


def _prefix_ids(tokenizer, text: str) -> list[int]:
    """The tokenizer's own leading ids (a BOS) unless the text already starts with them: a plain prompt gets the
    BOS a base model expects, and a chat template that writes `{{ bos_token }}` itself is not given a second."""
    prefix = leading_special_ids(tokenizer)
    written = tokenizer.decode(prefix) if prefix else ""
    return [] if written and text.startswith(written) else prefix


def encode_prompt(tokenizer, question: str, fmt: PromptFormat) -> list[int]:
    """Token ids of the prompt, as `encode_qa` starts them (so generation sees what scoring sees)."""
    text = prompt_text(tokenizer, question, fmt)
    return _prefix_ids(tokenizer, text) + tokenizer(text, add_special_tokens=False)["input_ids"]


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    return ids


def _end_of_turn_index(tokenizer, ids: list[int], offsets: list[tuple[int, int]], full: str, answer_end: int) -> int:
    """The token that closes the answer's turn: the first special token after the answer (<|im_end|>, <|eot_id|>,
    <end_of_turn>, <|end|>, </s>). Only whitespace may come between (Llama-2 writes ' </s>'); that text is not
    labelled, so the labels decode to exactly the answer plus its end token."""
    special = _special_ids(tokenizer)
    for i, (start, _) in enumerate(offsets):
        if start >= answer_end and ids[i] in special:
            if full[answer_end:start].strip():
                raise ValueError(
                    f"the chat template writes {full[answer_end:start]!r} between the answer and its end-of-turn "
                    "token; only whitespace may come between (use format.use_chat_template: false for this model)"
                )
            return i
    raise ValueError("the chat template put no end-of-turn token after the answer")


def encode_qa(tokenizer, question: str, answer: str, fmt: PromptFormat) -> dict:
    """Token ids of prompt + answer + end-of-turn, and labels on the answer and end-of-turn only.

    Also returns `end_tokens`: how many trailing labelled tokens the answer-only metrics (extraction strength,
    exact memorization, Min-K%, Min-K%++) leave out. That is the end-of-turn/eos token(s) after the answer; in
    the open_unlearning mode it is the last labelled token, which that toolkit drops from those four metrics.
    """
    prompt = prompt_text(tokenizer, question, fmt)
    eos = tokenizer.eos_token_id
    templated = _uses_template(tokenizer, fmt)
    if templated:
        full = _render(tokenizer, _messages(fmt, question, answer), fmt)
        if not full.startswith(prompt):
            raise ValueError("the chat template renders the prompt differently with and without the answer")
        answer_start = len(prompt)
        try:
            answer_end = full.index(answer, answer_start) + len(answer) if answer else answer_start
        except ValueError:
            raise ValueError(
                f"the chat template changed the answer {answer[:40]!r} (templates that strip whitespace need "
                "answers without leading or trailing spaces)"
            ) from None
    else:
        full = f"{prompt} {answer}"
        answer_start, answer_end = len(prompt) + 1, len(full)
    prefix = _prefix_ids(tokenizer, full)  # what tokenizer(text) would add: a base model's BOS
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = prefix + list(enc["input_ids"])
    offsets = [(0, 0)] * len(prefix) + list(enc["offset_mapping"])
    # The prefix's (0, 0) offsets never overlap the answer: it starts after the prompt.
    is_answer = [start < answer_end and end > answer_start for start, end in offsets]
    labelled = list(is_answer)
    if templated:
        end_of_turn = _end_of_turn_index(tokenizer, ids, offsets, full, answer_end)
        labelled[end_of_turn] = True
        if fmt.label_mode == "open_unlearning":
            # open-unlearning labels everything after the answer, and appends eos unless the text ends with it.
            for i, (start, _) in enumerate(offsets):
                labelled[i] = labelled[i] or start >= answer_end
    if (not templated or fmt.label_mode == "open_unlearning") and ids[-1] != eos:
        ids.append(eos)
        labelled.append(True)
        is_answer.append(False)
    ids, labelled, is_answer = ids[: fmt.max_length], labelled[: fmt.max_length], is_answer[: fmt.max_length]
    labels = [tok if keep else IGNORE_INDEX for tok, keep in zip(ids, labelled)]
    if fmt.label_mode == "open_unlearning":
        end_tokens = min(1, sum(labelled))
    else:
        end_tokens = sum(keep and not own for keep, own in zip(labelled, is_answer))
    return {"input_ids": ids, "labels": labels, "end_tokens": end_tokens}


class QADataset(Dataset):
    """Question/answer records tokenized once. Items carry their record index for per-sample logs."""

    def __init__(self, records: Sequence[dict], tokenizer, fmt: PromptFormat | None = None, answer_key: str = "answer"):
        self.fmt = fmt or PromptFormat()
        self.records = list(records)
        self.items = []
        for i, record in enumerate(self.records):
            item = encode_qa(tokenizer, record["question"], record[answer_key], self.fmt)
            item["index"] = int(record.get("index", i))
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class TextDataset(Dataset):
    """Raw text (MUSE corpora) for NLL on every token: each text is cut into windows of `max_length` tokens.
    Items carry the record index so per-sample logs stay keyed by it."""

    def __init__(self, records: Sequence[dict], tokenizer, max_length: int = 512, text_key: str = "text"):
        self.items = []
        for i, record in enumerate(records):
            ids = tokenizer(record[text_key], add_special_tokens=False)["input_ids"]
            for start in range(0, max(len(ids), 1), max_length):
                window = ids[start : start + max_length]
                if len(window) < 2:
                    continue
                labels = list(window)
                labels[0] = IGNORE_INDEX
                self.items.append({"input_ids": window, "labels": labels, "index": int(record.get("index", i))})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def refusal_records(records: Sequence[dict], seed: int = 0) -> list[dict]:
    """The same questions answered with a refusal, chosen deterministically per record."""
    rng = random.Random(seed)
    return [
        {**r, "answer": REFUSALS[rng.randrange(len(REFUSALS))], "index": r.get("index", i)}
        for i, r in enumerate(records)
    ]


@dataclass
class PaddingCollator:
    """Pads a list of encoded items into tensors.

    padding_side "right" for training and scoring, "left" for generation. With mask_pad_ids=True
    (open-unlearning compatibility) every position whose id equals pad_token_id gets attention 0,
    which also hides real end-of-turn tokens when pad == eos.
    """

    pad_token_id: int
    padding_side: str = "right"
    mask_pad_ids: bool = False

    def __call__(self, items: Sequence[dict]) -> dict:
        width = max(len(item["input_ids"]) for item in items)
        input_ids, attention, labels = [], [], []
        for item in items:
            ids = list(item["input_ids"])
            lab = list(item.get("labels", [IGNORE_INDEX] * len(ids)))
            mask = [1] * len(ids)
            if self.mask_pad_ids:
                mask = [0 if tok == self.pad_token_id else 1 for tok in ids]
            pad = width - len(ids)
            if self.padding_side == "left":
                ids, lab, mask = [self.pad_token_id] * pad + ids, [IGNORE_INDEX] * pad + lab, [0] * pad + mask
            else:
                ids, lab, mask = ids + [self.pad_token_id] * pad, lab + [IGNORE_INDEX] * pad, mask + [0] * pad
            input_ids.append(ids)
            labels.append(lab)
            attention.append(mask)
        batch = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }
        if all("index" in item for item in items):
            batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
        return batch


class PairedDataset(Dataset):
    """Forget items paired with retain items; one epoch = one pass over the forget set.

    The retain side cycles through its own seeded permutation, independent of the forget order:
    forget item i in epoch e meets retain item perm[(i + e * len(forget)) % len(retain)], so over
    epochs the whole retain set is visited. `refusal` (optional) holds the forget questions with
    refusal answers (IdK, targeted MOX).
    """

    def __init__(
        self, forget: QADataset, retain: QADataset | None = None, refusal: QADataset | None = None, seed: int = 0
    ):
        if len(forget) == 0:
            raise ValueError("the forget set is empty: give at least one forget example")
        if retain is not None and len(retain) == 0:
            raise ValueError("the retain set is empty: give retain examples or use a method without a retain term")
        if refusal is not None and len(refusal) != len(forget):
            raise ValueError("the refusal set must have one item per forget item")
        self.forget, self.retain, self.refusal = forget, retain, refusal
        self.epoch = 0
        self._perm = list(range(len(retain))) if retain is not None else []
        random.Random(seed).shuffle(self._perm)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.forget)

    def retain_index(self, i: int) -> int:
        return self._perm[(i + self.epoch * len(self.forget)) % len(self._perm)]

    def __getitem__(self, i: int) -> dict:
        item = {"forget": self.forget[i]}
        if self.retain is not None:
            item["retain"] = self.retain[self.retain_index(i)]
        if self.refusal is not None:
            item["refusal"] = self.refusal[i]
        return item


@dataclass
class PairedCollator:
    """Collates PairedDataset items into {"forget": batch, "retain": batch, "refusal": batch}."""

    pad_token_id: int
    mask_pad_ids: bool = False

    def __call__(self, items: Sequence[dict]) -> dict:
        pad = PaddingCollator(self.pad_token_id, "right", self.mask_pad_ids)
        return {key: pad([item[key] for item in items]) for key in items[0]}

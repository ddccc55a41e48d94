"""Batched teacher-forced scoring, batched greedy generation, and sharding across processes.

Scoring runs one forward per batch of right-padded sequences and returns, per sequence, the statistics every
metric needs over its labelled tokens (labels != -100): mean NLL, summed log-prob, token count, per-token
log-probs, per-token argmax-correct flags and, on request, the mean and standard deviation of log p(z) under
the model's own next-token distribution (Min-K%++). It also carries how many trailing labelled tokens are
end-of-turn tokens rather than answer (`end_tokens`, from `encode_qa`), so that answer-only metrics can leave
them out. Only labelled positions go through the vocabulary-wide softmax, so memory grows with answer length,
not prompt length.

Generation is greedy with left padding, cut at the first end-of-turn/EOS token and at stop strings.

Both run under `evaluation_mode`: no_grad, every module in eval mode, and each module's training flag restored
afterwards (the evaluation callback runs in the middle of training).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from llm_unlearn.data.collate import IGNORE_INDEX, PaddingCollator, PromptFormat, encode_qa
from llm_unlearn.logits import first_needed, forward_logits


@dataclass
class SequenceScore:
    """Teacher-forced statistics of one sequence's labelled tokens."""

    mean_nll: float
    sum_logprob: float
    num_tokens: int
    token_logprobs: list[float]
    argmax_correct: list[bool]
    # Mean and std of log p(z), z ~ p(.|prefix), per labelled position; only with distribution_stats=True.
    mu: list[float] | None = None
    sigma: list[float] | None = None
    # Trailing labelled tokens after the answer (end-of-turn / eos) that the answer_* views leave out.
    end_tokens: int = 0

    @property
    def num_answer_tokens(self) -> int:
        return self.num_tokens - self.end_tokens

    @property
    def answer_logprobs(self) -> list[float]:
        return self.token_logprobs[: self.num_answer_tokens]

    @property
    def answer_argmax_correct(self) -> list[bool]:
        return self.argmax_correct[: self.num_answer_tokens]

    @property
    def answer_mu(self) -> list[float] | None:
        return self.mu[: self.num_answer_tokens] if self.mu is not None else None

    @property
    def answer_sigma(self) -> list[float] | None:
        return self.sigma[: self.num_answer_tokens] if self.sigma is not None else None


@contextmanager
def evaluation_mode(model) -> Iterator[None]:
    """no_grad + eval mode, restoring every module's own training flag on exit."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in flags:
            module.training = training


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def score_batch(
    model, batch: dict, distribution_stats: bool = False, end_tokens: Sequence[int] | None = None
) -> list[SequenceScore]:
    """One forward over a collated batch (input_ids, attention_mask, labels); one SequenceScore per row.

    `end_tokens[i]`: how many of row i's last labelled tokens are end-of-turn tokens, not answer (default 0).
    """
    rows = batch["labels"].shape[0]
    end_tokens = [0] * rows if end_tokens is None else [int(n) for n in end_tokens]
    if len(end_tokens) != rows:
        raise ValueError(f"score_batch: {len(end_tokens)} end_tokens counts for a batch of {rows} rows")
    device = model_device(model)
    input_ids = batch["input_ids"].to(device)
    attention_mask = batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)
    with evaluation_mode(model):
        # Position t predicts token t + 1. The output head runs only from the first position any row scores.
        targets = labels[:, 1:]
        selected = targets != IGNORE_INDEX
        first = first_needed(selected)
        logits = forward_logits(model, {"input_ids": input_ids, "attention_mask": attention_mask}, first)
        selected, targets = selected[:, first:], targets[:, first:]
        counts = selected.sum(dim=1).tolist()
        chosen = logits[:, :-1][selected].float()  # (labelled tokens in the batch, vocab)
        tokens = targets[selected]
        logprobs = torch.log_softmax(chosen, dim=-1)
        token_lp = logprobs.gather(1, tokens[:, None]).squeeze(1)
        correct = chosen.argmax(dim=-1) == tokens
        mu = sigma = None
        if distribution_stats:
            probs = logprobs.exp()
            zero = torch.zeros_like(probs)
            # p * log p is 0 where p underflows to 0 (log p may be -inf there).
            mu = torch.where(probs > 0, probs * logprobs, zero).sum(dim=-1)
            # Centered second moment: E[lp^2] - mu^2 cancels badly in float32 (mu^2 ~ 100, variance ~ 0.01).
            centered = torch.where(probs > 0, probs * (logprobs - mu[:, None]).square(), zero)
            sigma = centered.sum(dim=-1).sqrt()
            del probs, zero, centered
        del logits, chosen, logprobs
    token_lp_rows = token_lp.cpu().split(counts)
    correct_rows = correct.cpu().split(counts)
    mu_rows = mu.cpu().split(counts) if mu is not None else [None] * len(counts)
    sigma_rows = sigma.cpu().split(counts) if sigma is not None else [None] * len(counts)
    scores = []
    for row, (lp, ok, m, s, ends) in enumerate(zip(token_lp_rows, correct_rows, mu_rows, sigma_rows, end_tokens)):
        n = lp.numel()
        if not 0 <= ends <= n:
            raise ValueError(f"score_batch: row {row} has {n} labelled tokens, so end_tokens={ends} is impossible")
        total = float(lp.double().sum()) if n else 0.0
        scores.append(
            SequenceScore(
                mean_nll=-total / n if n else math.nan,
                sum_logprob=total,
                num_tokens=n,
                token_logprobs=lp.tolist(),
                argmax_correct=ok.tolist(),
                mu=m.tolist() if m is not None else None,
                sigma=s.tolist() if s is not None else None,
                end_tokens=ends,
            )
        )
    return scores


def score_sequences(
    model,
    items: Sequence[dict],
    collator: PaddingCollator,
    batch_size: int,
    distribution_stats: bool = False,
) -> list[SequenceScore]:
    """Score encoded items ({input_ids, labels}, optionally end_tokens) in right-padded batches of `batch_size`,
    one forward each."""
    if collator.padding_side != "right":
        raise ValueError("teacher-forced scoring needs a right-padding collator")
    scores: list[SequenceScore] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = collator([{"input_ids": it["input_ids"], "labels": it["labels"]} for it in chunk])
        ends = [it.get("end_tokens", 0) for it in chunk]
        scores.extend(score_batch(model, batch, distribution_stats, ends))
    return scores


def encode_raw_text(tokenizer, text: str, max_length: int | None) -> dict:
    """Raw text scored on every token but the first (MUSE privleak): the whole text, or its first max_length
    tokens. `text_tokens` is the length of the whole text, so callers can tell how much a cut dropped."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    text_tokens = len(ids)
    ids = ids[:max_length] if max_length is not None else ids
    labels = list(ids)
    if labels:
        labels[0] = IGNORE_INDEX
    return {"input_ids": ids, "labels": labels, "text_tokens": text_tokens}


# ---- generation -------------------------------------------------------------------------------------------


def end_of_turn_ids(tokenizer, fmt: PromptFormat, model=None) -> list[int]:
    """Token ids that end an answer: eos, the model's generation eos ids, and the prompt format's end-of-turn."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos is not None:
        ids.update(int(i) for i in generation_eos)
    # The last labelled token of an encoded answer is the token the format closes a turn with (<|im_end|>).
    probe = encode_qa(tokenizer, "Q?", "A.", replace(fmt, label_mode="answer_eot", max_length=1 << 20))
    labelled = [tok for tok, lab in zip(probe["input_ids"], probe["labels"]) if lab != IGNORE_INDEX]
    ids.add(int(labelled[-1]))
    return sorted(ids)


def cut_at_stop_strings(text: str, stop_strings: Sequence[str]) -> str:
    """The text before the earliest occurrence of any stop string."""
    cut = len(text)
    for stop in stop_strings:
        position = text.find(stop)
        if position != -1:
            cut = min(cut, position)
    return text[:cut]


def _stop_string_criteria(tokenizer, stop_strings: Sequence[str], prompt_width: int):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnStrings(StoppingCriteria):
        """Marks a row done once its generated text contains a stop string (the text is cut afterwards)."""

        def __call__(self, input_ids, scores, **kwargs):
            texts = tokenizer.batch_decode(input_ids[:, prompt_width:], skip_special_tokens=True)
            done = [any(stop in text for stop in stop_strings) for text in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopOnStrings()])


def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int,
    stop_token_ids: Sequence[int],
    stop_strings: Sequence[str] = (),
    mask_pad_ids: bool = False,
) -> list[str]:
    """Greedy continuations of token-id prompts, batched with left padding.

    Each continuation is cut at its first stop token, decoded without special tokens, cut at the first stop
    string and stripped. `mask_pad_ids` reproduces open-unlearning's pad-id attention mask.
    """
    from transformers import GenerationConfig

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = PaddingCollator(pad_id, "left", mask_pad_ids)
    stop_ids = set(int(i) for i in stop_token_ids)
    # A fresh config: the model's own may carry sampling settings (temperature, top_p) that greedy ignores.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=sorted(stop_ids),
        pad_token_id=pad_id,
        use_cache=True,
    )
    device = model_device(model)
    texts: list[str] = []
    with evaluation_mode(model):
        for start in range(0, len(prompts), batch_size):
            batch = collator([{"input_ids": list(p)} for p in prompts[start : start + batch_size]])
            width = batch["input_ids"].shape[1]
            criteria = _stop_string_criteria(tokenizer, stop_strings, width) if stop_strings else None
            output = model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                generation_config=config,
                stopping_criteria=criteria,
            )
            for row in output[:, width:].tolist():
                end = next((i for i, tok in enumerate(row) if tok in stop_ids), len(row))
                text = tokenizer.decode(row[:end], skip_special_tokens=True)
                texts.append(cut_at_stop_strings(text, stop_strings).strip())
    return texts


# ---- sharding across processes ----------------------------------------------------------------------------


def distributed_state():
    """accelerate's PartialState when several processes run, else None (nothing to shard).

    Checks torch.distributed first so that a single-process caller never creates accelerate state.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    from accelerate import PartialState

    state = PartialState()
    return state if state.num_processes > 1 else None


def shard(records: Sequence, state, batch_size: int) -> list:
    """This process's share of `records`: a contiguous run of whole batches of `batch_size` (all of them without a
    distributed state).

    Batches are formed over the whole set before they are handed out, so every row meets the same batch-mates and
    the same padding whatever the process count, and greedy generations cannot flip at near-ties.
    """
    if state is None:
        return list(records)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    num_batches = -(-len(records) // batch_size)
    per_rank, extra = divmod(num_batches, state.num_processes)
    rank = state.process_index
    first = rank * per_rank + min(rank, extra)
    last = first + per_rank + (1 if rank < extra else 0)
    return list(records[first * batch_size : last * batch_size])


def gather(obj, state) -> list:
    """One object per process, in rank order, on every process."""
    if state is None:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def is_main_process(state) -> bool:
    return state is None or state.is_main_process


def resolve_format(fmt: PromptFormat | None, label_mode: str | None) -> PromptFormat:
    """The prompt format to evaluate with: `label_mode` from the options overrides an unset one, and must agree
    with a format passed explicitly with a non-default label mode."""
    if fmt is None:
        return PromptFormat(label_mode=label_mode or "answer_eot")
    if label_mode is None or label_mode == fmt.label_mode:
        return fmt
    if fmt.label_mode != "answer_eot":
        raise ValueError(
            f"the options ask for label_mode={label_mode!r} but the prompt format has label_mode={fmt.label_mode!r}; "
            "set one of them"
        )
    return replace(fmt, label_mode=label_mode)

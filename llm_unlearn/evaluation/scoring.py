"""Batched teacher-forced scoring, batched greedy generation, and sharding across processes.

Scoring runs one forward per batch of right-padded sequences and returns, per sequence, the statistics every
metric needs over its labelled tokens (labels != -100): mean NLL, summed log-prob, token count, per-token
log-probs, per-token argmax-correct flags and, on request, the mean and standard deviation of log p(z) under
the model's own next-token distribution (Min-K%++). It also carries how many trailing labelled tokens are
end-of-turn tokens rather than answer (`end_tokens`, from `encode_qa`), so that answer-only metrics can leave
them out. Only labelled positions go through the vocabulary-wide softmax, so memory grows with answer length,
not prompt length. Sequences of a batch that share a prompt run it once (`score_shared_prefixes`).

Generation is greedy with left padding, cut at the first end-of-turn/EOS token and at stop strings.

Both run under `evaluation_mode`: no_grad, every module in eval mode, and each module's training flag restored
afterwards (the evaluation callback runs in the middle of training).
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from llm_unlearn.data.collate import IGNORE_INDEX, PaddingCollator, PromptFormat, encode_qa
from llm_unlearn.logits import forward_logits, needed_window


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
    model, batch: dict, distribution_stats: bool | Sequence[bool] = False, end_tokens: Sequence[int] | None = None
) -> list[SequenceScore]:
    """One forward over a collated batch (input_ids, attention_mask, labels); one SequenceScore per row.

    `end_tokens[i]`: how many of row i's last labelled tokens are end-of-turn tokens, not answer (default 0).
    """
    end_tokens = _end_token_counts(batch["labels"].shape[0], end_tokens)
    device = model_device(model)
    labels = batch["labels"].to(device)
    with evaluation_mode(model):
        # Position t predicts token t + 1. The output head runs only on each row's labelled positions.
        window = needed_window(labels[:, 1:] != IGNORE_INDEX)
        inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
        logits = forward_logits(model, inputs, window)
        return _row_scores(logits, window.labels(labels), distribution_stats, end_tokens)


def _end_token_counts(rows: int, end_tokens: Sequence[int] | None) -> list[int]:
    counts = [0] * rows if end_tokens is None else [int(n) for n in end_tokens]
    if len(counts) != rows:
        raise ValueError(f"score_batch: {len(counts)} end_tokens counts for a batch of {rows} rows")
    return counts


def _row_scores(
    logits: torch.Tensor, labels: torch.Tensor, distribution_stats: bool | Sequence[bool], end_tokens: list[int]
) -> list[SequenceScore]:
    """SequenceScores from logits and the labels aligned with them (logits[:, t] predicts labels[:, t + 1])."""
    targets = labels[:, 1:]
    selected = targets != IGNORE_INDEX
    counts = selected.sum(dim=1).tolist()
    chosen = logits[:, :-1][selected].float()  # (labelled tokens in the batch, vocab)
    tokens = targets[selected]
    # log p(token) = logit - logsumexp(logits): no vocabulary-wide log-softmax copy.
    token_lp = chosen.gather(1, tokens[:, None]).squeeze(1) - torch.logsumexp(chosen, dim=-1)
    correct = chosen.argmax(dim=-1) == tokens
    mu = sigma = None
    wanted = _wanted_rows(distribution_stats, len(counts))
    if any(wanted):
        # Only the rows that asked for them (Min-K%++ on the answer, not on its perturbations).
        needed = torch.repeat_interleave(
            torch.tensor(wanted, device=chosen.device), torch.tensor(counts, device=chosen.device)
        )
        # float64: sums over the whole vocabulary, which Min-K%++ divides by a small spread, must not depend on
        # the batch's layout (float32 sums of 49k terms differ in the 5th digit between layouts).
        precise = torch.float32 if chosen.device.type == "mps" else torch.float64  # MPS has no float64
        dist_lp = torch.log_softmax((chosen[needed] if not all(wanted) else chosen).to(precise), dim=-1)
        probs = dist_lp.exp()
        zero = torch.zeros_like(probs)
        # p * log p is 0 where p underflows to 0 (log p may be -inf there).
        mu = torch.where(probs > 0, probs * dist_lp, zero).sum(dim=-1).float()
        # Centered second moment: E[lp^2] - mu^2 cancels badly (mu^2 ~ 100, variance ~ 0.01).
        centered = torch.where(probs > 0, probs * (dist_lp - mu.to(precise)[:, None]).square(), zero)
        sigma = centered.sum(dim=-1).sqrt().float()
        del probs, zero, centered, dist_lp
    del logits, chosen
    token_lp_rows = token_lp.cpu().split(counts)
    correct_rows = correct.cpu().split(counts)
    mu_rows, sigma_rows = _split_wanted(mu, counts, wanted), _split_wanted(sigma, counts, wanted)
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


def _wanted_rows(distribution_stats: bool | Sequence[bool], rows: int) -> list[bool]:
    if isinstance(distribution_stats, bool):
        return [distribution_stats] * rows
    wanted = [bool(flag) for flag in distribution_stats]
    if len(wanted) != rows:
        raise ValueError(f"score_batch: {len(wanted)} distribution_stats flags for a batch of {rows} rows")
    return wanted


def _split_wanted(values: torch.Tensor | None, counts: list[int], wanted: list[bool]) -> list:
    """Per-row lists of a statistic computed for the wanted rows only (None for the others)."""
    if values is None:
        return [None] * len(counts)
    parts = iter(values.cpu().split([n for n, want in zip(counts, wanted) if want]))
    return [next(parts) if want else None for want in wanted]


def unscored_prefix(item: dict) -> tuple[int, ...]:
    """The tokens before the position that predicts the item's first labelled token: no score reads their
    logits, so items that start with the same ones (a question's answer, paraphrase and perturbations) can
    share one pass over them."""
    labels = item["labels"]
    first = next((t for t, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    return tuple(item["input_ids"][: max(first - 1, 0)])


def score_shared_prefixes(
    model, items: Sequence[dict], collator: PaddingCollator, distribution_stats: bool | Sequence[bool] = False
) -> list[SequenceScore]:
    """Score items that share unscored prefixes with one forward over each distinct prefix, whose key/value
    cache every item starting with it continues from, then one forward over the continuations.

    The continuation of an item sits after its prefix's padded cache: the attention mask hides the padding,
    and explicit position ids place it right after its own prefix, so each row computes what a forward over
    its whole sequence computes (equal to float rounding; tests/test_eval_speed.py)."""
    prefixes: dict[tuple[int, ...], int] = {}
    owner = [prefixes.setdefault(unscored_prefix(item), len(prefixes)) for item in items]
    keys = list(prefixes)
    device = model_device(model)
    head = collator([{"input_ids": list(key)} for key in keys])
    lengths = torch.tensor([len(key) for key in keys])
    tails = collator(
        [
            {"input_ids": it["input_ids"][len(keys[o]) :], "labels": it["labels"][len(keys[o]) :]}
            for it, o in zip(items, owner)
        ]
    )
    end_tokens = _end_token_counts(len(items), [it.get("end_tokens", 0) for it in items])
    index = torch.tensor(owner)
    with evaluation_mode(model):
        argument = cache_argument(model)
        if argument is None:
            raise ValueError(f"{type(model).__name__} cannot continue a key/value cache: score its items whole")
        prefix_pass = model(
            input_ids=head["input_ids"].to(device),
            attention_mask=head["attention_mask"].to(device),
            use_cache=True,
            logits_to_keep=1,
        )
        cache = getattr(prefix_pass, argument)
        del prefix_pass
        cache.batch_select_indices(index.to(device))
        width = tails["input_ids"].shape[1]
        labels = tails["labels"].to(device)
        window = needed_window(labels[:, 1:] != IGNORE_INDEX)
        continuation = {
            "input_ids": tails["input_ids"].to(device),
            "attention_mask": torch.cat([head["attention_mask"][index], tails["attention_mask"]], dim=1).to(device),
        }
        positions = {
            "position_ids": (lengths[index][:, None] + torch.arange(width)[None]).to(device),
            argument: cache,
            "use_cache": True,
        }
        logits = forward_logits(model, continuation, window, positions)
        del cache, positions
        return _row_scores(logits, window.labels(labels), distribution_stats, end_tokens)


def _shares_prefixes(items: Sequence[dict]) -> bool:
    prefixes = [unscored_prefix(item) for item in items]
    return any(prefixes) and len(set(prefixes)) < len(prefixes)


def score_sequences(
    model,
    items: Sequence[dict],
    collator: PaddingCollator,
    batch_size: int,
    distribution_stats: bool | Sequence[bool] = False,
) -> list[SequenceScore]:
    """Score encoded items ({input_ids, labels}, optionally end_tokens) in right-padded batches of `batch_size`;
    `distribution_stats` for every item or per item.

    A batch whose items share unscored prefixes (several answers to one question) runs the prefixes once
    (`score_shared_prefixes`); other batches take one forward each."""
    if collator.padding_side != "right":
        raise ValueError("teacher-forced scoring needs a right-padding collator")
    flags = _wanted_rows(distribution_stats, len(items))
    continues_cache = cache_argument(model) is not None  # inspects the forward's signature: once, not per batch
    scores: list[SequenceScore] = []
    for start in range(0, len(items), batch_size):
        chunk, wanted = items[start : start + batch_size], flags[start : start + batch_size]
        if continues_cache and _shares_prefixes(chunk):
            scores.extend(score_shared_prefixes(model, chunk, collator, wanted))
            continue
        batch = collator([{"input_ids": it["input_ids"], "labels": it["labels"]} for it in chunk])
        ends = [it.get("end_tokens", 0) for it in chunk]
        scores.extend(score_batch(model, batch, wanted, ends))
    return scores


def cache_argument(model) -> str | None:
    """The forward's key/value-cache argument (`cache`; `past_key_values` before transformers 5.24), or None
    when the model cannot continue a cache at explicit positions (then it is scored whole)."""
    config = getattr(model, "config", None)
    if not getattr(config, "use_cache", False) or getattr(config, "is_encoder_decoder", False):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return None
    if "position_ids" not in params:
        return None
    return next((name for name in ("cache", "past_key_values") if name in params), None)


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
    on_batch: Callable[[int], object] | None = None,
) -> list[str]:
    """Greedy continuations of token-id prompts, batched with left padding.

    Each continuation is cut at its first stop token, decoded without special tokens, cut at the first stop
    string and stripped. `mask_pad_ids` reproduces open-unlearning's pad-id attention mask; `on_batch(rows)` is
    called after each batch (progress bars).
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = PaddingCollator(pad_id, "left", mask_pad_ids)
    stop_ids = set(int(i) for i in stop_token_ids)
    device = model_device(model)
    argument = cache_argument(model)
    texts: list[str] = []
    with evaluation_mode(model):
        for start in range(0, len(prompts), batch_size):
            batch = collator([{"input_ids": list(p)} for p in prompts[start : start + batch_size]])
            input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            if argument is not None:
                rows = _greedy_dropping_finished_rows(
                    model, argument, input_ids, attention_mask, max_new_tokens, stop_ids, tokenizer, stop_strings
                )
            else:  # a model that cannot continue a cache at explicit positions: transformers' own loop
                rows = _greedy_with_generate(
                    model, input_ids, attention_mask, max_new_tokens, stop_ids, pad_id, tokenizer, stop_strings
                )
            for row in rows:
                end = next((i for i, tok in enumerate(row) if tok in stop_ids), len(row))
                text = tokenizer.decode(row[:end], skip_special_tokens=True)
                texts.append(cut_at_stop_strings(text, stop_strings).strip())
            if on_batch is not None:
                on_batch(len(rows))
    return texts


def _greedy_with_generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    stop_ids: set[int],
    pad_id: int,
    tokenizer,
    stop_strings: Sequence[str],
) -> list[list[int]]:
    """Greedy continuations (token ids after the prompt) from transformers' `generate`."""
    from transformers import GenerationConfig

    # A fresh config: the model's own may carry sampling settings (temperature, top_p) that greedy ignores.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=sorted(stop_ids),
        pad_token_id=pad_id,
        use_cache=True,
    )
    width = input_ids.shape[1]
    criteria = _stop_string_criteria(tokenizer, stop_strings, width) if stop_strings else None
    output = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, generation_config=config, stopping_criteria=criteria
    )
    return output[:, width:].tolist()


def _greedy_dropping_finished_rows(
    model,
    argument: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    stop_ids: set[int],
    tokenizer,
    stop_strings: Sequence[str],
) -> list[list[int]]:
    """Greedy decoding that takes a row out of the batch (and out of the key/value cache) as soon as it has
    ended, so the remaining steps compute only the rows still writing: the tokens transformers' `generate`
    would produce for each row (same positions, same mask, argmax of float32 logits), at less cost when
    answers differ in length. A row ends at a stop token, a stop string, or max_new_tokens."""
    rows = input_ids.shape[0]
    generated: list[list[int]] = [[] for _ in range(rows)]
    if max_new_tokens <= 0:
        return generated
    # Positions as generate derives them from a left-padded mask; an all-ones mask is dropped, as generate does.
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    mask = None if bool(attention_mask.all()) else attention_mask
    active = torch.arange(rows, device=input_ids.device)
    output = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = getattr(output, argument)
    next_position = positions[:, -1:] + 1
    for step in range(max_new_tokens):
        tokens = output.logits[:, -1, :].float().argmax(dim=-1)
        del output
        keep = []
        for slot, (row, token) in enumerate(zip(active.tolist(), tokens.tolist())):
            generated[row].append(token)
            ended = token in stop_ids or (
                stop_strings
                and any(stop in tokenizer.decode(generated[row], skip_special_tokens=True) for stop in stop_strings)
            )
            if not ended:
                keep.append(slot)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(active):
            kept = torch.tensor(keep, device=input_ids.device)
            active, tokens, next_position = active[kept], tokens[kept], next_position[kept]
            cache.batch_select_indices(kept)
            mask = mask[kept] if mask is not None else None
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        output = model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=next_position,
            **{argument: cache},
            use_cache=True,
        )
        cache = getattr(output, argument)
        next_position = next_position + 1
    return generated


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


def progress(total: int, description: str):
    """A progress bar for one evaluation set: on the main process, and only when stderr is a terminal (logs and
    CI stay clean)."""
    from tqdm.auto import tqdm

    quiet = not (is_main_process(distributed_state()) and sys.stderr.isatty())
    return tqdm(total=total, desc=description, unit="row", disable=quiet, leave=False, dynamic_ncols=True)


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

"""The MUSE suite: verbatim memorization, knowledge memorization, and privleak.

Input: `data[subset][split] -> list[dict]` in the MUSE-News layout:
  knowmem: forget_qa, retain_qa, forget_qa_icl, retain_qa_icl (question/answer)
  verbmem: forget (prompt/gt)
  privleak: forget, holdout (text; a retain split may be present and is not used)

Prompts are plain text as in MUSE, never the chat template: the model learned the news corpus as raw text.
* verbmem: the article prefix, greedy 128 new tokens, ROUGE-L F1 against the continuation (the whole of it by
  default; MUSE's first 128 tokens with `verbmem_reference_tokens` or the `muse` preset).
* knowmem: "Question: {q}\\nAnswer: {a}\\n\\n" for each ICL pair, then "Question: {q}\\nAnswer: " (MUSE's text,
  trailing space included); greedy 32 new tokens, cut at a blank line or "Question"; ROUGE-L F1 vs the answer.
* privleak: Min-K% (k = 0.4) over every token of each whole text but the first, one forward per batch (exact:
  every token sees the whole text before it). A text longer than the model's context
  (config.max_position_embeddings) is cut to the context, and the summary notes how many were. AUC forget vs
  holdout, compared with the retain model's AUC: from the reference log on the same rows, or fixed
  (`reference_auc`, e.g. MUSE's published value). LOSS, zlib and Min-K%++ AUCs are reported too.
`preset: muse` switches ROUGE scaling, stemming, the verbmem reference and the reference AUC to MUSE's
conventions (muse_options.py); docs/metrics.md sets every metric beside MUSE's and open-unlearning's.
"""

from __future__ import annotations

import os
from dataclasses import asdict

from llm_unlearn.data.collate import PaddingCollator, PromptFormat
from llm_unlearn.evaluation.compute import RowScores, Settings, per_sample_values, requested_scores, summarize
from llm_unlearn.evaluation.logs import HASH_KEY, EvalResult, indexed_records, merge_per_sample, text_hash
from llm_unlearn.evaluation.muse_options import MUSE_RETAIN_AUC, MUSE_SETS, MuseEvalOptions
from llm_unlearn.evaluation.nonfinite import nonfinite_table
from llm_unlearn.evaluation.reference import (
    ReferenceLog,
    as_reference,
    check_reference,
    fixed_reference_note,
    muse_reference_settings,
)
from llm_unlearn.evaluation.registry import KNOWMEM_F, KNOWMEM_R, PRIV_F, PRIV_H, VERBMEM, summary_direction
from llm_unlearn.evaluation.scoring import (
    distributed_state,
    encode_raw_text,
    gather,
    generate_greedy,
    resolve_format,
    score_sequences,
    shard,
)

__all__ = ["MUSE_SETS", "MuseEvalOptions", "evaluate_muse", "knowmem_prompt", "summarize_muse"]
# Per-sample set names in per_sample.json, in the order they are evaluated and summarized.
MUSE_SET_NAMES = (VERBMEM, KNOWMEM_F, KNOWMEM_R, PRIV_F, PRIV_H)
KNOWMEM_STOP_STRINGS = ("\n\n", "\nQuestion", "Question:")


def _split(data: dict, subset: str, split: str, keys: tuple[str, ...], truncate: int | None) -> list[dict]:
    try:
        records = list(data[subset][split])
    except KeyError as err:
        raise ValueError(
            f"MUSE data: missing data['{subset}']['{split}'] (records with keys {keys}); provide it or leave the "
            "set out of MuseEvalOptions.sets"
        ) from err
    records = records[:truncate] if truncate else records
    return indexed_records(records, f"MUSE data['{subset}']['{split}']", keys)


def knowmem_prompt(question: str, icl_pairs: list[dict]) -> str:
    """MUSE's few-shot knowledge prompt."""
    shots = "".join(f"Question: {p['question']}\nAnswer: {p['answer']}\n\n" for p in icl_pairs)
    return shots + f"Question: {question}\nAnswer: "


def first_tokens(tokenizer, text: str, count: int | None) -> str:
    """The text of the first `count` tokens of `text` (all of it for None), tokenized and decoded as MUSE cuts its
    verbmem reference: special tokens added (a BOS counts as one of them) and skipped when decoding."""
    if count is None:
        return text
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:count]
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)


def _groups(options: MuseEvalOptions) -> tuple[str, ...]:
    """The registry's metric groups MUSE runs: ROUGE on the generation sets, the attacks with privleak."""
    return ("rouge", "mia") if "privleak" in options.sets else ("rouge",)


def _settings(options: MuseEvalOptions) -> Settings:
    options = options.resolved()
    return Settings(options.min_k, options.rouge_stemming, options.scale_100, options.fixed_reference_auc())


def _generate_set(name, records, prompts, references, max_new_tokens, stop_strings, model, tokenizer, options, fmt):
    """Per-sample values of a generation set: greedy generations for `prompts`, scored against `references`."""
    rows = [RowScores(r["index"], reference_text=reference) for r, reference in zip(records, references)]
    if rows:
        prompt_ids = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        texts = generate_greedy(
            model,
            tokenizer,
            prompt_ids,
            max_new_tokens,
            options.batch_size,
            _stop_ids(tokenizer, model),
            stop_strings,
            mask_pad_ids=fmt.label_mode == "open_unlearning",
        )
        for row, text in zip(rows, texts):
            row.generation = text
    return per_sample_values(name, rows, _groups(options), _settings(options))


def _stop_ids(tokenizer, model) -> list[int]:
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if generation_eos is not None:
        ids.update([generation_eos] if isinstance(generation_eos, int) else [int(i) for i in generation_eos])
    return sorted(ids)


def model_context(model) -> int | None:
    """The most positions the model takes (config.max_position_embeddings); None when its config does not say."""
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def privleak_token_limit(model, max_length: int | None) -> int | None:
    """Tokens of each privleak text to score: max_length when set, never more than the model's context (a
    position it was not trained for would score noise, and sliding windows would not give the same numbers)."""
    limits = [n for n in (max_length, model_context(model)) if n is not None]
    return min(limits) if limits else None


def _privleak_set(name, records, model, tokenizer, options, fmt, limit: int | None) -> dict:
    """Per-sample values of a privleak set: each whole text (up to `limit` tokens) scored in one forward."""
    if not records:
        return {}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = PaddingCollator(pad_id, "right", mask_pad_ids=fmt.label_mode == "open_unlearning")
    items = [encode_raw_text(tokenizer, r["text"], limit) for r in records]
    with_stats = "distribution" in requested_scores(name, _groups(options))
    scores = score_sequences(model, items, collator, options.batch_size, distribution_stats=with_stats)
    rows = []
    for record, item, score in zip(records, items, scores):
        if score.num_tokens == 0:
            raise ValueError(f"MUSE privleak text at index {record['index']} has fewer than 2 tokens; nothing to score")
        # zlib entropy of the text actually scored (after any cut).
        text = tokenizer.decode(item["input_ids"], skip_special_tokens=True)
        cut = item["text_tokens"] - len(item["input_ids"])
        rows.append(RowScores(record["index"], scored_text=text, answer=score, cut_tokens=cut))
    return per_sample_values(name, rows, _groups(options), _settings(options))


def _cut_note(per_sample: dict, options: MuseEvalOptions, limit: int | None) -> str | None:
    counts = [per_sample.get(name, {}).get("cut_tokens", {}) for name in (PRIV_F, PRIV_H)]
    total = sum(len(c) for c in counts)
    cut = sum(1 for c in counts for n in c.values() if n > 0)
    if not cut:
        return None
    if options.max_length is not None and limit == options.max_length:
        return (
            f"privleak scored the first {limit} tokens of each text (max_length): {cut} of {total} texts were "
            "longer (per-sample cut_tokens); MUSE scores whole texts"
        )
    return (
        f"{cut} of {total} privleak texts are longer than the model's context ({limit} tokens, "
        f"config.max_position_embeddings) and were scored on their first {limit} tokens (per-sample cut_tokens)"
    )


def evaluate_muse(
    model,
    tokenizer,
    data: dict,
    options: MuseEvalOptions | None = None,
    fmt: PromptFormat | None = None,
    reference_log: str | os.PathLike | ReferenceLog | None = None,
) -> EvalResult:
    """Run the MUSE suite (sharded over processes when several run; every process must call it).

    `fmt` only contributes its label mode (open-unlearning's pad-id attention mask); prompts are plain text.
    """
    options = (options or MuseEvalOptions()).resolved()
    fmt = resolve_format(fmt, options.label_mode)
    truncate = options.truncate_rows
    sets: dict[str, list[dict]] = {}
    icl: dict[str, list[dict]] = {}
    hashes: dict[str, dict[str, str]] = {}
    if "verbmem" in options.sets:
        sets[VERBMEM] = _split(data, "verbmem", "forget", ("prompt", "gt"), truncate)
        hashes[VERBMEM] = {str(r["index"]): text_hash(r["prompt"]) for r in sets[VERBMEM]}
    for option, name, split in (("knowmem_forget", KNOWMEM_F, "forget_qa"), ("knowmem_retain", KNOWMEM_R, "retain_qa")):
        if option in options.sets:
            sets[name] = _split(data, "knowmem", split, ("question", "answer"), truncate)
            shots = _split(data, "knowmem", split + "_icl", ("question", "answer"), None)
            icl[name] = shots[: options.icl_shots] if options.icl_shots is not None else shots
            hashes[name] = {str(r["index"]): text_hash(r["question"]) for r in sets[name]}
    notes: list[str] = []
    if "privleak" in options.sets:
        for name, split in ((PRIV_F, "forget"), (PRIV_H, "holdout")):
            if split in data.get("privleak", {}):
                sets[name] = _split(data, "privleak", split, ("text",), truncate)
                hashes[name] = {str(r["index"]): text_hash(r["text"]) for r in sets[name]}
        if PRIV_H not in sets:
            notes.append("privleak holdout split not given: MIA / privleak skipped")
    reference = as_reference(reference_log)
    notes += check_reference(reference, hashes, PRIV_F, PRIV_H, muse_reference_settings(options, fmt))
    if "privleak" in options.sets and (fixed := options.fixed_reference_auc()) is not None:
        notes.append(fixed_reference_note(_fixed_reference_source(options.reference_auc, fixed), reference))
    limit = privleak_token_limit(model, options.max_length)

    state = distributed_state()
    mine: dict[str, dict] = {}
    for name, records in sets.items():
        part = shard(records, state, options.batch_size)
        if name == VERBMEM:
            prompts = [r["prompt"] for r in part]
            references = [first_tokens(tokenizer, r["gt"], options.verbmem_reference_tokens) for r in part]
            mine[name] = _generate_set(
                name, part, prompts, references, options.verbmem_max_new_tokens, (), model, tokenizer, options, fmt
            )
        elif name in (KNOWMEM_F, KNOWMEM_R):
            prompts = [knowmem_prompt(r["question"], icl[name]) for r in part]
            mine[name] = _generate_set(
                name,
                part,
                prompts,
                [r["answer"] for r in part],
                options.knowmem_max_new_tokens,
                KNOWMEM_STOP_STRINGS,
                model,
                tokenizer,
                options,
                fmt,
            )
        else:
            mine[name] = _privleak_set(name, part, model, tokenizer, options, fmt, limit)
    per_sample = merge_per_sample(gather(mine, state))
    for name, digests in hashes.items():
        per_sample.setdefault(name, {})[HASH_KEY] = digests
    if note := _cut_note(per_sample, options, limit):
        notes.append(note)

    metrics, reasons = summarize_muse(per_sample, options, reference)
    meta = {
        "options": asdict(options),  # resolved: the preset's values filled in
        "label_mode": fmt.label_mode,
        "prompt_format": {"style": "plain text (MUSE), no chat template", "knowmem_stop_strings": KNOWMEM_STOP_STRINGS},
        "reference_log": str(reference.path) if reference else None,
        # The retain model's Min-K% AUC privleak used when it is fixed (this project's convention); None: the log's.
        "privleak_reference_auc": options.fixed_reference_auc(),
        "privleak_token_limit": limit,  # None: whole texts, the model's context unknown
        "row_counts": {name: len(records) for name, records in sets.items()},
        "icl_shots_used": {name: len(pairs) for name, pairs in icl.items()},
        "higher_is_better": {key: summary_direction(key) for key in metrics},
        "nonfinite_rows": nonfinite_table(per_sample),
    }
    return EvalResult("muse", per_sample, metrics, reasons, notes, meta)


def summarize_muse(
    per_sample: dict, options: MuseEvalOptions, reference: ReferenceLog | None
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Summary metrics (the registry's reports on MUSE's sets) and the reason for every null."""
    return summarize(per_sample, MUSE_SET_NAMES, _groups(options), _settings(options), reference)


def _fixed_reference_source(source, fixed: float) -> str:
    if source in MUSE_RETAIN_AUC:
        return (
            f"MUSE's published retain-model AUC for {source} ({MUSE_RETAIN_AUC[source]} in MUSE's convention, "
            f"{fixed:.4f} in this project's)"
        )
    return f"a fixed retain-model AUC of {fixed}"

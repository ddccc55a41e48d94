"""The MUSE suite (DESIGN.md §5): verbatim memorization, knowledge memorization, and privleak.

Input: `data[subset][split] -> list[dict]` in the MUSE-News layout:
  knowmem: forget_qa, retain_qa, forget_qa_icl, retain_qa_icl (question/answer)
  verbmem: forget (prompt/gt)
  privleak: forget, holdout (text; a retain split may be present and is not used)

Prompts are plain text as in MUSE, never the chat template: the model learned the news corpus as raw text.
* verbmem: the article prefix, greedy 128 new tokens, ROUGE-L F1 against the continuation.
* knowmem: "Question: {q}\\nAnswer: {a}\\n\\n" for each ICL pair, then "Question: {q}\\nAnswer: " (MUSE's text,
  trailing space included); greedy 32 new tokens, cut at a blank line or "Question"; ROUGE-L F1 vs the answer.
* privleak: Min-K% (k = 0.4) over every token of the text but the first; AUC forget vs holdout, compared with
  the retain model's AUC from the reference log. LOSS, zlib and Min-K%++ AUCs are reported too.
Original MUSE reported ROUGE x100 without stemming: `scale_100=True, rouge_stemming=False`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from llm_unlearn.data.collate import LABEL_MODES, PaddingCollator, PromptFormat
from llm_unlearn.evaluation import metrics as M
from llm_unlearn.evaluation import mia
from llm_unlearn.evaluation.logs import (
    HASH_KEY,
    EvalResult,
    ReferenceLog,
    as_reference,
    merge_per_sample,
    sorted_values,
    text_hash,
)
from llm_unlearn.evaluation.scoring import (
    distributed_state,
    encode_raw_text,
    gather,
    generate_greedy,
    resolve_format,
    score_sequences,
    shard,
)
from llm_unlearn.evaluation.tofu import MIA_ATTACKS, check_reference, privleak_vs_reference

MUSE_SETS = ("verbmem", "knowmem_forget", "knowmem_retain", "privleak")
# Per-sample set names in per_sample.json.
VERBMEM, KNOWMEM_F, KNOWMEM_R, PRIV_F, PRIV_H = (
    "verbmem_forget",
    "knowmem_forget",
    "knowmem_retain",
    "privleak_forget",
    "privleak_holdout",
)
KNOWMEM_STOP_STRINGS = ("\n\n", "\nQuestion", "Question:")


@dataclass
class MuseEvalOptions:
    """Settings of a MUSE evaluation, recorded in summary.json.

    icl_shots: how many *_icl pairs open the knowmem prompt (None: all given).
    knowmem_max_new_tokens / verbmem_max_new_tokens: MUSE's 32 and 128.
    scale_100, rouge_stemming: ROUGE reported x100 / with Porter stemming (original MUSE: x100, no stemming).
    max_length: privleak texts are cut to this many tokens (a choice; bounds memory on long articles).
    truncate_rows: keep only the first N rows of every split (quick runs); None keeps all.
    """

    batch_size: int = 8
    icl_shots: int | None = None
    knowmem_max_new_tokens: int = 32
    verbmem_max_new_tokens: int = 128
    scale_100: bool = False
    rouge_stemming: bool = True
    max_length: int = 512
    truncate_rows: int | None = None
    label_mode: str | None = None
    sets: tuple[str, ...] = MUSE_SETS
    min_k: float = mia.DEFAULT_MIN_K

    def __post_init__(self):
        self.sets = tuple(self.sets)
        if unknown := [s for s in self.sets if s not in MUSE_SETS]:
            raise ValueError(f"MuseEvalOptions.sets: unknown {unknown}; choose from {MUSE_SETS}")
        if min(self.batch_size, self.knowmem_max_new_tokens, self.verbmem_max_new_tokens, self.max_length) < 1:
            raise ValueError("MuseEvalOptions: batch_size, max_new_tokens and max_length must be at least 1")
        if self.icl_shots is not None and self.icl_shots < 0:
            raise ValueError("MuseEvalOptions.icl_shots must be None or >= 0")
        if self.label_mode is not None and self.label_mode not in LABEL_MODES:
            raise ValueError(f"MuseEvalOptions.label_mode must be None or one of {LABEL_MODES}")


def _split(data: dict, subset: str, split: str, keys: tuple[str, ...], truncate: int | None) -> list[dict]:
    try:
        records = list(data[subset][split])
    except KeyError as err:
        raise ValueError(
            f"MUSE data: missing data['{subset}']['{split}'] (records with keys {keys}); provide it or leave the "
            "set out of MuseEvalOptions.sets"
        ) from err
    records = records[:truncate] if truncate else records
    out, seen = [], set()
    for row, record in enumerate(records):
        if missing := [k for k in keys if k not in record]:
            raise ValueError(f"MUSE data['{subset}']['{split}'], row {row}: missing {missing}; expected keys {keys}")
        index = int(record.get("index", row))
        if index in seen:
            raise ValueError(f"MUSE data['{subset}']['{split}'], row {row}: duplicate index {index}")
        seen.add(index)
        out.append({**record, "index": index})
    return out


def knowmem_prompt(question: str, icl_pairs: list[dict]) -> str:
    """MUSE's few-shot knowledge prompt."""
    shots = "".join(f"Question: {p['question']}\nAnswer: {p['answer']}\n\n" for p in icl_pairs)
    return shots + f"Question: {question}\nAnswer: "


def _generate_set(records, prompts, reference_key, max_new_tokens, stop_strings, model, tokenizer, options, fmt):
    out: dict[str, dict] = {"generation": {}, "rougeL_f1": {}}
    if not records:
        return out
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
    for record, text in zip(records, texts):
        out["generation"][str(record["index"])] = text
        out["rougeL_f1"][str(record["index"])] = M.rouge_l_f1(text, record[reference_key], options.rouge_stemming)
    return out


def _stop_ids(tokenizer, model) -> list[int]:
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if generation_eos is not None:
        ids.update([generation_eos] if isinstance(generation_eos, int) else [int(i) for i in generation_eos])
    return sorted(ids)


def _privleak_set(records, model, tokenizer, options, fmt) -> dict:
    out: dict[str, dict] = {}
    if not records:
        return out
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = PaddingCollator(pad_id, "right", mask_pad_ids=fmt.label_mode == "open_unlearning")
    items = [encode_raw_text(tokenizer, r["text"], options.max_length) for r in records]
    scores = score_sequences(model, items, collator, options.batch_size, distribution_stats=True)
    for record, item, score in zip(records, items, scores):
        index = str(record["index"])
        if score.num_tokens == 0:
            raise ValueError(f"MUSE privleak text at index {index} has fewer than 2 tokens; nothing to score")
        # zlib entropy of the text actually scored (after the max_length cut).
        text = tokenizer.decode(item["input_ids"], skip_special_tokens=True)
        values = {
            "nll": score.mean_nll,
            "mia_loss": mia.loss_score(score.token_logprobs),
            "mia_zlib": mia.zlib_score(score.token_logprobs, text),
            "mia_min_k": mia.min_k_score(score.token_logprobs, options.min_k),
            "mia_min_k_pp": mia.min_k_plus_plus_score(score.token_logprobs, score.mu, score.sigma, options.min_k),
        }
        for metric, value in values.items():
            out.setdefault(metric, {})[index] = value
    return out


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
    options = options or MuseEvalOptions()
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
    notes += check_reference(reference, hashes, PRIV_F, PRIV_H, fmt)

    state = distributed_state()
    mine: dict[str, dict] = {}
    for name, records in sets.items():
        part = shard(records, state)
        if name == VERBMEM:
            prompts = [r["prompt"] for r in part]
            mine[name] = _generate_set(
                part, prompts, "gt", options.verbmem_max_new_tokens, (), model, tokenizer, options, fmt
            )
        elif name in (KNOWMEM_F, KNOWMEM_R):
            prompts = [knowmem_prompt(r["question"], icl[name]) for r in part]
            mine[name] = _generate_set(
                part,
                prompts,
                "answer",
                options.knowmem_max_new_tokens,
                KNOWMEM_STOP_STRINGS,
                model,
                tokenizer,
                options,
                fmt,
            )
        else:
            mine[name] = _privleak_set(part, model, tokenizer, options, fmt)
    per_sample = merge_per_sample(gather(mine, state))
    for name, digests in hashes.items():
        per_sample.setdefault(name, {})[HASH_KEY] = digests

    metrics, reasons = summarize_muse(per_sample, options, reference)
    meta = {
        "options": asdict(options),
        "label_mode": fmt.label_mode,
        "prompt_format": {"style": "plain text (MUSE), no chat template", "knowmem_stop_strings": KNOWMEM_STOP_STRINGS},
        "reference_log": str(reference.path) if reference else None,
        "row_counts": {name: len(records) for name, records in sets.items()},
        "icl_shots_used": {name: len(pairs) for name, pairs in icl.items()},
        "higher_is_better": {key: M.summary_direction(key) for key in metrics},
    }
    return EvalResult("muse", per_sample, metrics, reasons, notes, meta)


def summarize_muse(
    per_sample: dict, options: MuseEvalOptions, reference: ReferenceLog | None
) -> tuple[dict[str, float | None], dict[str, str]]:
    metrics: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    scale = 100.0 if options.scale_100 else 1.0
    for key, name in (("verbmem_f", VERBMEM), ("knowmem_f", KNOWMEM_F), ("knowmem_r", KNOWMEM_R)):
        if scores := sorted_values(per_sample, name, "rougeL_f1"):
            metrics[key] = scale * sum(scores) / len(scores)
    if "privleak" not in options.sets:
        return metrics, reasons
    for attack in MIA_ATTACKS:
        key = f"mia_{attack}_auc"
        forget, holdout = (
            sorted_values(per_sample, PRIV_F, f"mia_{attack}"),
            sorted_values(per_sample, PRIV_H, f"mia_{attack}"),
        )
        if forget and holdout:
            metrics[key] = mia.mia_auc(forget, holdout)
        else:
            metrics[key], reasons[key] = None, "needs the privleak forget and holdout splits"
    metrics["privleak"], reason = privleak_vs_reference(metrics["mia_min_k_auc"], per_sample, reference, PRIV_F, PRIV_H)
    if reason:
        reasons["privleak"] = reason
    return metrics, reasons

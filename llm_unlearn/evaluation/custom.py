"""The custom suite: your own forget / retain / holdout sets (data.dataset: custom), with or without perturbed
answers.

On forget and retain: answer probability, ROUGE-L recall of greedy answers (question/answer data) or of greedy
continuations (text: the first `prompt_tokens` tokens of a document continued for `continuation_tokens`), and
on forget extraction strength and exact memorization; membership inference forget vs holdout (LOSS, zlib,
Min-K%, Min-K%++) and privleak against a retain model's log when one is given; KL to the starting model on
retain; and a general-knowledge check on the package's own real-author and world-fact questions
(`general_knowledge`, the harmonic mean of their Prob, ROUGE-L recall and truth ratio). Truth ratio and forget
quality are added when every forget and retain row has `paraphrased_answer` and `perturbed_answer`.

Question/answer sets are scored by the TOFU suite's own set scorer, so the same rows give the same per-sample
values in both suites. The metrics are the registry's (registry.py) plus the two registered here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from llm_unlearn.data.collate import LABEL_MODES, PaddingCollator, PromptFormat, encode_qa, prompt_text
from llm_unlearn.data.custom import has_truth_ratio_columns
from llm_unlearn.data.utility_sets import make_utility_sets
from llm_unlearn.evaluation import mia
from llm_unlearn.evaluation.compute import RowScores, Settings, per_sample_values, requested_scores
from llm_unlearn.evaluation.drift import kl_to_start
from llm_unlearn.evaluation.logs import EvalResult, text_hash
from llm_unlearn.evaluation.metrics import harmonic_mean, mean
from llm_unlearn.evaluation.reference import ReferenceLog, as_reference, check_reference, tofu_reference_settings
from llm_unlearn.evaluation.registry import (
    FORGET,
    HOLDOUT,
    REAL_AUTHORS,
    RETAIN,
    WORLD_FACTS,
    Metric,
    Report,
    from_aggregates,
    register,
)
from llm_unlearn.evaluation.scoring import (
    distributed_state,
    encode_raw_text,
    end_of_turn_ids,
    generate_greedy,
    resolve_format,
    score_sequences,
    shard,
)
from llm_unlearn.evaluation.tofu import assemble_result, length_ordered, score_qa_set
from llm_unlearn.models import is_peft_model

CUSTOM_SETS = (FORGET, RETAIN, HOLDOUT, REAL_AUTHORS, WORLD_FACTS)
GENERAL_SETS = (REAL_AUTHORS, WORLD_FACTS)
METRIC_GROUPS = ("prob", "truth_ratio", "rouge", "memorization", "mia", "kl", "general")
_GENERAL_PARTS = tuple(f"{s}_{m}" for s in GENERAL_SETS for m in ("prob", "rougeL_recall", "truth_ratio"))

register(
    Metric(
        "kl_to_start",
        lambda kl: kl,
        mean,
        False,
        "mean labelled-token KL(p_start || p_model): how far the model moved from where unlearning started",
        group="kl",
        needs=("kl",),
        sets=(RETAIN,),
        inputs=lambda row, s: None if row.kl is None else (row.kl,),
        reports=(Report("retain_kl_to_start", (RETAIN,)),),
    )
)
register(
    Metric(
        "general_knowledge",
        None,
        harmonic_mean,
        True,
        "harmonic mean of Prob, ROUGE-L recall and truth ratio on the package's real-author and world-fact questions",
        group="general",
        reports=(Report("general_knowledge", GENERAL_SETS),),
        compose=from_aggregates,
        inputs_from=_GENERAL_PARTS,
    )
)


@dataclass
class CustomEvalOptions:
    """Settings of a custom evaluation, recorded in summary.json.

    batch_size: rows per forward. max_new_tokens: greedy answer length (question/answer data) for ROUGE-L.
    prompt_tokens / continuation_tokens: text data: a document's first `prompt_tokens` tokens are continued for
        `continuation_tokens` tokens and compared with the document's own next tokens.
    rouge_stemming, label_mode, min_k: as in the TOFU suite.
    metrics: the groups to run: prob, truth_ratio (when the columns exist), rouge, memorization, mia (needs a
        holdout set), kl (retain), general (the general-knowledge questions).
    general_rows: keep only the first N general-knowledge questions of each kind (None: all).
    sets: evaluate only these sets (None: all; e.g. [forget, retain] during training).
    """

    batch_size: int = 16
    max_new_tokens: int = 64
    prompt_tokens: int = 32
    continuation_tokens: int = 48
    rouge_stemming: bool = True
    label_mode: str | None = None
    metrics: tuple[str, ...] = METRIC_GROUPS
    min_k: float = mia.DEFAULT_MIN_K
    general_rows: int | None = None
    sets: tuple[str, ...] | None = None

    def __post_init__(self):
        self.metrics = tuple(self.metrics)
        if self.sets is not None:
            self.sets = tuple(self.sets)
            if unknown := [s for s in self.sets if s not in CUSTOM_SETS]:
                raise ValueError(f"CustomEvalOptions.sets: unknown {unknown}; choose from {CUSTOM_SETS}")
        if unknown := [m for m in self.metrics if m not in METRIC_GROUPS]:
            raise ValueError(f"CustomEvalOptions.metrics: unknown {unknown}; choose from {METRIC_GROUPS}")
        counts = ("batch_size", "max_new_tokens", "prompt_tokens", "continuation_tokens")
        if bad := [name for name in counts if getattr(self, name) < 1]:
            raise ValueError(f"CustomEvalOptions: {', '.join(bad)} must be at least 1")
        if self.general_rows is not None and self.general_rows < 1:
            raise ValueError("CustomEvalOptions.general_rows must be None (all) or at least 1")
        if self.label_mode is not None and self.label_mode not in LABEL_MODES:
            raise ValueError(f"CustomEvalOptions.label_mode must be None or one of {LABEL_MODES}")


def _groups(options: CustomEvalOptions, set_name: str, has_truth_ratio_columns: bool) -> tuple[str, ...]:
    """The groups that apply to one set: truth ratio on forget/retain only when the rows carry its columns."""
    if set_name in (FORGET, RETAIN) and not has_truth_ratio_columns:
        return tuple(g for g in options.metrics if g != "truth_ratio")
    return options.metrics


def _score_text_set(name, records, model, tokenizer, options, fmt, collator, stop_ids, groups) -> list[RowScores]:
    """Documents: each scored on all its tokens (up to format.max_length) and, for ROUGE-L, continued greedily
    from its first `prompt_tokens` tokens and compared with the document's own next `continuation_tokens`."""
    scores = requested_scores(name, groups, "answer")
    items = [encode_raw_text(tokenizer, r["text"], fmt.max_length) for r in records]
    prompts = [item["input_ids"][: options.prompt_tokens] for item in items]
    rows = [
        RowScores(
            record["index"],
            scored_text=record["text"],
            reference_text=tokenizer.decode(
                item["input_ids"][options.prompt_tokens :][: options.continuation_tokens], skip_special_tokens=True
            ),
        )
        for record, item in zip(records, items)
    ]
    if "answer" in scores:
        distribution = "distribution" in scores
        for row, score in zip(rows, score_sequences(model, items, collator, options.batch_size, distribution)):
            row.answer = score
    if "generation" in scores and records:
        texts = generate_greedy(model, tokenizer, prompts, options.continuation_tokens, options.batch_size, stop_ids)
        for row, text in zip(rows, texts):
            row.generation = text
    return rows


def _kl_items(kind: str, records: list[dict], tokenizer, fmt: PromptFormat) -> list[dict]:
    if kind == "text":
        return [encode_raw_text(tokenizer, r["text"], fmt.max_length) for r in records]
    return [encode_qa(tokenizer, r["question"], r["answer"], fmt) for r in records]


def evaluate_custom(
    model,
    tokenizer,
    data: dict,
    options: CustomEvalOptions | None = None,
    fmt: PromptFormat | None = None,
    reference_log: str | os.PathLike | ReferenceLog | None = None,
) -> EvalResult:
    """Run the custom suite. `data`: {"kind": "qa" | "text", "sets": {forget, retain[, holdout]}, "start_model":
    the model unlearning started from when it is not `model` with its adapter turned off (else None)}."""
    options = options or CustomEvalOptions()
    fmt = resolve_format(fmt, options.label_mode)
    kind, sets = data["kind"], {name: [dict(r) for r in rows] for name, rows in data["sets"].items() if rows}
    with_columns = kind == "qa" and has_truth_ratio_columns(sets.get(FORGET, []) + sets.get(RETAIN, []))
    notes = []
    if "truth_ratio" in options.metrics and not with_columns:
        notes.append("no paraphrased_answer / perturbed_answer columns on forget and retain: no truth ratio there")
    if "general" in options.metrics or "truth_ratio" in options.metrics:
        general = make_utility_sets(seed=0)
        sets.update({name: general[name][: options.general_rows] for name in GENERAL_SETS})
    if options.sets is not None:
        sets = {name: rows for name, rows in sets.items() if name in options.sets}
    if HOLDOUT not in sets and "mia" in options.metrics:
        notes.append("no holdout set: no membership inference or privleak")

    def key_text(name: str, record: dict) -> str:
        return record["text"] if kind == "text" and name not in GENERAL_SETS else record["question"]

    hashes = {name: {str(r["index"]): text_hash(key_text(name, r)) for r in rows} for name, rows in sets.items()}
    reference = as_reference(reference_log)
    prompt_example = prompt_text(tokenizer, "{question}", fmt) if kind == "qa" else ""
    settings_checks = tofu_reference_settings(prompt_example, "mia" in options.metrics, options.min_k, fmt)
    notes += check_reference(reference, hashes, FORGET, HOLDOUT, settings_checks)
    settings = Settings(min_k=options.min_k, rouge_stemming=options.rouge_stemming)

    state = distributed_state()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = PaddingCollator(pad_id, "right", mask_pad_ids=fmt.label_mode == "open_unlearning")
    stop_ids = end_of_turn_ids(tokenizer, fmt, model)
    start_model = data.get("start_model")
    mine = {}
    for name, records in sets.items():
        groups = _groups(options, name, with_columns)
        scored_groups = tuple(g for g in groups if g != "kl")  # KL needs two models: computed below
        text_set = kind == "text" and name not in GENERAL_SETS
        part = shard(records if text_set else length_ordered(records, tokenizer, fmt), state, options.batch_size)
        if text_set:
            rows = _score_text_set(name, part, model, tokenizer, options, fmt, collator, stop_ids, scored_groups)
            values = per_sample_values(name, rows, scored_groups, settings)
        else:
            scorer_options = replace(options, metrics=scored_groups)
            values = score_qa_set(name, part, model, tokenizer, scorer_options, fmt, collator, stop_ids)
        if name == RETAIN and "kl" in groups and part and (start_model is not None or is_peft_model(model)):
            kl = kl_to_start(model, _kl_items(kind, part, tokenizer, fmt), collator, options.batch_size, start_model)
            rows = [RowScores(r["index"], kl=value) for r, value in zip(part, kl)]
            values.update(per_sample_values(name, rows, ("kl",), settings))
        mine[name] = values
    if "kl" in options.metrics and start_model is None and not is_peft_model(model):
        notes.append(
            "no starting model to compare with (the evaluated model is model.name_or_path, or none was given): no KL"
        )
    return assemble_result(
        "custom", mine, state, hashes, CUSTOM_SETS, options, fmt, prompt_example, reference, notes, data_kind=kind
    )

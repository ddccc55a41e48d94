"""The TOFU suite: Prob, truth ratio, ROUGE-L recall, forget quality, model utility, extraction strength,
exact memorization, and MIA / privleak against a holdout set.

Token sets: Prob, truth ratio, LOSS and zlib score the whole labelled span (answer + end-of-turn token);
extraction strength, exact memorization, Min-K% and Min-K%++ the answer tokens only, so a model that merely
stops predicting the end of its turn is not counted as having forgotten the answer.

Input: a plain dict of eval sets, keys "forget", "retain", "real_authors", "world_facts" and optionally
"holdout", each a list of records {question, answer, index, paraphrased_answer, perturbed_answer}.
For forget/retain, p_correct is the paraphrased answer's p; for real_authors/world_facts it is the answer's,
and their Prob is normalized over the answer and its perturbations.

Every process must call `evaluate_tofu` when several run: the rows are sharded across processes and the
per-sample values gathered, so the result does not depend on the number of processes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from llm_unlearn.data.collate import (
    LABEL_MODES,
    PaddingCollator,
    PromptFormat,
    encode_prompt,
    encode_qa,
    prompt_text,
)
from llm_unlearn.evaluation import metrics as M
from llm_unlearn.evaluation import mia
from llm_unlearn.evaluation.logs import (
    HASH_KEY,
    NOT_RECORDED,
    EvalResult,
    ReferenceLog,
    SettingCheck,
    as_reference,
    check_same_split,
    check_settings,
    merge_per_sample,
    sorted_values,
    text_hash,
)
from llm_unlearn.evaluation.scoring import (
    SequenceScore,
    distributed_state,
    end_of_turn_ids,
    gather,
    generate_greedy,
    resolve_format,
    score_sequences,
    shard,
)

TOFU_SETS = ("forget", "retain", "real_authors", "world_facts", "holdout")
METRIC_GROUPS = ("prob", "truth_ratio", "rouge", "memorization", "mia")
PARAPHRASED_SETS = ("forget", "retain")  # p_correct = the paraphrased answer
ANSWER_SETS = ("real_authors", "world_facts")  # p_correct = the answer; Prob normalized
UTILITY_SETS = ("retain", "real_authors", "world_facts")
MIA_SETS = ("forget", "holdout")
MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_pp")


@dataclass
class TofuEvalOptions:
    """Settings of a TOFU evaluation, recorded in summary.json.

    batch_size: questions per forward; the truth-ratio pass scores the paraphrased and perturbed answers of
        those questions in one forward (6 x batch_size sequences on forget/retain).
    max_new_tokens: greedy answer length for ROUGE (TOFU: 200).
    truncate_rows: keep only the first N rows of every set (original TOFU: 300); None keeps all.
    rows: {set: N} keeps N evenly spaced rows of that set (every author stays represented; cheap subsets for
        benchmarks), applied after truncate_rows; sets not named keep all their rows.
    rouge_stemming: rouge_score's Porter stemmer (TOFU: on).
    label_mode: None takes the prompt format's; "open_unlearning" reproduces that toolkit's span and mask.
    sets / metrics: what to run; metric groups are prob, truth_ratio, rouge, memorization (forget), mia
        (forget vs holdout).
    min_k: fraction of lowest-probability tokens for Min-K% and Min-K%++.
    """

    batch_size: int = 16
    max_new_tokens: int = 200
    truncate_rows: int | None = None
    rows: dict[str, int] | None = None
    rouge_stemming: bool = True
    label_mode: str | None = None
    sets: tuple[str, ...] = TOFU_SETS
    metrics: tuple[str, ...] = METRIC_GROUPS
    min_k: float = mia.DEFAULT_MIN_K

    def __post_init__(self):
        self.sets, self.metrics = tuple(self.sets), tuple(self.metrics)
        if unknown := [s for s in self.sets if s not in TOFU_SETS]:
            raise ValueError(f"TofuEvalOptions.sets: unknown {unknown}; choose from {TOFU_SETS}")
        if unknown := [m for m in self.metrics if m not in METRIC_GROUPS]:
            raise ValueError(f"TofuEvalOptions.metrics: unknown {unknown}; choose from {METRIC_GROUPS}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("TofuEvalOptions: batch_size and max_new_tokens must be at least 1")
        if self.truncate_rows is not None and self.truncate_rows < 1:
            raise ValueError("TofuEvalOptions.truncate_rows must be None or at least 1 (TOFU used 300)")
        if self.label_mode is not None and self.label_mode not in LABEL_MODES:
            raise ValueError(f"TofuEvalOptions.label_mode must be None or one of {LABEL_MODES}")
        if self.rows is not None:
            if unknown := [s for s in self.rows if s not in TOFU_SETS]:
                raise ValueError(f"TofuEvalOptions.rows: unknown set(s) {unknown}; choose from {TOFU_SETS}")
            if bad := {s: n for s, n in self.rows.items() if not isinstance(n, int) or n < 1}:
                raise ValueError(f"TofuEvalOptions.rows: row counts must be whole numbers >= 1 (got {bad})")


def evenly_spaced(records: list, count: int | None) -> list:
    """`count` rows spread over the whole list (every author represented), in their original order."""
    if count is None or count >= len(records):
        return list(records)
    return [records[(i * len(records)) // count] for i in range(count)]


def _required_keys(set_name: str, groups: tuple[str, ...]) -> list[str]:
    keys = ["question", "answer"]
    if set_name in PARAPHRASED_SETS and "truth_ratio" in groups:
        keys += ["paraphrased_answer", "perturbed_answer"]
    if set_name in ANSWER_SETS and ("truth_ratio" in groups or "prob" in groups):
        keys.append("perturbed_answer")
    return keys


def prepare_tofu_sets(eval_sets: dict[str, list[dict]], options: TofuEvalOptions) -> tuple[dict, list[str]]:
    """Select, truncate and validate the sets to evaluate; records get an int `index` (their position if absent)."""
    if unknown := [name for name in eval_sets if name not in TOFU_SETS]:
        raise ValueError(f"unknown TOFU eval set(s) {unknown}; expected keys among {TOFU_SETS}")
    sets: dict[str, list[dict]] = {}
    notes: list[str] = []
    for name in options.sets:
        records = eval_sets.get(name)
        if not records:
            notes.append(f"set '{name}' not given: skipped" + (" (no MIA / privleak)" if name == "holdout" else ""))
            continue
        records = list(records)[: options.truncate_rows] if options.truncate_rows else list(records)
        records = evenly_spaced(records, (options.rows or {}).get(name))
        required = _required_keys(name, options.metrics)
        seen: set[int] = set()
        prepared = []
        for row, record in enumerate(records):
            if missing := [key for key in required if key not in record]:
                raise ValueError(
                    f"TOFU set '{name}', row {row}: missing {missing}; expected keys {required} "
                    "(perturbed_answer: a list of strings)"
                )
            if "perturbed_answer" in required and (
                isinstance(record["perturbed_answer"], str) or len(record["perturbed_answer"]) == 0
            ):
                raise ValueError(f"TOFU set '{name}', row {row}: perturbed_answer must be a non-empty list of strings")
            index = int(record.get("index", row))
            if index in seen:
                raise ValueError(f"TOFU set '{name}', row {row}: duplicate index {index}; indices key per-sample logs")
            seen.add(index)
            prepared.append({**record, "index": index})
        sets[name] = prepared
    return sets, notes


def _batches(records: list, size: int):
    for start in range(0, len(records), size):
        yield records[start : start + size]


def _checked(score: SequenceScore, set_name: str, index: int, what: str, fmt: PromptFormat) -> SequenceScore:
    if score.num_tokens == 0:
        raise ValueError(
            f"TOFU set '{set_name}', index {index}: the {what} has no scored tokens left after cutting to "
            f"max_length={fmt.max_length}; raise PromptFormat.max_length"
        )
    return score


def _answer_only_checked(score: SequenceScore, set_name: str, index: int) -> SequenceScore:
    if score.num_answer_tokens == 0:
        raise ValueError(
            f"TOFU set '{set_name}', index {index}: the answer has no tokens of its own (only the end-of-turn "
            "token is labelled), so extraction strength, exact memorization and Min-K% are undefined; give a "
            "non-empty answer or raise PromptFormat.max_length"
        )
    return score


def _memorization(score: SequenceScore) -> tuple[float, float]:
    """Extraction strength and exact memorization over the answer tokens (not the end-of-turn token).

    NaN when the model's log-probs there are not finite: the argmax of NaN logits says nothing."""
    if M.is_nonfinite(score.answer_logprobs):
        return math.nan, math.nan
    flags = score.answer_argmax_correct
    return M.extraction_strength(flags), M.exact_memorization(flags)


def _score_set(name, records, model, tokenizer, options, fmt, collator, stop_ids) -> dict:
    """Per-sample values of one set (or one process's shard of it)."""
    groups = options.metrics
    out: dict[str, dict[str, object]] = {}

    def put(metric: str, index: int, value) -> None:
        out.setdefault(metric, {})[str(index)] = value

    with_mia = name in MIA_SETS and "mia" in groups
    with_memorization = name == "forget" and "memorization" in groups
    with_perturbed = name != "holdout" and ("truth_ratio" in groups or (name in ANSWER_SETS and "prob" in groups))
    with_answer = "prob" in groups or with_mia or with_memorization or (name in ANSWER_SETS and with_perturbed)

    for chunk in _batches(records, options.batch_size):
        answer_nll: dict[int, float] = {}
        if with_answer:
            items = [encode_qa(tokenizer, r["question"], r["answer"], fmt) for r in chunk]
            scores = score_sequences(model, items, collator, len(items), distribution_stats=with_mia)
            for record, score in zip(chunk, scores):
                index = record["index"]
                _checked(score, name, index, "answer", fmt)
                answer_nll[index] = score.mean_nll
                put("nll", index, score.mean_nll)
                put("prob", index, M.probability(score.mean_nll))
                if with_memorization or with_mia:
                    _answer_only_checked(score, name, index)
                if with_memorization:
                    extraction, exact = _memorization(score)
                    put("extraction_strength", index, extraction)
                    put("exact_memorization", index, exact)
                if with_mia:
                    # LOSS and zlib over the whole labelled span; Min-K% and Min-K%++ over the answer tokens.
                    put("mia_loss", index, mia.loss_score(score.token_logprobs))
                    put("mia_zlib", index, mia.zlib_score(score.token_logprobs, record["answer"]))
                    put("mia_min_k", index, mia.min_k_score(score.answer_logprobs, options.min_k))
                    put(
                        "mia_min_k_pp",
                        index,
                        mia.min_k_plus_plus_score(
                            score.answer_logprobs, score.answer_mu, score.answer_sigma, options.min_k
                        ),
                    )
        if with_perturbed:
            # Paraphrased (forget/retain) and perturbed answers of the whole chunk in one forward.
            variants = []
            for record in chunk:
                texts = [record["paraphrased_answer"]] if name in PARAPHRASED_SETS else []
                variants.append(texts + list(record["perturbed_answer"]))
            items = [
                encode_qa(tokenizer, r["question"], text, fmt) for r, texts in zip(chunk, variants) for text in texts
            ]
            flat = iter(score_sequences(model, items, collator, len(items)))
            for record, texts in zip(chunk, variants):
                index = record["index"]
                nlls = [_checked(next(flat), name, index, "paraphrased/perturbed answer", fmt).mean_nll for _ in texts]
                if name in PARAPHRASED_SETS:
                    correct, wrong = nlls[0], nlls[1:]
                    put("paraphrased_nll", index, correct)
                else:
                    correct, wrong = answer_nll[index], nlls
                    if "prob" in groups:
                        put("normalized_prob", index, M.normalized_probability(correct, wrong))
                put("perturbed_nll", index, wrong)
                if "truth_ratio" in groups:
                    put("truth_ratio", index, M.truth_ratio(correct, wrong))

    if "rouge" in groups and name != "holdout" and records:
        prompts = [encode_prompt(tokenizer, r["question"], fmt) for r in records]
        texts = generate_greedy(
            model,
            tokenizer,
            prompts,
            options.max_new_tokens,
            options.batch_size,
            stop_ids,
            mask_pad_ids=fmt.label_mode == "open_unlearning",
        )
        for record, text in zip(records, texts):
            put("generation", record["index"], text)
            put("rougeL_recall", record["index"], M.rouge_l_recall(text, record["answer"], options.rouge_stemming))
    return out


def summarize_tofu(
    per_sample: dict, options: TofuEvalOptions, reference: ReferenceLog | None
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Summary metrics from (merged) per-sample values and an optional reference log; reasons for every null.

    An aggregate over a NaN or infinite per-sample value is null, with a reason naming the set, metric and rows;
    so is a composite with a null part.
    """
    metrics: dict[str, float | None] = {}
    reasons: dict[str, str] = {}

    def values(set_name: str, metric: str) -> list:
        return sorted_values(per_sample, set_name, metric)

    def mean(xs: list) -> float:
        return sum(xs) / len(xs)

    def aggregate(key: str, sources: list[tuple[str, str]], combine, *inputs) -> None:
        """metrics[key] = combine(*inputs), or null when a source (set, metric) has non-finite rows."""
        if reason := M.nonfinite_reason(per_sample, sources):
            metrics[key], reasons[key] = None, reason
        else:
            metrics[key] = combine(*inputs)

    for name in ("forget", "retain", "real_authors", "world_facts"):
        prob_metric = "normalized_prob" if name in ANSWER_SETS else "prob"
        if prob := values(name, prob_metric):
            aggregate(f"{name}_prob", [(name, prob_metric)], mean, prob)
        if ratios := values(name, "truth_ratio"):
            combine = M.forget_truth_ratio_aggregate if name == "forget" else M.retain_truth_ratio_aggregate
            aggregate(f"{name}_truth_ratio", [(name, "truth_ratio")], combine, ratios)
        if recall := values(name, "rougeL_recall"):
            aggregate(f"{name}_rougeL_recall", [(name, "rougeL_recall")], mean, recall)
    for metric in ("extraction_strength", "exact_memorization"):
        if scores := values("forget", metric):
            aggregate(f"forget_{metric}", [("forget", metric)], mean, scores)

    # Forget quality: KS test against the retain model's per-sample forget truth ratios.
    forget_tr = per_sample.get("forget", {}).get("truth_ratio", {})
    reference_tr = reference.values("forget", "truth_ratio") if reference else None
    if not forget_tr:
        metrics["forget_quality"], reasons["forget_quality"] = None, "forget truth ratios were not evaluated"
    elif reference is None:
        metrics["forget_quality"] = None
        reasons["forget_quality"] = "no reference log: pass the retain model's per_sample.json (or run folder)"
    elif reference_tr is None:
        metrics["forget_quality"] = None
        reasons["forget_quality"] = f"reference log {reference.path} has no forget truth_ratio values"
    else:
        ours = M.nonfinite_reason(per_sample, [("forget", "truth_ratio")])
        theirs = M.nonfinite_reason(
            reference.per_sample, [("forget", "truth_ratio")], f"reference log {reference.path}: "
        )
        if ours or theirs:
            metrics["forget_quality"] = None
            reasons["forget_quality"] = "; ".join(reason for reason in (ours, theirs) if reason)
        else:
            keys = sorted(forget_tr, key=int)
            ours_tr, reference_values = [forget_tr[k] for k in keys], [reference_tr[k] for k in keys]
            metrics["forget_quality"] = M.forget_quality(ours_tr, reference_values)

    # Model utility: harmonic mean of 9 numbers.
    parts = [f"{name}_{metric}" for name in UTILITY_SETS for metric in ("prob", "rougeL_recall", "truth_ratio")]
    if missing := [key for key in parts if key not in metrics]:
        metrics["model_utility"], reasons["model_utility"] = None, f"missing components {missing}"
    elif nulls := [key for key in parts if metrics[key] is None]:
        metrics["model_utility"] = None
        reasons["model_utility"] = "null components: " + "; ".join(f"{key} ({reasons.get(key)})" for key in nulls)
    else:
        metrics["model_utility"] = M.harmonic_mean([metrics[key] for key in parts])

    # Membership inference: forget (members) vs holdout (non-members).
    if "mia" not in options.metrics:
        return metrics, reasons
    for attack in MIA_ATTACKS:
        key, metric = f"mia_{attack}_auc", f"mia_{attack}"
        forget, holdout = values("forget", metric), values("holdout", metric)
        if forget and holdout:
            aggregate(key, [("forget", metric), ("holdout", metric)], mia.mia_auc, forget, holdout)
        else:
            metrics[key], reasons[key] = None, "needs the forget and holdout sets"
    metrics["privleak"], reason = privleak_vs_reference(
        metrics["mia_min_k_auc"], per_sample, reference, min_k=options.min_k
    )
    if reason:
        reasons["privleak"] = reason
    return metrics, reasons


def privleak_vs_reference(
    auc: float | None,
    per_sample: dict,
    reference: ReferenceLog | None,
    forget="forget",
    holdout="holdout",
    *,
    min_k: float,
):
    """privleak from this run's Min-K% AUC and the reference's AUC on the same rows; (value, null reason).

    Null, naming the rows, when a Min-K% score here or in the reference log is NaN or infinite; null, naming both
    values, when the reference summary records another `min_k` (its Min-K% AUC would measure something else)."""
    min_k_sources = [(forget, "mia_min_k"), (holdout, "mia_min_k")]
    if reason := M.nonfinite_reason(per_sample, min_k_sources):
        return None, reason
    if auc is None:
        return None, f"needs Min-K% scores on the {forget} and {holdout} sets"
    if reference is None:
        return None, "no reference log: pass the retain model's per_sample.json (or run folder)"
    ref_forget, ref_holdout = reference.values(forget, "mia_min_k"), reference.values(holdout, "mia_min_k")
    if ref_forget is None or ref_holdout is None:
        return None, f"reference log {reference.path} has no Min-K% scores on {forget} and {holdout}"
    reference_min_k = reference.recorded(("options", "min_k"))
    if reference_min_k is not NOT_RECORDED and reference_min_k != min_k:
        return None, (
            f"the reference log scored Min-K% with min_k={reference_min_k}, this run with min_k={min_k}: the two "
            "AUCs are not comparable; evaluate both with the same min_k"
        )
    if reason := M.nonfinite_reason(reference.per_sample, min_k_sources, f"reference log {reference.path}: "):
        return None, reason
    ours_forget = per_sample[forget]["mia_min_k"]
    ours_holdout = per_sample[holdout]["mia_min_k"]
    reference_auc = mia.mia_auc([ref_forget[k] for k in ours_forget], [ref_holdout[k] for k in ours_holdout])
    try:
        return mia.privleak(auc, reference_auc), None
    except ValueError as err:
        return None, str(err)


def check_reference(
    reference: ReferenceLog | None,
    hashes: dict[str, dict[str, str]],
    forget_set: str,
    holdout_set: str,
    settings: Sequence[SettingCheck],
) -> list[str]:
    """Raise unless the reference log covers the same forget rows (and holdout rows, when it has them) and was
    evaluated with the same strict `settings`; returns notes for the other settings that differ or that the
    reference's summary does not record.

    A reference without the holdout set only nulls privleak; one without the forget set is the wrong file.
    """
    if reference is None:
        return []
    if forget_set in hashes:
        check_same_split(hashes[forget_set], reference, forget_set)
    if holdout_set in hashes and reference.values(holdout_set, HASH_KEY) is not None:
        check_same_split(hashes[holdout_set], reference, holdout_set)
    return check_settings(reference, settings)


def tofu_reference_settings(tokenizer, options: TofuEvalOptions, fmt: PromptFormat) -> list[SettingCheck]:
    """What a TOFU reference log must share with this run (strict), or should (a note when it differs).

    Everything that changes the forget truth ratios (forget quality's input) is strict: the label span and the
    prompt (chat template on/off, system prompt, the rendered template itself). PromptFormat.max_length only
    matters for sequences longer than the smaller of the two limits, and min_k only for the Min-K% scores: a
    min_k mismatch leaves privleak null (see privleak_vs_reference) and forget quality valid.
    """
    prompt_changes = "the prompts differ, so truth ratios and MIA scores are not comparable"
    checks = [
        SettingCheck(("label_mode",), fmt.label_mode, True, "the scored token spans differ (truth ratios, MIA)"),
        SettingCheck(("prompt_format", "use_chat_template"), fmt.use_chat_template, True, prompt_changes),
        SettingCheck(("prompt_format", "system_prompt"), fmt.system_prompt, True, prompt_changes),
        SettingCheck(
            ("prompt_example",),
            prompt_text(tokenizer, "{question}", fmt),
            True,
            "the chat templates render prompts differently, so truth ratios are not comparable",
        ),
        SettingCheck(
            ("prompt_format", "max_length"),
            fmt.max_length,
            False,
            "sequences longer than the smaller limit are cut differently (their scores differ)",
        ),
    ]
    if "mia" in options.metrics:
        checks.append(
            SettingCheck(
                ("options", "min_k"),
                options.min_k,
                False,
                "Min-K% and Min-K%++ scores differ, so privleak is left null (forget quality is unaffected)",
            )
        )
    return checks


def evaluate_tofu(
    model,
    tokenizer,
    eval_sets: dict[str, list[dict]],
    options: TofuEvalOptions | None = None,
    fmt: PromptFormat | None = None,
    reference_log: str | os.PathLike | ReferenceLog | None = None,
) -> EvalResult:
    """Run the TOFU suite on `model` (sharded over processes when several run; every process must call it)."""
    options = options or TofuEvalOptions()
    fmt = resolve_format(fmt, options.label_mode)
    sets, notes = prepare_tofu_sets(eval_sets, options)
    hashes = {name: {str(r["index"]): text_hash(r["question"]) for r in records} for name, records in sets.items()}
    reference = as_reference(reference_log)
    notes += check_reference(reference, hashes, "forget", "holdout", tofu_reference_settings(tokenizer, options, fmt))

    state = distributed_state()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = PaddingCollator(pad_id, "right", mask_pad_ids=fmt.label_mode == "open_unlearning")
    stop_ids = end_of_turn_ids(tokenizer, fmt, model)
    mine = {
        name: _score_set(
            name, shard(records, state, options.batch_size), model, tokenizer, options, fmt, collator, stop_ids
        )
        for name, records in sets.items()
    }
    per_sample = merge_per_sample(gather(mine, state))
    for name, digests in hashes.items():
        per_sample.setdefault(name, {})[HASH_KEY] = digests
    metrics, reasons = summarize_tofu(per_sample, options, reference)
    meta = {
        "options": asdict(options),
        "label_mode": fmt.label_mode,
        "prompt_format": fmt.describe(),
        # What the model sees before an answer, system prompt included (None keeps the template's default one).
        "prompt_example": prompt_text(tokenizer, "{question}", fmt),
        "reference_log": str(reference.path) if reference else None,
        "row_counts": {name: len(records) for name, records in sets.items()},
        "higher_is_better": {key: M.summary_direction(key) for key in metrics},
        # set -> metric -> indices of NaN / inf per-sample values (a diverged model); {} when all are finite.
        "nonfinite_rows": M.nonfinite_table(per_sample),
    }
    return EvalResult("tofu", per_sample, metrics, reasons, notes, meta)

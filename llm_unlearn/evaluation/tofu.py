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

import os
from dataclasses import asdict, dataclass

from llm_unlearn.data.collate import (
    LABEL_MODES,
    PaddingCollator,
    PromptFormat,
    encode_prompt,
    encode_qa,
    prompt_text,
)
from llm_unlearn.evaluation import mia
from llm_unlearn.evaluation.compute import RowScores, Settings, per_sample_values, requested_scores, summarize
from llm_unlearn.evaluation.logs import HASH_KEY, EvalResult, indexed_records, merge_per_sample, text_hash
from llm_unlearn.evaluation.nonfinite import nonfinite_table
from llm_unlearn.evaluation.reference import ReferenceLog, as_reference, check_reference, tofu_reference_settings
from llm_unlearn.evaluation.registry import TOFU_SETS, summary_direction
from llm_unlearn.evaluation.scoring import (
    SequenceScore,
    distributed_state,
    end_of_turn_ids,
    gather,
    generate_greedy,
    progress,
    resolve_format,
    score_sequences,
    shard,
)

METRIC_GROUPS = ("prob", "truth_ratio", "rouge", "memorization", "mia")
PARAPHRASED_SETS = ("forget", "retain")  # p_correct = the paraphrased answer


@dataclass
class TofuEvalOptions:
    """Settings of a TOFU evaluation, recorded in summary.json.

    batch_size: questions per batch; each question's answer, paraphrased and perturbed answers are scored
        together (7 x batch_size sequences on forget/retain), its prompt run once for all of them.
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


def length_ordered(records: list[dict], tokenizer, fmt: PromptFormat) -> list[dict]:
    """Rows ordered by prompt then answer length, so that a batch pads little (scoring and generation); the
    per-sample logs are keyed and merged by index, so their order does not change. Done before sharding, so
    every process count batches the same rows together."""
    return sorted(records, key=lambda r: (len(encode_prompt(tokenizer, r["question"], fmt)), len(r["answer"])))


def evenly_spaced(records: list, count: int | None) -> list:
    """`count` rows spread over the whole list (every author represented), in their original order."""
    if count is None or count >= len(records):
        return list(records)
    return [records[(i * len(records)) // count] for i in range(count)]


def correct_score(set_name: str) -> str:
    """The score that stands for the correct answer: the paraphrased answer's on forget/retain, else the answer's."""
    return "paraphrased" if set_name in PARAPHRASED_SETS else "answer"


def _required_keys(set_name: str, groups: tuple[str, ...]) -> list[str]:
    scores = requested_scores(set_name, groups, correct_score(set_name))
    keys = ["question", "answer"]
    keys += [
        key
        for score, key in (("paraphrased", "paraphrased_answer"), ("perturbed", "perturbed_answer"))
        if score in scores
    ]
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

        def check_perturbed(row: int, record: dict, name=name, required=required) -> None:
            if "perturbed_answer" in required and (
                isinstance(record["perturbed_answer"], str) or len(record["perturbed_answer"]) == 0
            ):
                raise ValueError(f"TOFU set '{name}', row {row}: perturbed_answer must be a non-empty list of strings")

        sets[name] = indexed_records(
            records,
            f"TOFU set '{name}'",
            required,
            " (perturbed_answer: a list of strings)",
            "; indices key per-sample logs",
            check_perturbed,
        )
    return sets, notes


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


def _settings(options: TofuEvalOptions) -> Settings:
    return Settings(min_k=options.min_k, rouge_stemming=options.rouge_stemming)


def _variant_texts(record: dict, kinds: list[str]) -> list[str]:
    """The answer texts of one record in the order of `kinds` (answer, paraphrased, perturbed...)."""
    perturbed = iter(record.get("perturbed_answer") or [])
    text_of = {"answer": lambda: record["answer"], "paraphrased": lambda: record["paraphrased_answer"]}
    return [text_of[kind]() if kind in text_of else next(perturbed) for kind in kinds]


def score_qa_set(name, records, model, tokenizer, options, fmt, collator, stop_ids) -> dict:
    """Per-sample values of one set (or one process's shard of it): each row scored once into RowScores (only
    what the enabled metrics of this set need), then every registered column that applies."""
    scores = requested_scores(name, options.metrics, correct_score(name))
    rows = [RowScores(r["index"], scored_text=r["answer"], reference_text=r["answer"]) for r in records]
    passes = int(any(s in scores for s in ("answer", "paraphrased", "perturbed"))) + int("generation" in scores)
    with progress(passes * len(records), f"{name}") as bar:
        _score_rows(name, records, rows, scores, model, tokenizer, options, fmt, collator, stop_ids, bar)
    return per_sample_values(name, rows, options.metrics, _settings(options), correct_score(name))


def _score_rows(name, records, rows, scores, model, tokenizer, options, fmt, collator, stop_ids, bar) -> None:
    """Fill `rows` with the teacher-forced scores and generations `scores` asks for."""
    for start in range(0, len(records), options.batch_size):
        chunk, chunk_rows = records[start : start + options.batch_size], rows[start : start + options.batch_size]
        # Every answer a question is scored with (the answer, its paraphrase, its perturbations) in one pass that
        # runs the question's prompt once (scoring.score_shared_prefixes).
        variants = [
            (["answer"] if "answer" in scores else [])
            + (["paraphrased"] if "paraphrased" in scores else [])
            + (["perturbed"] * len(r["perturbed_answer"]) if "perturbed" in scores else [])
            for r in chunk
        ]
        texts = [_variant_texts(r, kinds) for r, kinds in zip(chunk, variants)]
        items = [encode_qa(tokenizer, r["question"], text, fmt) for r, group in zip(chunk, texts) for text in group]
        if not items:
            continue
        distribution = ["distribution" in scores and kind == "answer" for kinds in variants for kind in kinds]
        flat = iter(score_sequences(model, items, collator, len(items), distribution))
        for row, kinds in zip(chunk_rows, variants):
            scored = {kind: [] for kind in kinds}
            for kind in kinds:
                what = "paraphrased/perturbed answer" if kind != "answer" else "answer"
                scored[kind].append(_checked(next(flat), name, row.index, what, fmt))
            if "answer" in scored:
                row.answer = scored["answer"][0]
                if "answer_tokens" in scores:
                    _answer_only_checked(row.answer, name, row.index)
            if "paraphrased" in scored:
                row.paraphrased = scored["paraphrased"][0]
            if "paraphrased" in scored or "perturbed" in scored:
                row.perturbed = scored.get("perturbed", [])
        bar.update(len(chunk))
    if "generation" in scores and records:
        prompts = [encode_prompt(tokenizer, r["question"], fmt) for r in records]
        texts = generate_greedy(
            model,
            tokenizer,
            prompts,
            options.max_new_tokens,
            options.batch_size,
            stop_ids,
            mask_pad_ids=fmt.label_mode == "open_unlearning",
            on_batch=bar.update,
        )
        for row, text in zip(rows, texts):
            row.generation = text


def summarize_tofu(
    per_sample: dict, options: TofuEvalOptions, reference: ReferenceLog | None
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Summary metrics from (merged) per-sample values and an optional reference log; reasons for every null.

    An aggregate over a NaN or infinite per-sample value is null, with a reason naming the set, metric and rows;
    so is a composite with a null part.
    """
    return summarize(per_sample, TOFU_SETS, options.metrics, _settings(options), reference)


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
    prompt_example = prompt_text(tokenizer, "{question}", fmt)
    settings = tofu_reference_settings(prompt_example, "mia" in options.metrics, options.min_k, fmt)
    notes += check_reference(reference, hashes, "forget", "holdout", settings)

    state = distributed_state()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = PaddingCollator(pad_id, "right", mask_pad_ids=fmt.label_mode == "open_unlearning")
    stop_ids = end_of_turn_ids(tokenizer, fmt, model)
    mine = {
        name: score_qa_set(
            name,
            shard(length_ordered(records, tokenizer, fmt), state, options.batch_size),
            model,
            tokenizer,
            options,
            fmt,
            collator,
            stop_ids,
        )
        for name, records in sets.items()
    }
    return assemble_result("tofu", mine, state, hashes, TOFU_SETS, options, fmt, prompt_example, reference, notes)


def assemble_result(
    suite, mine, state, hashes, suite_sets, options, fmt, prompt_example, reference, notes, **extra_meta
) -> EvalResult:
    """Gather every process's per-sample values, key them by question hash, summarize through the registry, and
    record the settings (the TOFU and custom suites)."""
    per_sample = merge_per_sample(gather(mine, state))
    for name, digests in hashes.items():
        per_sample.setdefault(name, {})[HASH_KEY] = digests
    settings = Settings(min_k=options.min_k, rouge_stemming=options.rouge_stemming)
    metrics, reasons = summarize(per_sample, suite_sets, options.metrics, settings, reference)
    meta = {
        "options": asdict(options),
        "label_mode": fmt.label_mode,
        "prompt_format": fmt.describe(),
        # What the model sees before an answer, system prompt included (None keeps the template's default one).
        "prompt_example": prompt_example,
        "reference_log": str(reference.path) if reference else None,
        "row_counts": {name: len(digests) for name, digests in hashes.items()},
        "higher_is_better": {key: summary_direction(key) for key in metrics},
        # set -> metric -> indices of NaN / inf per-sample values (a diverged model); {} when all are finite.
        "nonfinite_rows": nonfinite_table(per_sample),
        **extra_meta,
    }
    return EvalResult(suite, per_sample, metrics, reasons, notes, meta)

"""Reference (retain model) logs: loading, the checks that they fit this run, and the composites that use them.

Every suite that compares with the retain model goes through this module: TOFU's forget quality and privleak,
MUSE's privleak (against the log or a fixed AUC), and any suite built on the metric registry.

* Loading: a `per_sample.json` file or the run folder holding one, with the `summary.json` beside it when present.
* Same split: the reference must cover exactly this run's rows of a set, with the same question hashes.
* Settings: each `SettingCheck` compares one setting of this run with the reference's summary.json; a strict one
  stops the run before anything is scored, the others become notes.
* Composites: `forget_quality_against_reference` and `privleak_against_reference` are the `compose` functions
  of those registrations (metrics.py); each returns (value, null reason).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_unlearn.evaluation import mia
from llm_unlearn.evaluation.logs import HASH_KEY, PER_SAMPLE_FILE, SUMMARY_FILE
from llm_unlearn.evaluation.nonfinite import nonfinite_reason

NO_REFERENCE = "no reference log: pass the retain model's per_sample.json (or run folder)"


class ReferenceMismatchError(ValueError):
    """The reference log was evaluated with a setting that changes the values a composite metric compares."""


class _NotRecorded:
    def __repr__(self) -> str:
        return "NOT_RECORDED"


NOT_RECORDED = _NotRecorded()


@dataclass
class ReferenceLog:
    """The retain model's per-sample log (and its summary when present beside it)."""

    path: Path
    per_sample: dict
    summary: dict | None

    def values(self, set_name: str, metric: str) -> dict[str, Any] | None:
        return self.per_sample.get(set_name, {}).get(metric)

    def recorded(self, path: Sequence[str]) -> Any:
        """The value at `path` in the reference's summary.json (e.g. ("options", "min_k")), or NOT_RECORDED when
        there is no summary or it predates that field."""
        node: Any = self.summary
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return NOT_RECORDED
            node = node[key]
        return node


def load_reference_log(path: str | os.PathLike) -> ReferenceLog:
    """Load a reference log from a per_sample.json file or the run folder that holds one."""
    path = Path(path)
    file = path / PER_SAMPLE_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"reference log {path}: expected a {PER_SAMPLE_FILE} file or a run folder containing one "
            "(the retain model's evaluation output)"
        )
    with open(file) as stream:
        try:
            per_sample = json.load(stream)
        except json.JSONDecodeError as err:
            raise ValueError(f"reference log {file}: not valid JSON (line {err.lineno}: {err.msg})") from err
    if not isinstance(per_sample, dict):
        raise ValueError(f"reference log {file}: expected an object mapping set -> metric -> index -> value")
    summary_file = file.parent / SUMMARY_FILE
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    return ReferenceLog(path=file, per_sample=per_sample, summary=summary)


def as_reference(reference_log: str | os.PathLike | ReferenceLog | None) -> ReferenceLog | None:
    if reference_log is None or isinstance(reference_log, ReferenceLog):
        return reference_log
    return load_reference_log(reference_log)


# ---- same split -------------------------------------------------------------------------------------------


def _preview(keys) -> str:
    keys = sorted(keys, key=lambda k: (len(k), k))
    return ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")


def check_same_split(hashes: dict[str, str], reference: ReferenceLog, set_name: str) -> None:
    """Raise unless the reference log covers exactly these indices of `set_name` with the same questions."""
    theirs = reference.values(set_name, HASH_KEY)
    if theirs is None:
        raise ValueError(
            f"reference log {reference.path} has no '{set_name}' set (or no {HASH_KEY}); evaluate the retain "
            f"model on the same '{set_name}' split with run_evaluation and pass its {PER_SAMPLE_FILE}"
        )
    if set(theirs) != set(hashes):
        only_ours = set(hashes) - set(theirs)
        only_theirs = set(theirs) - set(hashes)
        raise ValueError(
            f"reference log {reference.path} is for a different '{set_name}' split: {len(theirs)} rows vs "
            f"{len(hashes)} here; indices only here: [{_preview(only_ours)}], only in the reference: "
            f"[{_preview(only_theirs)}]. Evaluate the retain model on the same split (and truncate_rows)."
        )
    differing = [index for index, digest in hashes.items() if theirs[index] != digest]
    if differing:
        raise ValueError(
            f"reference log {reference.path}: '{set_name}' questions differ at indices [{_preview(differing)}]; "
            "it was evaluated on other data under the same indices"
        )


# ---- settings ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SettingCheck:
    """One setting of this run, compared with the same entry of the reference's summary.json.

    path: where the setting sits in summary.json, e.g. ("options", "min_k").
    strict: a mismatch raises ReferenceMismatchError (it changes values a composite metric compares); otherwise
        it becomes a note in the summary.
    consequence: what a mismatch does to the results, for the message.
    """

    path: tuple[str, ...]
    value: Any
    strict: bool
    consequence: str


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists, as summary.json stores them


def check_settings(reference: ReferenceLog | None, checks: Sequence[SettingCheck]) -> list[str]:
    """Compare this run's settings with the reference's summary.json: raise on a strict mismatch, note the rest.

    A reference without summary.json, or one whose summary predates a setting, cannot be checked for it: that
    becomes a note, never an error.
    """
    if reference is None or not checks:
        return []
    names = ", ".join(".".join(check.path) for check in checks)
    if reference.summary is None:
        return [
            f"reference log {reference.path} has no {SUMMARY_FILE} beside it: its settings ({names}) could not be "
            "compared with this run's"
        ]
    notes = []
    for check in checks:
        name = ".".join(check.path)
        theirs = reference.recorded(check.path)
        if theirs is NOT_RECORDED:
            notes.append(f"the reference {SUMMARY_FILE} does not record {name} (an older log): not compared")
            continue
        ours = _as_json(check.value)
        if theirs == ours:
            continue
        message = f"the reference log was evaluated with {name}={theirs!r}, this run with {name}={ours!r}"
        if check.strict:
            raise ReferenceMismatchError(
                f"{message}: {check.consequence}. Evaluate the retain model with the same {name} (reference log "
                f"{reference.path})"
            )
        notes.append(f"{message}: {check.consequence}")
    return notes


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


def tofu_reference_settings(prompt_example: str, with_mia: bool, min_k: float, fmt) -> list[SettingCheck]:
    """What a TOFU reference log must share with this run (strict), or should (a note when it differs).

    Everything that changes the forget truth ratios (forget quality's input) is strict: the label span and the
    prompt (chat template on/off, system prompt, the rendered template `prompt_example` itself).
    PromptFormat.max_length only matters for sequences longer than the smaller of the two limits, and min_k only
    for the Min-K% scores: a min_k mismatch leaves privleak null (see privleak_vs_reference) and forget quality
    valid.
    """
    prompt_changes = "the prompts differ, so truth ratios and MIA scores are not comparable"
    checks = [
        SettingCheck(("label_mode",), fmt.label_mode, True, "the scored token spans differ (truth ratios, MIA)"),
        SettingCheck(("prompt_format", "use_chat_template"), fmt.use_chat_template, True, prompt_changes),
        SettingCheck(("prompt_format", "system_prompt"), fmt.system_prompt, True, prompt_changes),
        SettingCheck(
            ("prompt_example",),
            prompt_example,
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
    if with_mia:
        checks.append(
            SettingCheck(
                ("options", "min_k"),
                min_k,
                False,
                "Min-K% and Min-K%++ scores differ, so privleak is left null (forget quality is unaffected)",
            )
        )
    return checks


def muse_reference_settings(options, fmt) -> list[SettingCheck]:
    """What a MUSE reference log must share with this run (`options`: MuseEvalOptions), or should.

    The reference log only feeds privleak (the retain model's Min-K% AUC on the same rows), so everything that
    changes Min-K% scores is strict when privleak takes its AUC from the log: min_k and the privleak token cut.
    The label mode only changes open-unlearning's pad-id attention mask, which touches raw text only where the
    text itself holds the pad token: a note. Prompts are plain text in every mode, so there is no prompt format
    to compare. With a fixed reference AUC the log serves only the split check and every difference is a note.
    """
    if "privleak" not in options.sets:
        return []
    strict = options.fixed_reference_auc() is None
    changes = "the Min-K% scores differ, so the retain model's AUC does not fit this run's"
    return [
        SettingCheck(("options", "min_k"), options.min_k, strict, changes),
        SettingCheck(("options", "max_length"), options.max_length, strict, changes),
        SettingCheck(("label_mode",), fmt.label_mode, False, "the pad-id attention mask differs (rarely matters)"),
    ]


def fixed_reference_note(what: str, reference: ReferenceLog | None) -> str:
    """The summary note of a privleak compared with a fixed retain-model AUC (`what` describes it)."""
    unused = f"; the reference log {reference.path} only checks the split" if reference is not None else ""
    return f"privleak compares this run's Min-K% AUC with {what}, not with a reference log{unused}"


# ---- composites against the reference ---------------------------------------------------------------------


def forget_quality_against_reference(summary, metric, report) -> tuple[float | None, str | None]:
    """metric.aggregate (the KS test) between this run's per-sample `metric.column` on the report's set and the
    reference log's on the same rows; null, with the reason, when either side is missing or non-finite."""
    (set_name,), column, reference = report.sets, metric.column, summary.reference
    ours = summary.per_sample.get(set_name, {}).get(column, {})
    if not ours:
        return None, f"{set_name} truth ratios were not evaluated"
    if reference is None:
        return None, NO_REFERENCE
    theirs = reference.values(set_name, column)
    if theirs is None:
        return None, f"reference log {reference.path} has no {set_name} {column} values"
    reasons = [
        nonfinite_reason(summary.per_sample, [(set_name, column)]),
        nonfinite_reason(reference.per_sample, [(set_name, column)], f"reference log {reference.path}: "),
    ]
    if any(reasons):
        return None, "; ".join(reason for reason in reasons if reason)
    keys = sorted(ours, key=int)
    return metric.aggregate([ours[k] for k in keys], [theirs[k] for k in keys]), None


def privleak_against_reference(summary, metric, report) -> tuple[float | None, str | None]:
    """privleak from this run's Min-K% AUC (metric.inputs_from) and the retain model's: the fixed AUC of the
    settings when there is one, else the reference log's on the same rows."""
    forget, holdout = report.sets
    (auc_key,) = metric.inputs_from
    auc, settings = summary.metrics.get(auc_key), summary.settings
    if settings.fixed_reference_auc is None:
        return privleak_vs_reference(auc, summary.per_sample, summary.reference, forget, holdout, min_k=settings.min_k)
    if reason := nonfinite_reason(summary.per_sample, [(forget, "mia_min_k"), (holdout, "mia_min_k")]):
        return None, reason
    if auc is None:
        return None, f"needs Min-K% scores on the {forget} and {holdout} sets"
    return mia.privleak(auc, settings.fixed_reference_auc), None


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
    if reason := nonfinite_reason(per_sample, min_k_sources):
        return None, reason
    if auc is None:
        return None, f"needs Min-K% scores on the {forget} and {holdout} sets"
    if reference is None:
        return None, NO_REFERENCE
    ref_forget, ref_holdout = reference.values(forget, "mia_min_k"), reference.values(holdout, "mia_min_k")
    if ref_forget is None or ref_holdout is None:
        return None, f"reference log {reference.path} has no Min-K% scores on {forget} and {holdout}"
    reference_min_k = reference.recorded(("options", "min_k"))
    if reference_min_k is not NOT_RECORDED and reference_min_k != min_k:
        return None, (
            f"the reference log scored Min-K% with min_k={reference_min_k}, this run with min_k={min_k}: the two "
            "AUCs are not comparable; evaluate both with the same min_k"
        )
    if reason := nonfinite_reason(reference.per_sample, min_k_sources, f"reference log {reference.path}: "):
        return None, reason
    ours_forget = per_sample[forget]["mia_min_k"]
    ours_holdout = per_sample[holdout]["mia_min_k"]
    reference_auc = mia.mia_auc([ref_forget[k] for k in ours_forget], [ref_holdout[k] for k in ours_holdout])
    try:
        return mia.privleak(auc, reference_auc), None
    except ValueError as err:
        return None, str(err)

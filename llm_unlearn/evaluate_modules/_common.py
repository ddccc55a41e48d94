"""What the metric scripts share: input checks that fail in one line before anything is computed, the info
builder, the membership split, the citations, and the body of the two metrics of argmax-correct flags.

`evaluate` turns a wrong input into a multi-line pyarrow message after it has started writing its cache, and a
missing one into an obscure error; `CheckedInputs` checks names, options, row counts and types first. It is a
plain mixin, not an `evaluate` class, so evaluate's loader (which takes the first EvaluationModule subclass it
finds in a script) still picks the script's own metric.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any


def choose(module: str, option: str, value: Any, choices: Mapping[str, Any]) -> Any:
    """The entry of `choices` named by `value`; a one-line error listing the names otherwise."""
    if value not in choices:
        names = ", ".join(repr(name) for name in choices)
        raise ValueError(f"{module}: {option} must be one of {names}, got {value!r}")
    return choices[value]


TOFU = "Maini et al., TOFU: A Task of Fictitious Unlearning for LLMs, COLM 2024 (arXiv:2401.06121)"
MUSE = "Shi et al., MUSE: Machine Unlearning Six-Way Evaluation for Language Models, 2024 (arXiv:2407.06460)"
OPEN_UNLEARNING = "open-unlearning, https://github.com/locuslab/open-unlearning"
MIN_K = "Shi et al., Detecting Pretraining Data from Large Language Models, ICLR 2024 (arXiv:2310.16789)"
DEFINITIONS = "Definitions and their differences from TOFU, MUSE and open-unlearning: llm_unlearn docs/metrics.md"

ARGMAX_CORRECT_ARGS = """
Args:
    argmax_correct (list of list of bool): per answer, for each answer token, whether the model's teacher-forced
        argmax at that position is the token.
"""


def metric_info(description: str, citation: str, inputs_description: str, features: dict):
    """The `evaluate.MetricInfo` of a script; `features` maps each input column to its `datasets` type."""
    import datasets
    import evaluate

    return evaluate.MetricInfo(
        description=description,
        citation=f"{citation}\n{DEFINITIONS}",
        inputs_description=inputs_description,
        features=datasets.Features(features),
    )


def split_by_membership(values: list, is_forget: list) -> tuple[list, list]:
    """(values of the forget rows, values of the holdout rows)."""
    forget = [value for value, member in zip(values, is_forget) if member]
    holdout = [value for value, member in zip(values, is_forget) if not member]
    return forget, holdout


class CheckedInputs:
    """Mixin for an `evaluate.Metric`: every input column present, all of one length, of the declared types;
    each option named in `choices` (option -> {allowed value: anything}) one of its allowed values, and
    whatever else `check_options` checks."""

    choices: Mapping[str, Mapping[str, Any]] = {}

    def _options(self) -> dict[str, Any]:
        """The options of `_compute` (its named parameters that are not input columns) and their defaults."""
        parameters = inspect.signature(self._compute).parameters.values()
        named = [p for p in parameters if p.kind is not p.VAR_KEYWORD]  # **columns: the inputs of a config
        return {p.name: p.default for p in named if p.name not in self._feature_names()}

    def check_options(self, **options) -> None:
        for option, allowed in self.choices.items():
            choose(self.name, option, options[option], allowed)

    def _expected(self) -> str:
        inputs = ", ".join(f"{name} ({feature})" for name, feature in self.features.items())
        return f"inputs: {inputs}; options: {', '.join(self._options()) or 'none'}"

    def compute(self, **given):
        """Check the inputs and options (see the module's inputs description below), then compute."""
        options = self._options()
        unknown = sorted(set(given) - set(self._feature_names()) - set(options))
        if unknown:
            raise ValueError(f"{self.name}: unknown argument(s) {unknown}; {self._expected()}")
        self.check_options(**{option: given.get(option, default) for option, default in options.items()})
        columns = {name: given[name] for name in self._feature_names() if given.get(name) is not None}
        if columns:
            self.add_batch(**columns)
        if getattr(self, "_rows_added", 0) == 0:  # nothing passed here nor added with add_batch
            raise ValueError(f"{self.name}: no rows given; {self._expected()}")
        self._rows_added = 0
        return super().compute(**{name: value for name, value in given.items() if name not in columns})

    def add_batch(self, **columns):
        """Check a batch of rows and add it; `compute(option=...)` then computes over every batch added."""
        missing = [name for name in self._feature_names() if columns.get(name) is None]
        if missing:
            raise ValueError(f"{self.name}: missing input(s) {missing}; {self._expected()}")
        lengths = {name: len(column) for name, column in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{self.name}: every input needs one value per row, got lengths {lengths}")
        try:
            super().add_batch(**columns)
        except (ValueError, TypeError):
            first_row = {name: column[0] for name, column in columns.items() if len(column)}
            raise ValueError(f"{self.name}: first row {first_row} does not match the {self._expected()}") from None
        self._rows_added = getattr(self, "_rows_added", 0) + next(iter(lengths.values()), 0)


class MeanOverAnswers(CheckedInputs):
    """Mixin for a metric of each answer's teacher-forced argmax-correct flags, averaged over answers: `metric`
    names its entry in llm_unlearn.evaluation.metrics.METRICS (per-answer function and aggregation); `description`
    says what it measures and `per_answer` what one answer's value is."""

    metric: str
    description: str
    per_answer: str

    def _info(self):
        import datasets

        inputs = (
            f"{ARGMAX_CORRECT_ARGS}Returns:\n    {self.metric} (float): the mean over answers.\n"
            f"    per_sample (list of float): per answer, {self.per_answer}.\nExample:\n"
            f'    >>> llm_unlearn.evaluate_modules.load("{self.metric}").compute(argmax_correct=[[False, True, True]])\n'
        )
        return metric_info(
            self.description, OPEN_UNLEARNING, inputs, {"argmax_correct": datasets.Sequence(datasets.Value("bool"))}
        )

    def _compute(self, argmax_correct):
        from llm_unlearn.evaluation.metrics import METRICS

        entry = METRICS[self.metric]
        values = [entry.per_sample(flags) for flags in argmax_correct]
        return {self.metric: entry.aggregate(values), "per_sample": values}

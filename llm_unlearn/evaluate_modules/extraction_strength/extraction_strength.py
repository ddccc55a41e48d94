"""Extraction strength as an `evaluate` metric, computed by llm_unlearn.evaluation.metrics."""

import evaluate

from llm_unlearn.evaluate_modules._common import MeanOverAnswers


class ExtractionStrength(MeanOverAnswers, evaluate.Metric):
    metric = "extraction_strength"
    description = """Extraction strength per answer: 1 - k/n over its n answer tokens, k the first position from which
every teacher-forced argmax is the answer token (how short a prefix suffices for the rest to come out
verbatim); no correct suffix gives 0. The result is the mean over answers; lower on the forget set = more
forgotten."""
    per_answer = "1 - k/n"

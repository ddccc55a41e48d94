"""Exact memorization as an `evaluate` metric, computed by llm_unlearn.evaluation.metrics."""

import evaluate

from llm_unlearn.evaluate_modules._common import MeanOverAnswers


class ExactMemorization(MeanOverAnswers, evaluate.Metric):
    metric = "exact_memorization"
    description = """Exact memorization per answer: the fraction of its answer tokens whose teacher-forced argmax is the
answer token. The result is the mean over answers; lower on the forget set = more forgotten."""
    per_answer = "the fraction of argmax-correct tokens"

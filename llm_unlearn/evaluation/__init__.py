"""Evaluation: TOFU and MUSE suites, membership inference, multi-process runner, training callback, reports.

The public names load lazily, so `python -m llm_unlearn.evaluation.report` and the pure metric functions do
not import transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "METRICS": "metrics",
    "Metric": "metrics",
    "TofuEvalOptions": "tofu",
    "evaluate_tofu": "tofu",
    "MuseEvalOptions": "muse",
    "evaluate_muse": "muse",
    "EvalResult": "logs",
    "load_reference_log": "reference",
    "run_evaluation": "runner",
    "evaluate_suite": "runner",
    "EvaluationCallback": "callback",
    "make_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

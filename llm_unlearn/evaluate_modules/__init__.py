"""The toolkit's metrics as `evaluate` modules, so `evaluate` users can compute them outside our suites.

Each metric is a folder holding a script of the same name (evaluate's layout for a local metric) that
delegates to the pure functions of `llm_unlearn.evaluation.metrics` and `llm_unlearn.evaluation.mia`. Loading
is by path, so it works offline (HF_HUB_OFFLINE=1, HF_EVALUATE_OFFLINE=1)::

    import evaluate
    from llm_unlearn.evaluate_modules import module_path

    truth_ratio = evaluate.load(module_path("truth_ratio"))   # or llm_unlearn.evaluate_modules.load(...)

Inputs and outputs of each module: docs/evaluate_modules.md.
"""

from __future__ import annotations

from pathlib import Path

MODULES = ("truth_ratio", "forget_quality", "privleak", "extraction_strength", "exact_memorization", "mia_auc")


def module_path(name: str) -> str:
    """The folder of the `evaluate` module `name`, as `evaluate.load` takes it."""
    if name not in MODULES:
        raise ValueError(f"unknown evaluate module {name!r}; the modules are: {', '.join(MODULES)}")
    return str(Path(__file__).parent / name)


def load(name: str, config_name: str | None = None):
    """`evaluate.load` of the module `name` (with its configuration, for privleak and mia_auc)."""
    import evaluate  # optional at import time: only loading a module needs it

    return evaluate.load(module_path(name), config_name=config_name)

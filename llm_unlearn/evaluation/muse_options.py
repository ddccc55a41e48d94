"""Settings of the MUSE suite, and the `muse` preset that switches them to MUSE's own conventions.

This project's defaults and MUSE's differ in four places; `preset: muse` sets all four, and a field given
explicitly always wins over the preset:

| field | default (preset None) | preset "muse" (as MUSE's code does it) |
|---|---|---|
| scale_100 | False: ROUGE in [0, 1] | True: ROUGE x 100 |
| rouge_stemming | True: Porter stemming | False |
| verbmem_reference_tokens | None: the whole continuation | verbmem_max_new_tokens: its first 128 tokens |
| reference_auc | "reference_log": the retain model's AUC from its log | "muse_news": MUSE's published retain AUC |

Both score privleak texts whole (max_length None) and report ROUGE-L F1 for verbmem and knowmem (MUSE's code
aggregates the F-measure for both).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from llm_unlearn.data.collate import LABEL_MODES
from llm_unlearn.evaluation import mia

MUSE_SETS = ("verbmem", "knowmem_forget", "knowmem_retain", "privleak")
PRESETS = ("muse",)
REFERENCE_FROM_LOG = "reference_log"
# MUSE's published Min-40% AUC of each corpus's retain model, forget vs holdout, in MUSE's own convention: the
# chance that a holdout text scores as more member-like than a forget text. That is 1 - this project's AUC
# (mia.mia_auc: the chance that a forget text looks more member-like), and MUSE's privleak
# (AUC - AUC_retain) / AUC_retain x 100 equals mia.privleak on the complements.
MUSE_RETAIN_AUC = {"muse_news": 0.4772, "muse_books": 0.5393}
MUSE_RETAIN_MIN_K = 0.4
# Fields whose None means "the preset's value".
PRESET_FIELDS = ("scale_100", "rouge_stemming", "verbmem_reference_tokens", "reference_auc")


@dataclass
class MuseEvalOptions:
    """Settings of a MUSE evaluation, recorded in summary.json (with every preset-dependent field filled in).

    preset: None keeps this project's defaults; "muse" takes MUSE's for the fields left at None (module
        docstring). The fields below marked "None: the preset's" follow it.
    icl_shots: how many *_icl pairs open the knowmem prompt (None: all given, as MUSE).
    knowmem_max_new_tokens / verbmem_max_new_tokens: MUSE's 32 and 128.
    scale_100, rouge_stemming: ROUGE reported x100 / with Porter stemming. None: the preset's.
    verbmem_reference_tokens: score verbmem against the first N tokens of the true continuation (MUSE cuts it to
        as many tokens as it generates). None: the preset's (the whole continuation by default).
    max_length: None scores each privleak text whole, as MUSE (a text longer than the model's context is cut to
        the context, with a note); N cuts every text to its first N tokens. Memory grows with
        batch_size x text length.
    reference_auc: the retain model's Min-K% AUC that privleak compares with: "reference_log" (from the
        reference log, on the same rows), "muse_news" / "muse_books" (MUSE's published values, which need
        min_k 0.4 and whole texts), or a number in (0, 1) in this project's convention (the `mia_min_k_auc`
        of a retain model's summary). None: the preset's.
    truncate_rows: keep only the first N rows of every split (quick runs); None keeps all.
    """

    batch_size: int = 8
    preset: str | None = None
    icl_shots: int | None = None
    knowmem_max_new_tokens: int = 32
    verbmem_max_new_tokens: int = 128
    scale_100: bool | None = None
    rouge_stemming: bool | None = None
    verbmem_reference_tokens: int | None = None
    max_length: int | None = None
    reference_auc: float | str | None = None
    truncate_rows: int | None = None
    label_mode: str | None = None
    sets: tuple[str, ...] = MUSE_SETS
    min_k: float = mia.DEFAULT_MIN_K

    def __post_init__(self):
        self.sets = tuple(self.sets)
        if unknown := [s for s in self.sets if s not in MUSE_SETS]:
            raise ValueError(f"MuseEvalOptions.sets: unknown {unknown}; choose from {MUSE_SETS}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"MuseEvalOptions.preset must be null (this project's defaults) or one of {PRESETS}")
        if min(self.batch_size, self.knowmem_max_new_tokens, self.verbmem_max_new_tokens) < 1:
            raise ValueError("MuseEvalOptions: batch_size and the max_new_tokens must be at least 1")
        for name in ("max_length", "verbmem_reference_tokens", "truncate_rows"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"MuseEvalOptions.{name} must be null or a whole number >= 1, not {value!r}")
        for name in ("scale_100", "rouge_stemming"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"MuseEvalOptions.{name} must be true, false or null (the preset's)")
        if self.icl_shots is not None and self.icl_shots < 0:
            raise ValueError("MuseEvalOptions.icl_shots must be None or >= 0")
        if self.label_mode is not None and self.label_mode not in LABEL_MODES:
            raise ValueError(f"MuseEvalOptions.label_mode must be None or one of {LABEL_MODES}")
        if not 0.0 < self.min_k <= 1.0:
            raise ValueError(f"MuseEvalOptions.min_k must be in (0, 1], not {self.min_k}")
        self._check_reference_auc()

    def _check_reference_auc(self) -> None:
        value = self.reference_auc
        if value is None:
            value = self._preset_values()["reference_auc"]
        if isinstance(value, str):
            choices = (REFERENCE_FROM_LOG, *MUSE_RETAIN_AUC)
            if value not in choices:
                raise ValueError(f"MuseEvalOptions.reference_auc must be a number in (0, 1) or one of {choices}")
            if value in MUSE_RETAIN_AUC and (self.min_k != MUSE_RETAIN_MIN_K or self.max_length is not None):
                raise ValueError(
                    f"MuseEvalOptions.reference_auc={value!r} is MUSE's Min-40% AUC on whole texts: it needs "
                    f"min_k: {MUSE_RETAIN_MIN_K} and max_length: null (got min_k={self.min_k}, "
                    f"max_length={self.max_length}); or give reference_auc: {REFERENCE_FROM_LOG}"
                )
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
            raise ValueError(
                f"MuseEvalOptions.reference_auc must be a number in (0, 1) (privleak is undefined at 1), not {value!r}"
            )

    def _preset_values(self) -> dict:
        if self.preset == "muse":
            return {
                "scale_100": True,
                "rouge_stemming": False,
                "verbmem_reference_tokens": self.verbmem_max_new_tokens,
                "reference_auc": "muse_news",
            }
        return {
            "scale_100": False,
            "rouge_stemming": True,
            "verbmem_reference_tokens": None,
            "reference_auc": REFERENCE_FROM_LOG,
        }

    def resolved(self) -> MuseEvalOptions:
        """A copy with every preset-dependent field left at None filled in from the preset (idempotent)."""
        values = self._preset_values()
        return replace(self, **{name: values[name] for name in PRESET_FIELDS if getattr(self, name) is None})

    def fixed_reference_auc(self) -> float | None:
        """The retain model's Min-K% AUC (this project's convention) when it is fixed; None when it comes from the
        reference log."""
        value = self.resolved().reference_auc
        if value == REFERENCE_FROM_LOG:
            return None
        if value in MUSE_RETAIN_AUC:
            return 1.0 - MUSE_RETAIN_AUC[value]
        return float(value)

"""The one explicit registry of unlearning methods: name -> (config class, trainer class)."""

from __future__ import annotations

from typing import NamedTuple

from .base import UnlearnConfig, UnlearningTrainer
from .grad_ascent import GAConfig, GATrainer, GradDiffConfig, GradDiffTrainer
from .idk import IdkConfig, IdkTrainer
from .mox import MOXConfig, MOXTrainer
from .npo import NPOConfig, NPOTrainer, SimNPOConfig, SimNPOTrainer
from .sfron import SFROnConfig, SFROnTrainer
from .surgery import EUPMUConfig, EUPMUTrainer, PCGradConfig, PCGradTrainer, UnGradConfig, UnGradTrainer
from .task_vector import TaskVectorConfig, TaskVectorTrainer


class Method(NamedTuple):
    config: type[UnlearnConfig]
    trainer: type[UnlearningTrainer]
    summary: str


METHODS: dict[str, Method] = {
    "mox": Method(MOXConfig, MOXTrainer, "memorize the forget set under a retain KL, then extrapolate through θ_ref"),
    "ga": Method(GAConfig, GATrainer, "gradient ascent on the forget NLL"),
    "grad_diff": Method(GradDiffConfig, GradDiffTrainer, "gradient ascent on forget + retain NLL or KL"),
    "npo": Method(NPOConfig, NPOTrainer, "negative preference optimization + retain term"),
    "simnpo": Method(SimNPOConfig, SimNPOTrainer, "reference-free, length-normalized NPO + retain term"),
    "idk": Method(IdkConfig, IdkTrainer, "learn refusal answers on forget questions + retain NLL"),
    "task_vector": Method(TaskVectorConfig, TaskVectorTrainer, "fine-tune on forget, then negate the task vector"),
    "eupmu": Method(EUPMUConfig, EUPMUTrainer, "bounded forget loss + λ·retain loss, λ by dual ascent"),
    "ungrad": Method(UnGradConfig, UnGradTrainer, "unilateral gradient surgery: g_f + λ*·g_r"),
    "pcgrad": Method(PCGradConfig, PCGradTrainer, "PCGrad projection of conflicting forget/retain gradients"),
    "sfron": Method(SFROnConfig, SFROnTrainer, "Fisher-saliency-masked weighted ascent steps between retain steps"),
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}") from None

"""The one explicit registry of unlearning methods: name -> (config class, trainer class)."""

from __future__ import annotations

from typing import NamedTuple

from .base import UnlearnConfig, UnlearningTrainer
from .ce_u import CEUConfig, CEUTrainer
from .grad_ascent import GAConfig, GATrainer, GradDiffConfig, GradDiffTrainer
from .idk import IdkConfig, IdkTrainer
from .idk_dpo import IdkDPOConfig, IdkDPOTrainer
from .mox import MOXConfig, MOXTrainer
from .npo import NPOConfig, NPOTrainer, SimNPOConfig, SimNPOTrainer
from .pdu import PDUConfig, PDUTrainer
from .rmu import RMUConfig, RMUTrainer
from .satimp import SatImpConfig, SatImpTrainer
from .sfron import SFROnConfig, SFROnTrainer
from .surgery import EUPMUConfig, EUPMUTrainer, PCGradConfig, PCGradTrainer, UnGradConfig, UnGradTrainer
from .task_vector import TaskVectorConfig, TaskVectorTrainer
from .undial import UndialConfig, UndialTrainer
from .wga import WGAConfig, WGATrainer


class Method(NamedTuple):
    """A registered method: its config and its trainer, which carries everything else the toolkit reads about it
    (family, summary, tags, paper, exports; the config carries `provenance()`)."""

    config: type[UnlearnConfig]
    trainer: type[UnlearningTrainer]


# Registry order is the order of `llm-unlearn methods` and of the benchmark tables' rows.
METHODS: dict[str, Method] = {
    "mox": Method(MOXConfig, MOXTrainer),
    "ga": Method(GAConfig, GATrainer),
    "grad_diff": Method(GradDiffConfig, GradDiffTrainer),
    "npo": Method(NPOConfig, NPOTrainer),
    "simnpo": Method(SimNPOConfig, SimNPOTrainer),
    "idk": Method(IdkConfig, IdkTrainer),
    "task_vector": Method(TaskVectorConfig, TaskVectorTrainer),
    "eupmu": Method(EUPMUConfig, EUPMUTrainer),
    "ungrad": Method(UnGradConfig, UnGradTrainer),
    "pcgrad": Method(PCGradConfig, PCGradTrainer),
    "sfron": Method(SFROnConfig, SFROnTrainer),
    "idk_dpo": Method(IdkDPOConfig, IdkDPOTrainer),
    "undial": Method(UndialConfig, UndialTrainer),
    "wga": Method(WGAConfig, WGATrainer),
    "satimp": Method(SatImpConfig, SatImpTrainer),
    "ce_u": Method(CEUConfig, CEUTrainer),
    "rmu": Method(RMUConfig, RMUTrainer),
    "pdu": Method(PDUConfig, PDUTrainer),
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}") from None

"""Run folders: no silent overwrite, resume from checkpoints, provenance in every output."""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from . import __version__
from .utils import atomic_write_json, environment_info

logger = logging.getLogger(__name__)


class RunExistsError(FileExistsError):
    pass


def check_run_dir(path: str | os.PathLike, overwrite: bool = False, resume: bool = False) -> Path:
    """Refuse what prepare_run_dir would refuse, touching nothing: a stage checks this before it loads data or
    models, and creates the folder only once its inputs have loaded."""
    path = Path(path)
    if overwrite and resume:
        raise ValueError("choose --overwrite (start again) or --resume (continue), not both")
    if path.exists() and not path.is_dir():
        raise RunExistsError(f"run folder {path} is a file; choose another output_dir")
    holds_run = path.is_dir() and any(path.iterdir())
    if holds_run and not (overwrite or resume):
        raise RunExistsError(
            f"run folder {path} already exists and is not empty. Pass --overwrite to delete it and start again, "
            "--resume to continue from its last checkpoint, or choose another output_dir."
        )
    if resume and not holds_run:
        raise FileNotFoundError(f"--resume: run folder {path} does not exist or is empty; nothing to resume")
    return path


def prepare_run_dir(path: str | os.PathLike, overwrite: bool = False, resume: bool = False) -> Path:
    """Create the run folder; an existing non-empty one is refused unless `overwrite` or `resume`."""
    path = check_run_dir(path, overwrite, resume)
    if overwrite and path.is_dir() and any(path.iterdir()):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


CHECKPOINT_STATE_FILE = "trainer_state.json"  # the Trainer writes it last; callbacks' files come after it


def last_checkpoint(path: str | os.PathLike, required_files: tuple[str, ...] = (CHECKPOINT_STATE_FILE,)) -> str | None:
    """The newest checkpoint-<step> folder holding every file in `required_files`.

    The Trainer writes checkpoints in place, not atomically: a run killed while saving leaves a newer folder
    without its trainer_state.json (or without a callback's state file, e.g. momentum.pt). Such folders are
    skipped with a warning, so --resume continues from the last complete checkpoint instead of failing.
    """
    root = Path(path)
    if not root.is_dir():
        return None
    steps = []
    for folder in root.glob("checkpoint-*"):
        suffix = folder.name.split("-", 1)[1]
        if folder.is_dir() and suffix.isdigit():
            steps.append((int(suffix), folder))
    for _, folder in sorted(steps, reverse=True):
        missing = [name for name in required_files if not (folder / name).is_file()]
        if not missing:
            return str(folder)
        logger.warning(
            "skipping incomplete checkpoint %s (missing %s; the run stopped while saving it)", folder, missing
        )
    return None


def checkpoint_files(trainer) -> tuple[str, ...]:
    """Files a checkpoint of this trainer must hold to be resumable: the Trainer's state plus each stateful
    callback's `FILE` (MOX momentum.pt, SFR-on saliency, EUPMU λ), which on_save writes after the weights."""
    extra = [cb.FILE for cb in trainer.callback_handler.callbacks if isinstance(getattr(cb, "FILE", None), str)]
    return (CHECKPOINT_STATE_FILE, *extra)


class PeakMemory:
    """Peak memory of one stage of a (possibly long-lived) process, from when this object was made.

    CUDA: the allocator's peak since reset. CPU on Linux: the resident-set high-water mark (VmHWM), reset through
    /proc/self/clear_refs, so it includes what the process already held. Elsewhere: the process's max RSS so
    far, which cannot be reset. `kind` names which of the three a number is.
    """

    def __init__(self):
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.kind = "cuda_max_allocated"
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.kind = "vm_hwm_since_reset"
        except OSError:
            self.kind = "process_max_rss_cumulative"

    def read_mb(self) -> float:
        if self.cuda:
            return round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if self.kind == "vm_hwm_since_reset":
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(rss / 1024 if sys.platform != "darwin" else rss / 2**20, 1)


class Stopwatch:
    def __init__(self):
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 2)


@dataclass
class RunInfo:
    """run_info.json: what produced a folder. Every stage writes one (finetune, unlearn and each of its exports,
    extrapolate, evaluate); the model card, the report and the benchmark read it. A field a stage has nothing for
    is null, so every file holds every key. The environment (package versions, git commit, device) is added when
    written."""

    stage: str
    base_model: str
    seed: int
    method: str | None = None
    which: str | None = None  # finetune: the target or the retain model
    memorization: str | None = None  # extrapolate: the saved memorization adapter/model
    model_path: str | None = None  # finetune: the model written; evaluate: the model evaluated
    reference_log: str | None = None
    hyperparameters: dict = field(default_factory=dict)
    # The method config's provenance() (MOX: alpha, alphas, eta; task vectors: alpha; a new method its own
    # values), written as top-level keys; alpha, alphas and eta are always written (null when unused).
    provenance: dict = field(default_factory=dict)
    base_model_revision: str | None = None
    lora: dict | None = None
    data: dict | None = None
    format: dict | None = None
    exports: dict | None = None  # unlearn/extrapolate: every folder written, {name: what it holds}
    export: dict | None = None  # inside an exported folder: which export this folder is
    runaway_steps: list | None = None
    world_size: int | None = None
    summary_metrics: dict | None = None  # evaluate
    wall_time_s: float | None = None
    peak_memory_mb: float | None = None
    peak_memory_kind: str | None = None

    def to_json(self) -> dict:
        stage_fields = {k: v for k, v in asdict(self).items() if k != "provenance"}
        provenance = {**dict.fromkeys(PROVENANCE_KEYS), **self.provenance}
        return {"toolkit_version": __version__, **environment_info(), **stage_fields, **provenance}

    def write(self, run_dir: str | os.PathLike) -> dict:
        info = self.to_json()
        atomic_write_json(Path(run_dir) / RUN_INFO_FILE, info)
        return info

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> RunInfo:
        """A run folder's run_info.json back as a RunInfo: the environment keys are dropped, and every key that
        is neither a field nor environment is the method's provenance."""
        values = json.loads((Path(run_dir) / RUN_INFO_FILE).read_text())
        names = {f.name for f in fields(cls)}
        environment = {"toolkit_version", *environment_info()}
        provenance = {k: v for k, v in values.items() if k not in names and k not in environment}
        return cls(**{k: v for k, v in values.items() if k in names and k != "provenance"}, provenance=provenance)

    @property
    def alpha(self) -> float | None:
        return self.provenance.get("alpha")


RUN_INFO_FILE = "run_info.json"
PROVENANCE_KEYS = ("alpha", "alphas", "eta")  # the model card reads α and η from every unlearn run

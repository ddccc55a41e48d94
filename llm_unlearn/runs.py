"""Run folders: no silent overwrite, resume from checkpoints, provenance in every output."""

from __future__ import annotations

import os
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

from . import __version__
from .utils import atomic_write_json, environment_info


class RunExistsError(FileExistsError):
    pass


def prepare_run_dir(path: str | os.PathLike, overwrite: bool = False, resume: bool = False) -> Path:
    """Create the run folder; an existing non-empty one is refused unless `overwrite` or `resume`."""
    path = Path(path)
    if overwrite and resume:
        raise ValueError("choose --overwrite (start again) or --resume (continue), not both")
    if path.exists() and any(path.iterdir()):
        if overwrite:
            shutil.rmtree(path)
        elif not resume:
            raise RunExistsError(
                f"run folder {path} already exists and is not empty. Pass --overwrite to delete it and start again, "
                "--resume to continue from its last checkpoint, or choose another output_dir."
            )
    elif resume:
        raise FileNotFoundError(f"--resume: run folder {path} does not exist or is empty; nothing to resume")
    path.mkdir(parents=True, exist_ok=True)
    return path


def last_checkpoint(path: str | os.PathLike) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(path)) if Path(path).is_dir() else None


def peak_memory_mb() -> float:
    """Peak memory of this process: GPU allocator peak on CUDA, else the max resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


class Stopwatch:
    def __init__(self):
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 2)


def write_run_info(run_dir: str | os.PathLike, payload: dict) -> dict:
    """run_info.json: what produced this folder (method, hyper-parameters, data hashes, seed, versions, commit)."""
    info = {"toolkit_version": __version__, **environment_info(), **payload}
    atomic_write_json(Path(run_dir) / "run_info.json", info)
    return info

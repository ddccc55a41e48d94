"""Extrapolation from a saved trained model: the MOX α sweep without training, the gathered route of the
extrapolating methods under sharded weights (FSDP / ZeRO-3), where whole copies are loaded from disk, and lazy
α folders, whose full weights are computed from θ_ref and the memorization model only when they are needed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .. import extrapolate as xp
from ..models import (
    EXTRAPOLATION_INFO,
    ModelResolutionError,
    check_model_source,
    is_adapter_dir,
    lazy_alpha_info,
    load_model,
    load_tokenizer,
    load_with_adapter,
)
from ..utils import atomic_dir

if TYPE_CHECKING:
    from ..config import ModelConfig

logger = logging.getLogger(__name__)


def export_name(index: int, alpha: float) -> str:
    """The folder of the index-th α of a run: unlearned/ for the first, alpha_<a>/ for the others."""
    return "unlearned" if index == 0 else f"alpha_{alpha:g}"


def live_extrapolation(trainer, alpha: float | None, cannot: str, gathered: str):
    """(α checked, default args.alpha; the unwrapped trained model) for an export that extrapolates in place.
    Sharded weights (FSDP / ZeRO-3) are refused, pointing at the gathered route: `cannot` names the method and
    what it does, `gathered` the model to save and how."""
    alpha = xp.check_alpha(trainer.args.alpha if alpha is None else alpha)
    if trainer.shards_parameters():
        raise ValueError(
            f"{cannot} sharded weights (FSDP / ZeRO-3) in place: save the gathered {gathered} and extrapolate it "
            "with llm_unlearn.methods.saved.extrapolate_saved, as `llm-unlearn unlearn` does (export(run_dir, "
            "model_source) takes that route)"
        )
    return alpha, trainer.accelerator.unwrap_model(trainer.model)


def load_extrapolation_pair(model_cfg: ModelConfig, memorization: str):
    """(θ_ref, θ_mem) loaded whole: for a memorization adapter (None, the adapter on its base
    model.name_or_path), else model.ref_model_path (default name_or_path) and the memorization model."""
    if is_adapter_dir(memorization):
        mem = load_with_adapter(
            model_cfg.name_or_path, memorization, dtype=model_cfg.dtype, quantization=model_cfg.quantization
        )
        return None, mem
    ref = load_model(model_cfg.ref_model_path or model_cfg.name_or_path, dtype=model_cfg.dtype)
    return ref, load_model(memorization, dtype=model_cfg.dtype)


def write_alpha(ref, mem, alpha: float, out: Path, tokenizer, merged: bool, fmt: xp.WeightsFormat, extra_files=None):
    """One α written in full from a loaded pair (ref None: mem is an adapter, saved as an adapter or `merged`)."""
    if ref is None and not merged:
        xp.save_extrapolated_adapter(mem, alpha, out)
        tokenizer.save_pretrained(out)
        return {"alpha": alpha, "kind": "adapter"}
    if ref is None:
        xp.save_merged_extrapolation(mem, alpha, out, tokenizer, fmt, extra_files)
    else:
        xp.save_extrapolated_model(ref, mem, alpha, out, tokenizer, fmt, extra_files)
    return {"alpha": alpha, "kind": "model"}


def extrapolate_saved(
    model_cfg: ModelConfig,
    memorization: str,
    alphas: list[float],
    run_dir: Path,
    tokenizer,
    merged: bool = False,
    fmt: xp.WeightsFormat = xp.WeightsFormat(),
) -> dict:
    """Extrapolate a saved memorization adapter (or full model) for every α: <run_dir>/unlearned is the first α,
    <run_dir>/alpha_<a> the others. Loads whole copies on this process (the gathered path under FSDP/ZeRO-3).
    θ_ref is model.ref_model_path (default name_or_path) for full weights, the adapter's base for LoRA;
    `merged` writes an adapter's extrapolation as plain merged weights (MOX export_mode 'merged'). Full weights
    beyond the first α are lazy folders (write_lazy_alpha); adapters are written for every α (a few MB each)."""
    ref, mem = load_extrapolation_pair(model_cfg, memorization)
    exports = {"unlearned": write_alpha(ref, mem, alphas[0], Path(run_dir) / "unlearned", tokenizer, merged, fmt)}
    dtype = fmt.torch_dtype(ref if ref is not None else mem.get_base_model())
    for i, alpha in enumerate(alphas[1:], start=1):
        out = Path(run_dir) / export_name(i, alpha)
        if ref is None and not merged:
            exports[out.name] = write_alpha(ref, mem, alpha, out, tokenizer, merged, fmt)
        else:
            exports[out.name] = write_lazy_alpha(out, alpha, model_cfg, memorization, ref is None, dtype, fmt)
    return exports


# --- lazy α ------------------------------------------------------------------------------------------------


def write_lazy_alpha(
    out: Path,
    alpha: float,
    model_cfg: ModelConfig,
    memorization: str | os.PathLike,
    merged: bool,
    dtype: torch.dtype,
    fmt: xp.WeightsFormat,
) -> dict:
    """A lazy α folder: extrapolation.json naming α, θ_ref's source (and the dtype it was loaded in), the
    memorization model and the export format, with "materialized": false; no weights. materialize_alpha writes
    them, bit for bit what the eager export would have written."""
    reference = model_cfg.name_or_path if merged else (model_cfg.ref_model_path or model_cfg.name_or_path)
    info = {
        "alpha": xp.check_alpha(alpha),
        "mode": "lora_merged" if merged else "full",
        "materialized": False,
        "reference": _portable_source(reference),
        "model_dtype": model_cfg.dtype,
        "memorization": _path_from(Path(out), Path(memorization)),
        "dtype": xp.dtype_name(dtype),
        "max_shard_size": fmt.max_shard_size,
        "materialize_with": f"llm-unlearn materialize {out}",
    }
    atomic_dir(out, lambda folder: (folder / EXTRAPOLATION_INFO).write_text(json.dumps(info, indent=2, sort_keys=True)))
    return {"alpha": info["alpha"], "kind": "model", "lazy": True}


def _portable_source(name_or_path: str) -> str:
    """A local folder as an absolute path (a lazy folder is read from any working directory); names and Hub ids as
    given."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.is_dir() else name_or_path


def _path_from(folder: Path, target: Path) -> str:
    """`target` relative to `folder` when both lie in one run folder (it can then move as a whole), else absolute."""
    folder, target = folder.resolve(), target.resolve()
    if target.is_relative_to(folder.parent):
        return os.path.relpath(target, folder)
    return str(target)


def check_lazy_alpha(folder: str | os.PathLike) -> tuple[dict, Path]:
    """(extrapolation.json, the memorization folder) of a lazy α folder whose inputs are all there; else an
    ExtrapolationError that names the missing one. Evaluation checks this before any data loads."""
    folder = Path(folder)
    info = lazy_alpha_info(folder)
    if info is None:
        raise xp.ExtrapolationError(
            f"{folder} is not a lazy α folder (its {EXTRAPOLATION_INFO} has no materialized: false)"
        )
    memorization = folder / info["memorization"]
    if not memorization.is_dir():
        raise xp.ExtrapolationError(
            f"{folder} is a lazy α whose memorization model {memorization} is missing: restore that folder (or "
            "extrapolate this α again with the extrapolate stage and extrapolate.memorization)"
        )
    try:
        check_model_source(info["reference"])
    except ModelResolutionError as err:
        raise xp.ExtrapolationError(
            f"{folder} is a lazy α whose reference model cannot be loaded ({err}): make {info['reference']} "
            "available again; the weights are computed from it and the memorization model"
        ) from None
    return info, memorization


def materialize_alpha(folder: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Write the full weights of the lazy α folder `folder` into `out_dir` (default: in place, atomically),
    with the files the folder holds (run_info.json, marked no longer lazy). Returns the written folder."""
    folder = Path(folder)
    info, memorization = check_lazy_alpha(folder)
    from ..config import ModelConfig

    model_cfg = ModelConfig(name_or_path=info["reference"], lora=None, dtype=info["model_dtype"])
    ref, mem = load_extrapolation_pair(model_cfg, str(memorization))
    has_tokenizer = (memorization / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(str(memorization) if has_tokenizer else info["reference"])
    fmt = xp.WeightsFormat(info["dtype"], info["max_shard_size"])
    out = Path(out_dir) if out_dir is not None else folder
    write_alpha(ref, mem, info["alpha"], out, tokenizer, ref is None, fmt, _carried_files(folder))
    logger.info("materialized α = %g into %s", info["alpha"], out)
    return out


def _carried_files(folder: Path) -> dict[str, bytes]:
    """The lazy folder's own files (run_info.json, a model card) for the materialized one; run_info.json's
    export entry no longer says lazy."""
    files = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name == EXTRAPOLATION_INFO:
            continue
        data = path.read_bytes()
        if path.name == "run_info.json":
            run_info = json.loads(data)
            if isinstance(run_info.get("export"), dict):
                run_info["export"] = {**run_info["export"], "lazy": False}
            data = (json.dumps(run_info, indent=2, sort_keys=True, default=str) + "\n").encode()
        files[path.name] = data
    return files


@contextmanager
def materialized_copy(folder: str | os.PathLike) -> Iterator[Path]:
    """A lazy α materialized into a temporary folder beside it, deleted on exit (evaluation loads it and keeps
    nothing on disk)."""
    folder = Path(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.materialized-", dir=folder.parent))
    try:
        yield materialize_alpha(folder, staging / folder.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

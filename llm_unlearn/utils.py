"""Small shared utilities: atomic writes and run provenance (seed, versions, git commit)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

PROVENANCE_PACKAGES = ("llm_unlearn", "torch", "transformers", "peft", "accelerate", "datasets", "evaluate")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a unique temp file in the same folder, then os.replace: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; outputs are ordinary readable files
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_json(path: str | os.PathLike, payload) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def atomic_dir(out_dir: str | os.PathLike, write) -> Path:
    """Build a folder under a temporary name with `write(folder)`, then rename it into place."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes it private; outputs are ordinary folders
    try:
        write(staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def package_versions(names=PROVENANCE_PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the toolkit's checkout (None when not run from a git checkout)."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True
    )
    return commit + ("-dirty" if dirty.stdout.strip() else "")


def environment_info() -> dict:
    import torch

    device = "cpu"
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    return {
        "versions": package_versions(),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "cpu_count": os.cpu_count(),
    }

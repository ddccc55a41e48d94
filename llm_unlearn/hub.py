"""Share a run folder on the Hugging Face Hub with its generated model card (docs/design.md, Sharing on the Hub).

`push_run` checks the folder holds an adapter or model weights, writes README.md (the model card, built from
the run's own files), then creates the repo and uploads the model files in one commit. Checkpoints, optimizer
state and anything else the run left beside its final model stay local. On any failure it raises
`HubPushError` with the exact command to retry; the run folder is never changed beyond README.md, except that a
lazy MOX α folder is first materialized in place (its full weights written, atomically).

Tests point `endpoint` at a local fake Hub (tests/hub_server.py); nothing here assumes huggingface.co.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from llm_unlearn.model_card import ADAPTER_CONFIG, CARD_NAME, EVAL_SUMMARY, RUN_INFO, load_run_info, write_model_card
from llm_unlearn.models import is_lazy_alpha_dir

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
FULL_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
MODEL_CONFIGS = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)


class HubPushError(RuntimeError):
    """The push failed after the folder was checked; the message says the local folder is intact and how to retry."""


class InvalidRunFolderError(ValueError):
    """The folder cannot be pushed (no weights, no run_info.json); raised before any network call."""


@dataclass(frozen=True)
class RunFolder:
    path: Path
    is_adapter: bool
    files: tuple[str, ...]  # paths relative to `path` that a push uploads (README.md is added once written)


def _shards(run_dir: Path, index_name: str) -> list[str]:
    index_path = run_dir / index_name
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise InvalidRunFolderError(f"{index_path}: expected a JSON object with a 'weight_map' ({err})") from err
    shards = sorted(set(weight_map.values()))
    missing = [name for name in shards if not (run_dir / name).is_file()]
    if missing:
        raise InvalidRunFolderError(f"{index_path} lists shards that are missing from {run_dir}: {', '.join(missing)}")
    return shards


def _check_run_info(run_dir: Path) -> None:
    if not (run_dir / RUN_INFO).is_file():
        beside = run_dir.parent / RUN_INFO
        hint = (
            f" ({beside} exists one level up: if it describes exactly this model, copy it here)"
            if beside.is_file()
            else ""
        )
        raise InvalidRunFolderError(
            f"{run_dir} has no {RUN_INFO}: the model card is built from it, so a push needs it{hint}"
        )


def inspect_run_folder(run_dir: str | os.PathLike) -> RunFolder:
    """Check that `run_dir` holds an adapter or full weights plus run_info.json; list the files to push."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InvalidRunFolderError(f"{run_dir} is not a folder: pass the folder the run saved its model into")
    present = {name for name in os.listdir(run_dir) if (run_dir / name).is_file()}
    weights: list[str] = []
    is_adapter = ADAPTER_CONFIG in present
    if is_adapter:
        weights = [name for name in ADAPTER_WEIGHTS if name in present]
        if not weights:
            raise InvalidRunFolderError(
                f"{run_dir} has {ADAPTER_CONFIG} but no adapter weights: expected {' or '.join(ADAPTER_WEIGHTS)}"
            )
    full = [name for name in FULL_WEIGHTS if name in present]
    for index_name in SHARD_INDEXES:
        if index_name in present:
            full += [index_name, *_shards(run_dir, index_name)]
    if full and "config.json" not in present:
        raise InvalidRunFolderError(f"{run_dir} has model weights ({', '.join(full)}) but no config.json to load them")
    weights += full
    if not weights:
        checkpoints = sorted(name for name in os.listdir(run_dir) if name.startswith("checkpoint-"))
        hint = f" (checkpoints such as {checkpoints[0]} are never pushed)" if checkpoints else ""
        raise InvalidRunFolderError(
            f"{run_dir} holds no model weights{hint}: expected an adapter ({ADAPTER_CONFIG} + "
            f"{' or '.join(ADAPTER_WEIGHTS)}) or full weights (config.json + {', '.join(FULL_WEIGHTS + SHARD_INDEXES)}). "
            f"Found: {', '.join(sorted(present)) or 'no files'}."
        )
    _check_run_info(run_dir)
    extras = [name for name in (ADAPTER_CONFIG, *MODEL_CONFIGS, *TOKENIZER_FILES, RUN_INFO) if name in present]
    if (run_dir / EVAL_SUMMARY).is_file():
        extras.append(EVAL_SUMMARY)
    return RunFolder(path=run_dir, is_adapter=is_adapter, files=tuple(dict.fromkeys(weights + extras)))


def retry_command(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    endpoint: str | None = None,
    revision: str | None = None,
) -> str:
    """The CLI command that repeats this push (never includes the token: it is read from HF_TOKEN or the login)."""
    parts = ["llm-unlearn", "push", str(Path(run_dir).absolute()), "--repo-id", repo_id]
    if private:
        parts.append("--private")
    if endpoint:
        parts += ["--endpoint", endpoint]
    if revision:
        parts += ["--revision", revision]
    return shlex.join(parts)


def _is_transport_error(err: BaseException) -> bool:
    """Connection refused, DNS, TLS or timeout errors from huggingface_hub's HTTP client (httpx2)."""
    try:
        import httpx2
    except ImportError:  # another huggingface_hub release may use another client
        return type(err).__module__.split(".")[0].startswith("httpx") and "Error" in type(err).__name__
    return isinstance(err, httpx2.TransportError)


def _failure_hint(err: BaseException, endpoint: str) -> str:
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        return "Check that the token (HF_TOKEN or `hf auth login`) has write access to this namespace."
    if status == 404:
        return "Check the repo id and that the token may write to it."
    if isinstance(status, int) and status >= 500:
        return f"{endpoint} answered a server error; retry later."
    if _is_transport_error(err):
        return f"Could not reach {endpoint}: check the network connection and the endpoint URL."
    return ""


def _failure_message(run_dir: Path, repo_id: str, endpoint: str, err: BaseException, retry: str) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    detail = "\n    ".join(lines[:4]) or "(no message)"
    hint = _failure_hint(err, endpoint)
    return (
        f"Pushing {run_dir.absolute()} to {repo_id} on {endpoint} failed: {type(err).__name__}: {detail}\n"
        + (f"{hint}\n" if hint else "")
        + f"The local folder {run_dir.absolute()} is intact (only {CARD_NAME}, the model card, was written).\n"
        f"Retry with: {retry}"
    )


def push_run(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Push the adapter or model in `run_dir` to `repo_id` with a generated model card; return the commit URL.

    `private=True` creates the repo private; False leaves the Hub's default (an existing repo keeps its
    visibility either way). `token` defaults to HF_TOKEN or the saved login; `endpoint` to HF_ENDPOINT or
    huggingface.co; `revision` (an existing branch) to main. Raises InvalidRunFolderError (before any network
    call) when the folder cannot be pushed, RunInfoError when its run files are malformed, and HubPushError when
    the Hub cannot be reached or refuses the push.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    run_dir = Path(run_dir)
    if is_lazy_alpha_dir(run_dir):
        from llm_unlearn.methods.saved import materialize_alpha

        _check_run_info(run_dir)  # before minutes of materializing
        materialize_alpha(run_dir)
    folder = inspect_run_folder(run_dir)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"repo_id {repo_id!r} is not a Hub repo id (expected 'namespace/name'): {err}") from err
    info = load_run_info(run_dir)
    write_model_card(run_dir, repo_id=repo_id)
    files = [*folder.files, CARD_NAME]
    retry = retry_command(run_dir, repo_id, private=private, endpoint=endpoint, revision=revision)
    api = HfApi(endpoint=endpoint, token=token)
    if constants.is_offline_mode():
        # huggingface_hub refuses every request in offline mode, a local endpoint included.
        raise HubPushError(
            f"Cannot push {run_dir.absolute()} to {repo_id}: HF_HUB_OFFLINE is set, so huggingface_hub makes no "
            f"request (not even to a local endpoint). The local folder is intact (only {CARD_NAME} was written).\n"
            f"Retry with: HF_HUB_OFFLINE=0 {retry}"
        )
    message = commit_message or f"Upload {info['method']} unlearning run (llm_unlearn {info['toolkit_version']})"
    try:
        api.create_repo(repo_id, private=True if private else None, repo_type="model", exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=run_dir,
            allow_patterns=files,  # exact names: nothing outside the model's own files is uploaded
            repo_type="model",
            revision=revision,
            commit_message=message,
        )
    except Exception as err:  # network, auth, server or protocol errors all mean the same thing to the user
        raise HubPushError(_failure_message(run_dir, repo_id, api.endpoint, err, retry)) from err
    return commit.commit_url

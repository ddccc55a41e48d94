"""Reliability on the tiny model: SIGKILL + --resume, atomic outputs, no silent overwrite, NaN/inf guards,
GA runaway reporting, and same seed -> same numbers with provenance in every run_info.json."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from reliability_setup import run_config, save_tiny_model, write_yaml  # noqa: E402

from llm_unlearn import cli, stages  # noqa: E402
from llm_unlearn.runs import RunExistsError  # noqa: E402
from llm_unlearn.stages.loading import save_model_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"))


def read_json(path: Path):
    return json.loads(path.read_text())


def step_rows(run: Path) -> dict[int, dict]:
    """train_log.json rows that carry loss terms, by step (the final summary row has no 'loss')."""
    return {row["step"]: row for row in read_json(run / "train_log.json") if "loss" in row}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


# --- 2. interruption -----------------------------------------------------------------------------------------


def test_sigkill_mid_training_then_resume_equals_uninterrupted_run(model_dir, tmp_path, caplog):
    """MOX with momentum over LoRA, checkpoints every 2 of 6 steps. 3 forget rows at batch 1 make 3 steps per
    epoch, so checkpoints 2 and 4 fall mid-epoch: the resumed run must restore the sampler position, the
    PairedDataset's retain cycle, optimizer/scheduler/RNG state and the momentum buffer."""
    config = run_config(
        model_dir,
        tmp_path / "unset",
        "mox",
        max_steps=6,
        save_strategy="steps",
        save_steps=2,
        momentum=True,
        momentum_refresh="steps",
        alpha=2.0,
    )
    config["data"]["qa_per_author"] = 3
    yaml_path = write_yaml(tmp_path / "mox.yaml", config)
    reference, killed = tmp_path / "reference", tmp_path / "killed"

    assert cli.main(["unlearn", str(yaml_path), f"training.output_dir={reference}"]) == 0

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "llm_unlearn.cli", "unlearn", str(yaml_path), f"training.output_dir={killed}"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    complete = [killed / f"checkpoint-{step}" / "momentum.pt" for step in (2, 4)]  # written last in a checkpoint
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if any(path.exists() for path in complete):
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    assert not (killed / "run_info.json").exists() and not (killed / "unlearned").exists()  # really cut short

    # A kill while saving leaves a newer folder without trainer_state.json; resume must skip it.
    partial = killed / "checkpoint-6"
    if not partial.exists():
        partial.mkdir()
        (partial / "adapter_model.safetensors").write_bytes(b"cut short")
    with caplog.at_level(logging.WARNING, logger="llm_unlearn.runs"):
        assert cli.main(["unlearn", str(yaml_path), f"training.output_dir={killed}", "--resume"]) == 0
    assert any(
        "skipping incomplete checkpoint" in r.getMessage() and "checkpoint-6" in r.getMessage() for r in caplog.records
    )

    assert_same_tensors(
        load_file(reference / "unlearned" / "model.safetensors"), load_file(killed / "unlearned" / "model.safetensors")
    )
    ours = torch.load(killed / "checkpoint-6" / "momentum.pt", weights_only=True)
    theirs = torch.load(reference / "checkpoint-6" / "momentum.pt", weights_only=True)
    assert ours["refreshes"] == theirs["refreshes"] == 6
    assert_same_tensors(ours["buffer"], theirs["buffer"])
    reference_rows, resumed_rows = step_rows(reference), step_rows(killed)
    assert sorted(reference_rows) == sorted(resumed_rows) == [1, 2, 3, 4, 5, 6]
    for step, row in reference_rows.items():
        for term in ("loss", "forget_nll", "retain_kl", "grad_norm"):
            assert resumed_rows[step][term] == pytest.approx(row[term], abs=1e-5), (step, term)
    assert read_json(killed / "run_info.json")["exports"] == read_json(reference / "run_info.json")["exports"]


def _partial_then_fail(path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"half a file")
    raise OSError(28, "No space left on device")


def test_failed_export_leaves_no_complete_looking_output_and_resume_recovers(model_dir, tmp_path, monkeypatch):
    """GA over LoRA exports through Trainer.save_model; make the export's write die halfway."""
    from transformers import Trainer

    run = tmp_path / "ga"
    config = run_config(model_dir, run, "ga", save_strategy="steps", save_steps=2)
    real_save = Trainer._save

    def failing_save(self, output_dir=None, state_dict=None):
        if Path(output_dir).name.startswith("checkpoint-"):  # checkpoints save normally; the export fails
            return real_save(self, output_dir, state_dict)
        _partial_then_fail(Path(output_dir) / "adapter_model.safetensors")

    monkeypatch.setattr(Trainer, "_save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        stages.run_unlearn(stages.parse_config(config), stages.RunOptions())
    left = sorted(p.name for p in run.iterdir())
    assert left == ["checkpoint-2"], left  # no unlearned/, no staging folder, no run_info.json
    monkeypatch.setattr(Trainer, "_save", real_save)

    stages.run_unlearn(stages.parse_config(config), stages.RunOptions(resume=True))
    assert (run / "unlearned" / "adapter_model.safetensors").is_file()
    assert read_json(run / "run_info.json")["stage"] == "unlearn"


def test_atomic_writers_leave_nothing_half_written(model_dir, tmp_path, monkeypatch, tokenizer):
    import safetensors.torch

    from llm_unlearn import extrapolate as xp
    from llm_unlearn.models import LoraSettings, load_model, wrap_lora
    from llm_unlearn.utils import atomic_write_json

    def listing() -> list[str]:
        return sorted(p.name for p in tmp_path.iterdir() if p.name != "keep.json")

    # MOX adapter export (extrapolate.atomic_dir): the safetensors write dies halfway.
    peft_model = wrap_lora(load_model(str(model_dir)), LoraSettings(r=4))
    monkeypatch.setattr(safetensors.torch, "save_file", lambda state, path, metadata=None: _partial_then_fail(path))
    with pytest.raises(OSError):
        xp.save_extrapolated_adapter(peft_model, 2.0, tmp_path / "unlearned")
    assert listing() == []

    # Finetune model folder (save_model_folder): save_pretrained dies halfway.
    model = load_model(str(model_dir))
    monkeypatch.setattr(
        model, "save_pretrained", lambda folder, **_: _partial_then_fail(Path(folder) / "model.safetensors")
    )
    with pytest.raises(OSError):
        save_model_folder(model, tokenizer, tmp_path / "model")
    assert listing() == []

    # JSON outputs: an existing file keeps its old content when a rewrite fails before the rename.
    atomic_write_json(tmp_path / "keep.json", {"version": 1})
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        atomic_write_json(tmp_path / "keep.json", {"version": 2})
    assert read_json(tmp_path / "keep.json") == {"version": 1}
    assert listing() == []


# --- 3. no silent overwrite ----------------------------------------------------------------------------------


def test_existing_run_is_refused_unless_overwrite_or_resume_and_overwrite_starts_fresh(model_dir, tmp_path):
    run = tmp_path / "run"
    yaml_path = write_yaml(tmp_path / "ga.yaml", run_config(model_dir, run, "ga", save_strategy="steps", save_steps=1))
    assert cli.main(["unlearn", str(yaml_path)]) == 0
    assert sorted(step_rows(run)) == [1, 2] and (run / "checkpoint-2").is_dir()
    (run / "stale.txt").write_text("from an older run")

    with pytest.raises(RunExistsError, match="--overwrite"):
        cli.main(["--verbose", "unlearn", str(yaml_path)])
    assert cli.main(["unlearn", str(yaml_path)]) == 1  # without --verbose: one error line, exit status 1
    assert (run / "stale.txt").is_file() and sorted(step_rows(run)) == [1, 2]  # untouched
    with pytest.raises(SystemExit) as both:
        cli.main(["unlearn", str(yaml_path), "--overwrite", "--resume"])
    assert both.value.code == 2

    assert cli.main(["unlearn", str(yaml_path), "training.max_steps=1", "--overwrite"]) == 0
    assert not (run / "stale.txt").exists() and not (run / "checkpoint-2").exists()  # the old folder is gone
    assert sorted(step_rows(run)) == [1]
    assert read_json(run / "run_info.json")["hyperparameters"]["max_steps"] == 1

    # An evaluation folder is protected the same way.
    eval_args = ["evaluate", str(yaml_path), f"evaluation.model_path={run / 'unlearned'}"]
    (run / "eval").mkdir()
    (run / "eval" / "summary.json").write_text("{}")
    with pytest.raises(RunExistsError):
        cli.main(["--verbose", *eval_args])


# --- 4. numerical faults -------------------------------------------------------------------------------------


def _ga_trainer(tokenizer, output_dir: Path):
    from helpers import make_trainer

    from llm_unlearn.models import LoraSettings, tiny_llama, wrap_lora

    model = wrap_lora(tiny_llama(len(tokenizer), seed=0), LoraSettings(r=4))
    # 4 forget rows at batch 2: 2 steps per epoch; a checkpoint after every step.
    return make_trainer("ga", model, tokenizer, output_dir, max_steps=5, save_strategy="steps", save_steps=1)


def _adapter_state(trainer) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(trainer.model).items()}


def test_nan_loss_at_step_3_stops_with_step_term_and_last_good_checkpoint(tokenizer, tmp_path):
    from llm_unlearn.methods.base import NonFiniteLossError

    trainer = _ga_trainer(tokenizer, tmp_path)
    lm_head = trainer.model.get_base_model().lm_head
    lm_head.register_forward_hook(lambda module, args, out: out * math.nan if trainer.state.global_step == 2 else None)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    message = str(info.value)
    assert "step 2: loss term 'forget_nll' = nan is not finite (while computing update 3" in message
    assert f"Last good checkpoint: {tmp_path / 'checkpoint-2'}." in message
    # Raised before the backward pass: the weights are still those of checkpoint-2.
    saved = load_file(tmp_path / "checkpoint-2" / "adapter_model.safetensors")
    assert_same_tensors({k: v for k, v in _adapter_state(trainer).items()}, saved, atol=0)


def test_inf_gradient_stops_before_the_optimizer_step(tokenizer, tmp_path):
    from llm_unlearn.methods.base import NonFiniteLossError

    trainer = _ga_trainer(tokenizer, tmp_path)
    name, param = next((n, p) for n, p in trainer.model.named_parameters() if "lora_B" in n)
    param.register_hook(lambda grad: torch.full_like(grad, math.inf) if trainer.state.global_step == 2 else grad)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    message = str(info.value)
    assert f"step 2: gradient of {name} is not finite" in message
    assert f"Last good checkpoint: {tmp_path / 'checkpoint-2'}." in message
    saved = load_file(tmp_path / "checkpoint-2" / "adapter_model.safetensors")
    assert_same_tensors(_adapter_state(trainer), saved, atol=0)


def test_ga_runaway_is_logged_and_recorded_in_run_info(model_dir, tmp_path, caplog):
    """GA at lr 1e-2 pushes the tiny model's forget NLL from 10.77 past 10.95 by step 3 (of 4)."""
    bound = 10.95
    run = tmp_path / "ga"
    config = run_config(model_dir, run, "ga", learning_rate=1e-2, max_steps=4, forget_nll_bound=bound)
    with caplog.at_level(logging.WARNING, logger="llm_unlearn.methods.base"):
        stages.run_unlearn(stages.parse_config(config), stages.RunOptions())
    above = [step for step, row in sorted(step_rows(run).items()) if row["forget_nll"] > bound]
    assert above and 1 not in above  # the bound is crossed during the run, not from the start
    assert read_json(run / "run_info.json")["runaway_steps"] == above
    warnings = [r.getMessage() for r in caplog.records if "forget_nll_bound" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"step {above[0]}: forget NLL")


# --- 5. reproducibility --------------------------------------------------------------------------------------


def _finetune_unlearn_evaluate(model_dir: Path, root: Path, seed: int = 0) -> dict[str, Path]:
    target = root / "target"
    finetune = run_config(model_dir, target, None, seed=seed)
    finetune["finetune"] = {"which": "target"}
    stages.run_finetune(stages.parse_config(finetune), stages.RunOptions())
    unlearn = run_config(target / "model", root / "mox", "mox", seed=seed)
    stages.run_unlearn(stages.parse_config(unlearn), stages.RunOptions())
    unlearn["evaluation"]["model_path"] = str(root / "mox" / "unlearned")
    stages.run_evaluate(stages.parse_config(unlearn), stages.RunOptions())
    return {"finetune": target, "unlearn": root / "mox", "evaluate": root / "mox" / "eval"}


def test_same_seed_same_numbers_and_provenance_everywhere(model_dir, tmp_path):
    first = _finetune_unlearn_evaluate(model_dir, tmp_path / "a")
    second = _finetune_unlearn_evaluate(model_dir, tmp_path / "b")

    summary = read_json(first["evaluate"] / "summary.json")
    assert read_json(second["evaluate"] / "summary.json")["metrics"] == summary["metrics"]
    assert read_json(second["evaluate"] / "per_sample.json") == read_json(first["evaluate"] / "per_sample.json")
    assert_same_tensors(
        load_file(first["unlearn"] / "unlearned" / "adapter_model.safetensors"),
        load_file(second["unlearn"] / "unlearned" / "adapter_model.safetensors"),
        atol=0,
    )

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    for stage, folder in first.items():
        info = read_json(folder / "run_info.json")
        assert info["stage"] == stage and info["seed"] == 0, stage
        assert info["git_commit"].removesuffix("-dirty") == head, stage
        for package in ("llm_unlearn", "torch", "transformers", "peft", "accelerate", "datasets"):
            assert info["versions"][package], (stage, package)


def test_a_different_seed_changes_the_lora_initialisation(model_dir, tmp_path):
    """The counterpart of the test above: the seed is what makes runs equal, so changing it must show."""
    states = []
    for seed in (0, 1):
        config = run_config(model_dir, tmp_path / f"seed{seed}", "mox", seed=seed, max_steps=1)
        stages.run_unlearn(stages.parse_config(config), stages.RunOptions())
        states.append(load_file(tmp_path / f"seed{seed}" / "memorization" / "adapter_model.safetensors"))
    lora_a = [k for k in states[0] if "lora_A" in k]
    assert lora_a and not any(torch.equal(states[0][k], states[1][k]) for k in lora_a)

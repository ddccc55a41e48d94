"""Full-weight exports: the dtype they are saved in, sharding through save_pretrained, and lazy α folders (written
without weights, materialized on demand for evaluation, push and `llm-unlearn materialize`).

Expected weights are the formula written out here, θ_ref + α(θ_ref − θ_mem) in fp32 (= (1+α)θ_ref − αθ_mem,
evaluated in the order that keeps α = 0 exact), then cast; never llm_unlearn.extrapolate's own output.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_trainer
from transformers import AutoModelForCausalLM

from llm_unlearn import cli
from llm_unlearn import extrapolate as xp
from llm_unlearn.config import ModelConfig
from llm_unlearn.methods.saved import extrapolate_saved, materialize_alpha
from llm_unlearn.models import (
    LoraSettings,
    ModelResolutionError,
    check_model_source,
    is_lazy_alpha_dir,
    load_model,
    tiny_llama,
    wrap_lora,
)
from llm_unlearn.stages.loading import load_for_eval

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from reliability_setup import run_config, save_tiny_model  # noqa: E402

BF16 = torch.bfloat16


def hand_extrapolated(ref: dict, mem: dict, alpha: float, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {}
    for key, r in ref.items():
        r32, m32 = r.detach().float(), mem[key].detach().float()
        out[key] = (r32 + alpha * (r32 - m32)).to(dtype)
    return out


def perturbed(model, seed: int, scale: float = 0.01):
    """A copy-free stand-in for training: every floating parameter moved by seeded noise."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model


def loaded(folder) -> dict[str, torch.Tensor]:
    """The checkpoint as from_pretrained reads it, in the dtype it was saved in."""
    return AutoModelForCausalLM.from_pretrained(folder, dtype="auto").state_dict()


def assert_equal_states(got: dict, expected: dict) -> None:
    assert set(expected) <= set(got), sorted(set(expected) - set(got))
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, (key, got[key].dtype, value.dtype)
        assert torch.equal(got[key], value), (key, float((got[key].float() - value.float()).abs().max()))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The tiny Llama saved as float32 (what its config.json declares)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_fp32"))


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory, tokenizer) -> Path:
    """The same architecture saved in bfloat16, as Llama-2 and SmolLM2 releases are."""
    folder = tmp_path_factory.mktemp("tiny_bf16")
    tiny_llama(len(tokenizer), seed=0).to(BF16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- dtype and shards ------------------------------------------------------------------------------------------


def test_export_is_cast_once_and_sharded_by_save_pretrained(tokenizer, tmp_path):
    ref = tiny_llama(len(tokenizer), seed=0)
    mem = perturbed(tiny_llama(len(tokenizer), seed=0), seed=1)
    fmt = xp.WeightsFormat("bfloat16", "50KB")  # the layers take about 200 KB in bf16, the embedding 6 MB
    out = xp.save_extrapolated_model(ref, mem, 4.0, tmp_path / "export", tokenizer, fmt)

    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 4 and all((out / name).is_file() for name in shards)
    for name in shards:  # within the limit (plus the JSON header), unless one tensor alone exceeds it
        tensors = [key for key, shard in index["weight_map"].items() if shard == name]
        assert (out / name).stat().st_size <= 50_000 + 1024 or tensors == ["model.embed_tokens.weight"], name
    assert not (out / "model.safetensors").exists()
    info = json.loads((out / "extrapolation.json").read_text())
    assert (info["dtype"], info["max_shard_size"], info["shards"]) == ("bfloat16", "50KB", len(shards))
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"

    expected = hand_extrapolated(ref.state_dict(), mem.state_dict(), 4.0, BF16)
    got = loaded(out)
    assert_equal_states(got, expected)
    # Tied embeddings stay tied: lm_head is not stored and loads as the embedding.
    assert "lm_head.weight" not in index["weight_map"]
    assert torch.equal(got["lm_head.weight"], got["model.embed_tokens.weight"])


def test_auto_dtype_is_what_the_reference_checkpoint_declares(tokenizer, model_dir, bf16_dir, tmp_path):
    # Loaded in float32 for the fp32 arithmetic, the bf16 checkpoint is still saved as bf16.
    ref = load_model(str(bf16_dir))
    assert ref.dtype == torch.float32 and xp.checkpoint_dtype(ref) == BF16
    assert xp.checkpoint_dtype(load_model(str(model_dir))) == torch.float32
    assert xp.checkpoint_dtype(tiny_llama(len(tokenizer)).to(torch.float16)) == torch.float16  # no checkpoint
    mem = perturbed(load_model(str(bf16_dir)), seed=2)
    out = xp.save_extrapolated_model(ref, mem, 2.0, tmp_path / "auto", tokenizer)
    assert_equal_states(loaded(out), hand_extrapolated(ref.state_dict(), mem.state_dict(), 2.0, BF16))
    # An explicit float32 keeps the fp32 result, and an fp32 reference exports fp32 under 'auto'.
    out = xp.save_extrapolated_model(ref, mem, 2.0, tmp_path / "fp32", tokenizer, xp.WeightsFormat("float32"))
    assert_equal_states(loaded(out), hand_extrapolated(ref.state_dict(), mem.state_dict(), 2.0, torch.float32))
    assert (out / "model.safetensors").is_file()  # under the 5GB default: one file


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"export_dtype": "bf16"}, "export_dtype must be one of auto, float32, bfloat16, float16"),
        ({"max_shard_size": "5 gigabytes"}, "max_shard_size must be a number and a unit"),
    ],
)
def test_bad_export_settings_are_refused_at_config_parsing(settings, message, tmp_path):
    from llm_unlearn.config import ConfigError, build_dataclass
    from llm_unlearn.methods import METHODS

    for method in ("mox", "task_vector"):
        values = {"output_dir": str(tmp_path), "use_cpu": True, **settings}
        with pytest.raises(ConfigError, match=message):
            build_dataclass(METHODS[method].config, values, "training")


# --- lazy α ------------------------------------------------------------------------------------------------------


def mox_run(tokenizer, source: Path, run_dir: Path, lora: bool = False, **settings):
    """A MOX trainer over `source` whose trained model is `source` plus noise, exported like the unlearn stage does
    (model_source given). Returns (trainer, exports, θ_ref state, θ_mem state as the memorization folder holds)."""
    torch.manual_seed(0)
    model = load_model(str(source))
    if lora:
        model = wrap_lora(model, LoraSettings(r=2, lora_alpha=4))
        generator = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    else:
        perturbed(model, seed=4)
    ref_model = None if lora else load_model(str(source))
    trainer = make_trainer("mox", model, tokenizer, run_dir / "checkpoints", ref_model=ref_model, **settings)
    model_cfg = ModelConfig(name_or_path=str(source), lora=LoraSettings(r=2, lora_alpha=4) if lora else None)
    exports = trainer.export(run_dir, model_source=model_cfg)
    return trainer, exports


def test_full_weight_alphas_beyond_the_first_are_lazy_and_materialize_to_the_formula(tokenizer, bf16_dir, tmp_path):
    run = tmp_path / "run"
    trainer, exports = mox_run(tokenizer, bf16_dir, run, alpha=2.0, alphas=[8.0, 0.5])
    assert exports["unlearned"]["kind"] == "model" and "lazy" not in exports["unlearned"]
    assert exports["alpha_8"] == {"alpha": 8.0, "kind": "model", "lazy": True}
    assert exports["alpha_0.5"] == {"alpha": 0.5, "kind": "model", "lazy": True}
    assert sorted(os.listdir(run / "alpha_8")) == ["extrapolation.json"]  # no weights written
    assert is_lazy_alpha_dir(run / "alpha_8") and not is_lazy_alpha_dir(run / "unlearned")

    ref = load_model(str(bf16_dir)).state_dict()
    mem = load_model(str(run / "memorization")).state_dict()
    assert_equal_states(loaded(run / "unlearned"), hand_extrapolated(ref, mem, 2.0, BF16))
    # The eager export of α = 8 from the live trainer, for comparison.
    trainer.export_unlearned(str(tmp_path / "eager_8"), alpha=8.0)
    out = materialize_alpha(run / "alpha_8")
    assert out == run / "alpha_8" and not is_lazy_alpha_dir(out)
    expected = hand_extrapolated(ref, mem, 8.0, BF16)
    assert_equal_states(loaded(out), expected)
    assert_equal_states(loaded(tmp_path / "eager_8"), expected)
    assert json.loads((out / "extrapolation.json").read_text())["dtype"] == "bfloat16"


def test_lora_merged_alphas_are_lazy_and_adapters_are_not(tokenizer, model_dir, tmp_path):
    trainer, exports = mox_run(
        tokenizer, model_dir, tmp_path / "merged", lora=True, alpha=2.0, alphas=[4.0], export_mode="merged"
    )
    assert exports["alpha_4"]["lazy"] is True
    trainer.export_unlearned(str(tmp_path / "eager_4"), alpha=4.0)
    materialize_alpha(tmp_path / "merged" / "alpha_4", tmp_path / "lazy_4")
    assert is_lazy_alpha_dir(tmp_path / "merged" / "alpha_4")  # written elsewhere: the lazy folder stays lazy
    assert_equal_states(loaded(tmp_path / "lazy_4"), loaded(tmp_path / "eager_4"))
    # Hand formula for one adapted weight: W − α·s·B·A with s = lora_alpha / r = 2.
    q_proj = "model.layers.0.self_attn.q_proj"
    module = trainer.model.get_submodule(f"base_model.model.{q_proj}")
    a, b = module.lora_A["default"].weight.detach(), module.lora_B["default"].weight.detach()
    base_w = load_model(str(model_dir)).state_dict()[f"{q_proj}.weight"]
    torch.testing.assert_close(loaded(tmp_path / "lazy_4")[f"{q_proj}.weight"], base_w - 4.0 * 2 * (b @ a))

    _, exports = mox_run(tokenizer, model_dir, tmp_path / "adapters", lora=True, alpha=2.0, alphas=[4.0])
    assert exports["alpha_4"] == {"alpha": 4.0, "momentum": False, "kind": "adapter"}
    assert (tmp_path / "adapters" / "alpha_4" / "adapter_model.safetensors").is_file()


def test_momentum_exports_every_alpha_eagerly(tokenizer, model_dir, tmp_path):
    trainer, exports = mox_run(tokenizer, model_dir, tmp_path / "run", alpha=2.0, alphas=[4.0], momentum=True)
    assert "lazy" not in exports["alpha_4"] and (tmp_path / "run" / "alpha_4" / "model.safetensors").is_file()


def test_extrapolate_saved_writes_later_alphas_lazily(tokenizer, model_dir, tmp_path):
    mem_dir = tmp_path / "memorization"
    perturbed(load_model(str(model_dir)), seed=5).save_pretrained(mem_dir)
    cfg = ModelConfig(name_or_path=str(model_dir), lora=None)
    exports = extrapolate_saved(cfg, str(mem_dir), [1.0, 2.0], tmp_path / "run", tokenizer)
    assert exports == {
        "unlearned": {"alpha": 1.0, "kind": "model"},
        "alpha_2": {"alpha": 2.0, "kind": "model", "lazy": True},
    }
    info = json.loads((tmp_path / "run" / "alpha_2" / "extrapolation.json").read_text())
    assert info["memorization"] == str(mem_dir.resolve())  # not inside the run folder: absolute
    ref, mem = load_model(str(model_dir)).state_dict(), load_model(str(mem_dir)).state_dict()
    with_weights = materialize_alpha(tmp_path / "run" / "alpha_2")
    assert_equal_states(loaded(with_weights), hand_extrapolated(ref, mem, 2.0, torch.float32))


def test_evaluation_loads_a_lazy_alpha_without_keeping_its_weights(tokenizer, bf16_dir, tmp_path):
    run = tmp_path / "run"
    mox_run(tokenizer, bf16_dir, run, alpha=2.0, alphas=[8.0])
    model = load_for_eval(ModelConfig(name_or_path=str(bf16_dir), lora=None), str(run / "alpha_8"))
    ref = load_model(str(bf16_dir)).state_dict()
    mem = load_model(str(run / "memorization")).state_dict()
    # Evaluated in the loader's float32, from the bf16 values the export holds.
    expected = {k: v.float() for k, v in hand_extrapolated(ref, mem, 8.0, BF16).items()}
    assert_equal_states(model.state_dict(), expected)
    assert sorted(os.listdir(run / "alpha_8")) == ["extrapolation.json"]
    assert not [name for name in os.listdir(run) if name.startswith(".")]  # the temporary copy is gone


def test_lazy_alpha_errors_say_what_to_do(tokenizer, model_dir, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(model_dir, source)
    run = tmp_path / "run"
    mox_run(tokenizer, source, run, alpha=2.0, alphas=[8.0])
    lazy = run / "alpha_8"
    with pytest.raises(ModelResolutionError, match="is a lazy MOX α folder .*`llm-unlearn materialize"):
        check_model_source(str(lazy), "model.name_or_path")
    with pytest.raises(xp.ExtrapolationError, match="is not a lazy α folder"):
        materialize_alpha(run / "unlearned")
    shutil.rmtree(source)
    with pytest.raises(xp.ExtrapolationError, match="reference model cannot be loaded .* make .* available again"):
        materialize_alpha(lazy)
    shutil.rmtree(run / "memorization")
    with pytest.raises(xp.ExtrapolationError, match="memorization model .* is missing: restore that folder"):
        materialize_alpha(lazy)
    assert cli.main(["materialize", str(lazy)]) == 1  # one line on stderr, no traceback
    assert sorted(os.listdir(lazy)) == ["extrapolation.json"]


def test_unlearn_stage_records_lazy_alphas_and_the_cli_materializes_them(model_dir, tmp_path, capsys):
    from llm_unlearn import stages

    run = tmp_path / "run"
    config = run_config(model_dir, run, "mox", alpha=2.0, alphas=[8.0], max_steps=1)
    config["model"]["lora"] = None
    stages.run_unlearn(stages.parse_config(config), stages.RunOptions())
    info = json.loads((run / "run_info.json").read_text())
    assert info["exports"]["alpha_8"] == {"alpha": 8.0, "kind": "model", "lazy": True}
    folder_info = json.loads((run / "alpha_8" / "run_info.json").read_text())
    assert folder_info["alpha"] == 8.0 and folder_info["export"]["lazy"] is True
    assert sorted(os.listdir(run / "alpha_8")) == ["extrapolation.json", "run_info.json"]

    assert cli.main(["materialize", str(run / "alpha_8")]) == 0
    assert "materialized" in capsys.readouterr().out
    assert json.loads((run / "alpha_8" / "run_info.json").read_text())["export"]["lazy"] is False
    ref = load_model(str(model_dir)).state_dict()
    mem = load_model(str(run / "memorization")).state_dict()
    assert_equal_states(loaded(run / "alpha_8"), hand_extrapolated(ref, mem, 8.0, torch.float32))


# --- LoRA extrapolation check --------------------------------------------------------------------------------------


def test_probe_verification_catches_one_wrong_entry():
    """The tensor-level check (no model) sees a single changed entry of one B, and names +α² scaling."""
    generator = torch.Generator().manual_seed(0)
    old = {}
    for i in range(3):
        old[f"m{i}.lora_A.weight"] = torch.randn(4, 64, generator=generator)
        old[f"m{i}.lora_B.weight"] = torch.randn(48, 4, generator=generator)
    new = xp.scale_adapter_state(old, 2.0)
    for key, value in old.items():  # B ← −αB, A unchanged, written out
        assert torch.equal(new[key], -2.0 * value if "lora_B" in key else value)
    assert xp.verify_scaled_factors(old, new, 2.0) < 1e-5
    wrong = dict(new)
    wrong["m1.lora_B.weight"] = new["m1.lora_B.weight"].clone()
    wrong["m1.lora_B.weight"][7, 2] += 1e-2
    with pytest.raises(xp.ExtrapolationError, match="m1: extrapolated delta"):
        xp.verify_scaled_factors(old, wrong, 2.0)
    both = {k: -2.0 * v for k, v in old.items()}
    with pytest.raises(xp.ExtrapolationError, match="both A and B"):
        xp.verify_scaled_factors(old, both, 2.0)

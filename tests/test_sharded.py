"""The sharded (FSDP) code paths on CPU: torch's FSDP2 `fully_shard` over 2 gloo processes gives the same gathered
trained weights and extrapolated exports as the unsharded run, and refuses what it cannot do; the extrapolation
of a saved memorization model (the sharded export route) against hand-built values."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers import launch_2proc, run_until_done
from safetensors.torch import load_file

from llm_unlearn.config import ModelConfig
from llm_unlearn.methods.saved import extrapolate_saved, materialized_copy
from llm_unlearn.models import LoraSettings, is_lazy_alpha_dir, load_model, tiny_llama, wrap_lora

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "sharded_export.py"
EXPORTS = {
    "mox": {"memorization": "model", "unlearned": "model", "alpha_0.5": "model"},
    "mox_lora": {"memorization": "adapter", "unlearned": "adapter", "alpha_0.5": "adapter"},
    "mox_lora_merged": {"memorization": "adapter", "unlearned": "model", "alpha_0.5": "model"},
    "task_vector": {"unlearned": "model"},
    "ga": {"unlearned": "model"},
}


# Full-weight α beyond the first are lazy folders (no weights until materialized); adapters are written.
LAZY = {("mox", "alpha_0.5"), ("mox_lora_merged", "alpha_0.5")}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    if is_lazy_alpha_dir(folder):
        with materialized_copy(folder) as materialized:
            return weights(materialized)
    files = sorted(folder.glob("*.safetensors"))
    assert len(files) == 1, f"{folder}: {files}"
    return load_file(files[0])


@pytest.mark.distributed
def test_fsdp2_exports_equal_the_unsharded_run(tokenizer, tmp_path):
    base = tmp_path / "base"
    tiny_llama(len(tokenizer), seed=0).save_pretrained(base)
    one, two = tmp_path / "one", tmp_path / "two"
    spec = importlib.util.spec_from_file_location("sharded_export", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.run_all(str(base), one, world_size=1)  # here: saves a second interpreter start-up
    run_until_done(launch_2proc([str(SCRIPT), "--base", str(base), "--out", str(two)]), two / "done")

    checks = json.loads((two / "checks.json").read_text())
    start = load_file(base / "model.safetensors")
    for case, folders in EXPORTS.items():
        assert checks[case]["sharded"] and checks[case]["local_fraction"] < 0.75, case  # DTensor halves
        for run in (one, two):
            assert json.loads((run / case / "exports.json").read_text()) == {
                k: v for k, v in folders.items() if k != "memorization"
            }
        for folder in folders:
            for run in (one, two):  # the live (1 process) and the gathered (2 processes) export alike
                assert is_lazy_alpha_dir(run / case / folder) == ((case, folder) in LAZY), (run, case, folder)
            single, sharded = weights(one / case / folder), weights(two / case / folder)
            assert single.keys() == sharded.keys(), (case, folder)
            for key, value in single.items():
                torch.testing.assert_close(sharded[key], value, rtol=1e-4, atol=1e-6, msg=f"{case}/{folder}/{key}")
        if folders["unlearned"] == "model":  # the run did move the weights
            unlearned = weights(two / case / "unlearned")
            assert any(not torch.allclose(unlearned[k].float(), start[k]) for k in start), case
    assert "save_memorization" in checks["mox"]["direct_export"]
    refused = checks["refused"]
    assert "FSDP / DeepSpeed ZeRO-3" in refused["mox_momentum"]
    assert "gradients are sharded" in refused["sfron"] and "gradients are sharded" in refused["ungrad"]


def test_extrapolate_saved_uses_ref_model_path_and_merges_on_request(tokenizer, tmp_path):
    # Full weights: θ_ref comes from model.ref_model_path (what the unlearn stage trained against).
    ref, mem, other = (tiny_llama(len(tokenizer), seed=s) for s in (0, 1, 2))
    for name, model in (("ref", ref), ("mem", mem), ("other", other)):
        model.save_pretrained(tmp_path / name)
    cfg = ModelConfig(name_or_path=str(tmp_path / "other"), ref_model_path=str(tmp_path / "ref"), lora=None)
    exports = extrapolate_saved(cfg, str(tmp_path / "mem"), [0.5], tmp_path / "full", tokenizer)
    assert exports == {"unlearned": {"alpha": 0.5, "kind": "model"}}
    got = weights(tmp_path / "full" / "unlearned")
    for key, value in got.items():
        expected = 1.5 * ref.state_dict()[key] - 0.5 * mem.state_dict()[key]
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)

    # LoRA, merged: W − α·s·B·A per adapted weight, by hand from the saved factors.
    torch.manual_seed(0)
    adapted = wrap_lora(load_model(str(tmp_path / "ref")), LoraSettings(r=2, lora_alpha=4))  # records its base
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param))
    adapted.save_pretrained(tmp_path / "adapter")
    cfg = ModelConfig(name_or_path=str(tmp_path / "ref"), lora=LoraSettings(r=2, lora_alpha=4))
    exports = extrapolate_saved(cfg, str(tmp_path / "adapter"), [2.0], tmp_path / "lora", tokenizer, merged=True)
    assert exports == {"unlearned": {"alpha": 2.0, "kind": "model"}}
    got = weights(tmp_path / "lora" / "unlearned")
    factors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    q_proj = "model.layers.0.self_attn.q_proj"
    a, b = (factors[f"base_model.model.{q_proj}.lora_{x}.weight"] for x in ("A", "B"))
    expected = ref.state_dict()[f"{q_proj}.weight"] - 2.0 * (4 / 2) * (b @ a)
    torch.testing.assert_close(got[f"{q_proj}.weight"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["model.norm.weight"], ref.state_dict()["model.norm.weight"])

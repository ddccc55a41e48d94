"""`accelerate launch --config_file recipes/accelerate_configs/cpu_2proc.yaml recipes/extrapolate.py
recipes/synthetic/mox_lora.yaml` (CI-sized) produces the same extrapolated adapter as one process."""

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import launch_2proc, run_until_done
from safetensors.torch import load_file

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "synthetic" / "mox_lora.yaml"
# Two forget rows = one global batch, so 1 process with batch 2 and 2 processes with batch 1 see the same rows.
DATA = ["data.n_authors=4", "data.qa_per_author=2", "data.forget_authors=1", "data.holdout_authors=1"]


def test_two_process_extrapolation_matches_one_process(tmp_path, tokenizer):
    from llm_unlearn.models import tiny_llama

    tiny = tmp_path / "tiny"
    tiny_llama(len(tokenizer)).save_pretrained(tiny)
    tokenizer.save_pretrained(tiny)
    common = [f"model.name_or_path={tiny}", *DATA, "training.max_steps=2", "training.disable_tqdm=true"]
    one, two = tmp_path / "one", tmp_path / "two"
    script = [str(REPO / "recipes" / "extrapolate.py"), str(RECIPE), *common]
    done = "unlearned/adapter_model.safetensors"
    run_until_done(
        [sys.executable, *script, f"training.output_dir={one}", "training.per_device_train_batch_size=2"], one / done
    )
    run_until_done(
        launch_2proc([*script, f"training.output_dir={two}", "training.per_device_train_batch_size=1"]), two / done
    )
    assert json.loads((two / "run_info.json").read_text())["world_size"] == 2
    assert json.loads((one / "run_info.json").read_text())["world_size"] == 1
    for folder in ("unlearned", "alpha_1", "alpha_4"):
        a = load_file(one / folder / "adapter_model.safetensors")
        b = load_file(two / folder / "adapter_model.safetensors")
        assert a.keys() == b.keys()
        assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_B" in k)  # training moved B
        for key in a:
            assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-6), (folder, key)

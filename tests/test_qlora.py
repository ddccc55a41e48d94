"""QLoRA: a 4-bit bitsandbytes base with a LoRA adapter. MOX extrapolates the adapter and never merges into
the quantized base. The CPU test exercises the code path on a tiny model (bitsandbytes' CPU kernels);
the `gpu` tests run every method on CUDA."""

import pytest
import torch
from helpers import make_trainer

from llm_unlearn import extrapolate as xp
from llm_unlearn.methods import METHODS
from llm_unlearn.models import LoraSettings, load_model, tiny_llama, wrap_lora

bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs the qlora extra (bitsandbytes)")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny")
    tiny_llama(len(tokenizer), hidden_size=128).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def qlora_model(path):
    from peft import prepare_model_for_kbit_training

    model = load_model(path, dtype="float32", quantization="4bit")
    assert getattr(model, "is_loaded_in_4bit", False)
    return wrap_lora(prepare_model_for_kbit_training(model), LoraSettings())


def test_mox_on_a_4bit_base_extrapolates_the_adapter_only(tiny_dir, tokenizer, tmp_path):
    model = qlora_model(tiny_dir)
    trainer = make_trainer("mox", model, tokenizer, tmp_path, max_steps=2, learning_rate=1e-2)
    trainer.train()
    info = trainer.export_unlearned(str(tmp_path / "unlearned"))
    assert info["kind"] == "adapter"
    assert (tmp_path / "unlearned" / "adapter_model.safetensors").is_file()
    with pytest.raises(xp.ExtrapolationError, match="quantized"):
        xp.merged_extrapolated_state(model, 2.0)


@pytest.mark.gpu
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_on_a_4bit_base_on_gpu(method, tiny_dir, tokenizer, tmp_path):
    model = qlora_model(tiny_dir)
    trainer = make_trainer(method, model, tokenizer, tmp_path, max_steps=2, learning_rate=1e-3, use_cpu=False)
    trainer.train()
    assert trainer.state.global_step == 2
    assert torch.cuda.max_memory_allocated() > 0

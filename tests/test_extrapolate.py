"""Invariants of MOX extrapolation over LoRA and full weights."""

import copy

import pytest
import torch

from llm_unlearn import extrapolate as xp
from llm_unlearn.models import LoraSettings, tiny_llama, wrap_lora


def trained_lora(vocab, seed=0, **settings):
    model = wrap_lora(tiny_llama(vocab, seed=0), LoraSettings(**settings))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return model


def test_lora_extrapolation_equals_full_formula_on_merged_model(tokenizer):
    vocab = len(tokenizer)
    peft = trained_lora(vocab)
    alpha = 3.0
    from_adapter = xp.merged_extrapolated_state(peft, alpha)
    # Brute force: peft merges the memorization adapter into full weights, then (1+α)θ_ref − αθ_mem by hand.
    ref = tiny_llama(vocab, seed=0).state_dict()
    mem = {k: v.float() for k, v in copy.deepcopy(peft).merge_and_unload().state_dict().items()}
    brute = {k: (1 + alpha) * ref[k].float() - alpha * mem[k] for k in ref}
    assert set(from_adapter) == set(brute)
    worst = max(float((from_adapter[k] - brute[k]).abs().max()) for k in from_adapter)
    assert worst < 1e-5
    # And the adapter route (B scaled by −α) gives the same deltas.
    state = xp.extrapolate_adapter_state(peft, alpha)
    assert xp.verify_lora_extrapolation(peft, state, alpha) < 1e-5


def test_adapter_forward_matches_merged_weights(tokenizer, tmp_path):
    from peft import PeftModel

    vocab = len(tokenizer)
    peft = trained_lora(vocab)
    xp.save_extrapolated_adapter(peft, 2.0, tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(tiny_llama(vocab, seed=0), tmp_path / "adapter")
    merged = tiny_llama(vocab, seed=0)
    merged.load_state_dict(xp.merged_extrapolated_state(peft, 2.0), strict=False)
    ids = torch.tensor([[1, 5, 9, 200, 31, 7]])
    with torch.no_grad():
        a = loaded(input_ids=ids).logits
        b = merged(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)


def test_alpha_zero_returns_reference_exactly(tokenizer):
    vocab = len(tokenizer)
    peft = trained_lora(vocab)
    ref = tiny_llama(vocab, seed=0).state_dict()
    state = xp.merged_extrapolated_state(peft, 0.0)
    for name, value in state.items():
        assert torch.equal(value, ref[name].float()), name
    mem = {k: v + 1.0 for k, v in ref.items()}
    out = xp.extrapolate_state_dict(ref, mem, 0.0)
    assert all(torch.equal(out[k], ref[k].float()) for k in ref)


def test_scaling_both_a_and_b_is_caught(tokenizer):
    peft = trained_lora(len(tokenizer))
    alpha = 2.0
    state = xp.extrapolate_adapter_state(peft, alpha)
    wrong = {k: (-alpha * v if "lora_A" in k else v) for k, v in state.items()}
    with pytest.raises(xp.ExtrapolationError, match="both A and B"):
        xp.verify_lora_extrapolation(peft, wrong, alpha)


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_non_positive_alpha_is_refused(alpha):
    with pytest.raises(xp.ExtrapolationError, match="alpha must be > 0"):
        xp.check_alpha(alpha)


def test_dora_is_refused(tokenizer):
    peft = wrap_lora(tiny_llama(len(tokenizer)), LoraSettings(use_dora=True))
    with pytest.raises(xp.ExtrapolationError, match="DoRA"):
        xp.extrapolate_adapter_state(peft, 1.0)


def test_fp32_arithmetic_keeps_small_bf16_differences():
    ref = torch.full((4,), 1.0, dtype=torch.bfloat16)
    mem = ref + torch.tensor(2**-7, dtype=torch.bfloat16)  # smallest step above 1.0 in bf16
    out = xp.extrapolate_tensor(ref, mem, 4.0)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.full((4,), 1.0 - 4 * 2**-7))


def test_svd_factors_rank_and_error():
    gen = torch.Generator().manual_seed(0)
    low = torch.randn(20, 3, generator=gen) @ torch.randn(3, 16, generator=gen)
    b, a, rel = xp.svd_factors(low, 3)
    assert rel < 1e-5 and torch.allclose(b @ a, low, atol=1e-4)
    _, _, rel2 = xp.svd_factors(low + 0.1 * torch.randn(20, 16, generator=gen), 3)
    assert 0 < rel2 < 1

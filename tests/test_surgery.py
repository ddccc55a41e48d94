"""Gradient surgery: `ungrad`/`pcgrad` directions against brute force and hand values, EUPMU's dual update,
backward/forward counts, and λ across a checkpoint resume (tiny model)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import FORGET, make_trainer, paired, resume_watching_lambda
from scipy.optimize import minimize

from llm_unlearn.data.collate import PairedCollator
from llm_unlearn.methods import METHODS, get_method
from llm_unlearn.methods.gradients import refuse_sharded_gradients, trainable_parameters
from llm_unlearn.methods.surgery import (
    DualAscentCallback,
    bounded_forget_loss,
    dual_update,
    pcgrad_direction,
    unilateral_direction,
)
from llm_unlearn.models import LoraSettings, tiny_llama, wrap_lora


def lora_model(tokenizer, seed=0):
    return wrap_lora(tiny_llama(len(tokenizer), seed=seed), LoraSettings())


def brute_force_projection(g_f: np.ndarray, g_r: np.ndarray, eps: float) -> np.ndarray:
    """min ½‖d − g_f‖² s.t. ⟨g_r, d⟩ ≥ −ε, solved numerically with SLSQP in the primal (no formula used)."""
    result = minimize(
        lambda d: 0.5 * np.sum((d - g_f) ** 2),
        x0=np.zeros_like(g_f),
        jac=lambda d: d - g_f,
        constraints=[{"type": "ineq", "fun": lambda d: g_r @ d + eps, "jac": lambda d: g_r}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert result.success, result.message
    return result.x


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("case", ["conflict", "no_conflict"])
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_unilateral_direction_matches_brute_force(seed, case, eps):
    gen = torch.Generator().manual_seed(seed)
    g_r = torch.randn(7, generator=gen, dtype=torch.float64)
    g_f = torch.randn(7, generator=gen, dtype=torch.float64)
    # Put ⟨g_r, g_f⟩ well on one side of −ε: conflict = the unconstrained g_f violates the constraint.
    target = -2.0 - eps if case == "conflict" else 1.0
    g_f = g_f + (target - g_r @ g_f) / (g_r @ g_r) * g_r
    d, lam = unilateral_direction(g_f, g_r, eps)
    expected = brute_force_projection(g_f.numpy(), g_r.numpy(), eps)
    assert np.allclose(d.numpy(), expected, atol=1e-6)
    if case == "conflict":
        assert lam > 0 and float(g_r @ d) == pytest.approx(-eps, abs=1e-9)  # constraint active
    else:
        assert lam == 0 and torch.equal(d, g_f)


def test_unilateral_direction_with_zero_retain_gradient_is_the_forget_gradient():
    g_f = torch.tensor([1.0, -2.0])
    d, lam = unilateral_direction(g_f, torch.zeros(2), eps=0.0)
    assert lam == 0 and torch.equal(d, g_f)


def test_pcgrad_matches_hand_computed_2d_vectors():
    # Conflict: ⟨g_f, g_r⟩ = −1. g_f' = (1,0) − (−1/2)(−1,1) = (0.5, 0.5); g_r' = (−1,1) − (−1/1)(1,0) = (0, 1).
    d = pcgrad_direction(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]))
    assert torch.allclose(d, torch.tensor([0.5, 1.5]))
    # No conflict (dot = 1 > 0) and orthogonal (dot = 0): plain sum.
    assert torch.equal(pcgrad_direction(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])), torch.tensor([2.0, 1.0]))
    assert torch.equal(pcgrad_direction(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])), torch.tensor([1.0, 3.0]))
    # Conflict with unequal norms: g_f = (2, 1), g_r = (−1, 0): dot = −2.
    # g_f' = (2,1) − (−2/1)(−1,0) = (0, 1); g_r' = (−1,0) − (−2/5)(2,1) = (−0.2, 0.4); d = (−0.2, 1.4).
    d = pcgrad_direction(torch.tensor([2.0, 1.0]), torch.tensor([-1.0, 0.0]))
    assert torch.allclose(d, torch.tensor([-0.2, 1.4]))


def test_dual_update_hand_values():
    # ℓ_r rose 1.00 → 1.02 at lr 0.01: rate 2 > ε = 0.5, δ = −2 + 0.5 = −1.5, λ = 1 − 0.1·(−1.5) = 1.15.
    lam, delta = dual_update(1.0, before=1.0, after=1.02, lr=0.01, eps=0.5, step_size=0.1)
    assert delta == pytest.approx(-1.5) and lam == pytest.approx(1.15)
    # A fall of ℓ_r gives δ > 0, and λ is clipped at 0.
    lam, delta = dual_update(0.05, before=1.0, after=0.99, lr=0.01, eps=0.0, step_size=0.1)
    assert delta == pytest.approx(1.0) and lam == 0.0


def test_dual_ascent_rises_while_retain_climbs_faster_than_eps_and_decays_to_zero_after():
    lam, lr, eps, history = 0.5, 0.01, 0.5, []
    loss = 1.0
    for _ in range(10):  # rising 0.02/step at lr 0.01: rate 2 > ε
        lam, _ = dual_update(lam, loss, loss + 0.02, lr, eps, step_size=0.1)
        loss += 0.02
        history.append(lam)
    assert all(b > a for a, b in zip([0.5, *history], history))
    for _ in range(100):  # rising 0.002/step: rate 0.2 < ε, tolerated (λ falls by 0.03 a step)
        lam, _ = dual_update(lam, loss, loss + 0.002, lr, eps, step_size=0.1)
        loss += 0.002
        history.append(lam)
    assert history[-1] == 0.0 and all(b <= a for a, b in zip(history[9:], history[10:]))


def test_eupmu_lambda_rises_when_the_retain_loss_is_forced_up(tokenizer, tmp_path):
    # Retain set = forget set: every forget step raises the retain loss, so λ must grow from 0.
    dataset = paired(tokenizer, retain=FORGET, refusal=False)
    settings = dict(dataset=dataset, lambda_init=0.0, dual_step=0.01, max_steps=3)
    trainer = make_trainer("eupmu", lora_model(tokenizer), tokenizer, tmp_path, **settings)
    trainer.train()
    rows = [r for r in trainer.state.log_history if "eupmu_lambda" in r]
    assert len(rows) == 3 and all("eupmu_eps" in r and "retain_change" in r for r in rows)
    assert all(r["retain_change"] > 0 for r in rows)
    lambdas = [r["eupmu_lambda"] for r in rows]
    assert 0 < lambdas[0] < lambdas[1] < lambdas[2]
    assert trainer.dual.lam == pytest.approx(lambdas[-1], abs=1e-6)


def test_eupmu_lambda_decays_to_zero_when_the_increase_is_tolerated(tokenizer, tmp_path):
    trainer = make_trainer(
        "eupmu",
        lora_model(tokenizer),
        tokenizer,
        tmp_path,
        lambda_init=1.0,
        retain_tolerance=1e4,
        dual_step=0.1,
        max_steps=2,
    )
    trainer.train()
    assert [r["eupmu_lambda"] for r in trainer.state.log_history if "eupmu_lambda" in r] == [0.0, 0.0]


@pytest.mark.parametrize("fast", [True, False])
def test_eupmu_counts_one_backward_and_an_extra_forward_only_when_not_fast(fast, tokenizer, tmp_path):
    model = lora_model(tokenizer)
    # ga_clipped + retain NLL need no reference, so every no-grad forward is the post-step retain forward.
    trainer = make_trainer(
        "eupmu", model, tokenizer, tmp_path, forget_loss="ga_clipped", ga_nll_ceiling=20.0, fast=fast, max_steps=3
    )
    counts = {"backward": 0, "grad_forward": 0, "nograd_forward": 0}
    backward = trainer.accelerator.backward

    def counting_backward(loss, **kwargs):
        counts["backward"] += 1
        return backward(loss, **kwargs)

    trainer.accelerator.backward = counting_backward

    def count_forward(module, args, output):
        counts["grad_forward" if torch.is_grad_enabled() else "nograd_forward"] += 1

    model.register_forward_hook(count_forward)
    trainer.train()
    assert counts == {"backward": 3, "grad_forward": 6, "nograd_forward": 0 if fast else 3}
    changes = [("retain_change" in r) for r in trainer.state.log_history if "eupmu_lambda" in r]
    # Fast mode measures step t−1 at step t, so the first step has no retain change yet.
    assert changes == ([False, True, True] if fast else [True, True, True])


def test_eupmu_loss_is_forget_plus_lambda_retain(tokenizer, tmp_path):
    model = lora_model(tokenizer)
    trainer = make_trainer("eupmu", model, tokenizer, tmp_path, lambda_init=2.5)
    batch = PairedCollator(tokenizer.pad_token_id)([paired(tokenizer)[i] for i in range(2)])
    forget, _ = bounded_forget_loss(trainer, model, batch["forget"])
    retain = trainer.nll(model, batch["retain"])
    assert torch.allclose(trainer.compute_loss(model, batch), forget + 2.5 * retain, atol=1e-5)
    # At θ = θ_ref (LoRA B = 0) the NPO loss is (2/β)·log 2.
    assert float(forget) == pytest.approx(20 * np.log(2), rel=1e-5)


def test_eupmu_lambda_is_restored_on_resume(tokenizer, tmp_path):
    settings = dict(max_steps=4, save_strategy="steps", save_steps=2, dual_step=0.05, lambda_init=0.3)
    full = make_trainer("eupmu", lora_model(tokenizer), tokenizer, tmp_path / "full", **settings)
    full.train()
    lambdas = [r["eupmu_lambda"] for r in full.state.log_history if "eupmu_lambda" in r]
    assert len(lambdas) == 4 and lambdas[1] != pytest.approx(0.3)  # λ moved before the checkpoint

    saved = json.loads((tmp_path / "full" / "checkpoint-2" / DualAscentCallback.FILE).read_text())
    assert saved["lambda"] == pytest.approx(lambdas[1], abs=1e-6) and saved["updates"] == 2

    resumed = make_trainer("eupmu", lora_model(tokenizer), tokenizer, tmp_path / "full", **settings)
    seen = resume_watching_lambda(resumed, str(tmp_path / "full" / "checkpoint-2"))
    assert seen[0] == pytest.approx(lambdas[1], abs=1e-6)  # λ at the start of step 3 is the saved one
    assert resumed.dual.lam == pytest.approx(full.dual.lam, rel=1e-4, abs=1e-6)


def test_ungrad_training_step_writes_the_surgery_direction(tokenizer, tmp_path):
    model = lora_model(tokenizer)
    trainer = make_trainer("ungrad", model, tokenizer, tmp_path, retain_tolerance=0.05)
    dataset = paired(tokenizer)
    collate = PairedCollator(tokenizer.pad_token_id)
    micro = [collate([dataset[0], dataset[1]]), collate([dataset[2], dataset[3]])]
    params = trainable_parameters(model)

    def flat_grad(loss):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, allow_unused=False)])

    g_f = sum(flat_grad(bounded_forget_loss(trainer, model, b["forget"])[0]) for b in micro) / 2
    g_r = sum(flat_grad(trainer.nll(model, b["retain"])) for b in micro) / 2
    expected, lam = unilateral_direction(g_f, g_r, 0.05)
    assert lam > 0

    # Two micro-batches of one accumulation window: surgery on the mean gradients, at the last one only.
    trainer.current_gradient_accumulation_steps = 2
    trainer.accelerator.gradient_state._set_sync_gradients(False)
    trainer.training_step(model, micro[0])
    assert all(p.grad is None for p in params)
    trainer.accelerator.gradient_state._set_sync_gradients(True)
    trainer.training_step(model, micro[1])
    written = torch.cat([p.grad.reshape(-1) for p in params])
    assert torch.allclose(written, expected, rtol=1e-4, atol=1e-7)


def test_surgery_refuses_sharded_gradients_and_fp16(tmp_path):
    def fake(fsdp=False, deepspeed=False, fp16=False):
        accelerator = SimpleNamespace(distributed_type="MULTI_GPU")
        return SimpleNamespace(
            accelerator=accelerator,
            is_fsdp_enabled=fsdp,
            is_deepspeed_enabled=deepspeed,
            shards_parameters=lambda: fsdp,  # torch's own fully_shard: tests/test_sharded.py
            args=SimpleNamespace(fp16=fp16),
        )

    refuse_sharded_gradients(fake(), "ungrad")  # DDP is fine
    for bad in ({"fsdp": True}, {"deepspeed": True}):
        with pytest.raises(ValueError, match=r"sharded.*Run it on one device or with DDP.*`eupmu`"):
            refuse_sharded_gradients(fake(**bad), "ungrad")
    with pytest.raises(ValueError, match="fp16"):
        refuse_sharded_gradients(fake(fp16=True), "pcgrad")


def test_configs_refuse_unknown_choices(tmp_path):
    for method in ("eupmu", "ungrad", "pcgrad"):
        with pytest.raises(ValueError, match="forget_loss must be one of"):
            get_method(method).config(output_dir=str(tmp_path), use_cpu=True, forget_loss="ga")
        with pytest.raises(ValueError, match="retain_loss must be one of"):
            get_method(method).config(output_dir=str(tmp_path), use_cpu=True, retain_loss="mse")
    with pytest.raises(ValueError, match="lambda_init must be >= 0"):
        get_method("eupmu").config(output_dir=str(tmp_path), use_cpu=True, lambda_init=-1.0)
    assert {"eupmu", "ungrad", "pcgrad", "sfron"} <= set(METHODS)


def test_full_weight_surgery_without_reference_needs_no_second_model(tokenizer, tmp_path):
    # ga_clipped + NLL retain use no θ_ref; NPO does and asks for one.
    trainer = make_trainer("ungrad", tiny_llama(len(tokenizer)), tokenizer, tmp_path, forget_loss="ga_clipped")
    assert trainer.ref_model is None
    with pytest.raises(ValueError, match="needs the reference model"):
        make_trainer("eupmu", tiny_llama(len(tokenizer)), tokenizer, tmp_path)

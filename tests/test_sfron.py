"""SFR-on: Fisher saliency against brute force (full weights and LoRA rows), the masked forget step, its
frequency and schedule, the Fisher pass's memory bound, and the mask across a resume (tiny model)."""

import math

import pytest
import torch
from helpers import make_trainer, paired
from torch import nn

from llm_unlearn.data.collate import PaddingCollator, PairedCollator
from llm_unlearn.methods.saliency import (
    FisherDifference,
    SaliencyMask,
    apply_saliency_mask,
    compute_saliency,
    lora_modules,
    lora_pair,
)
from llm_unlearn.methods.sfron import SaliencyCheckpointCallback, adaptive_weights, clip_grads_, forget_schedule
from llm_unlearn.models import LoraSettings, tiny_llama, wrap_lora


def lora_model(tokenizer, seed=0):
    return wrap_lora(tiny_llama(len(tokenizer), seed=seed), LoraSettings())


def per_sample_batches(tokenizer, records_dataset, rows):
    collate = PaddingCollator(tokenizer.pad_token_id)
    return [collate([records_dataset[i]]) for i in rows]


# --- pure pieces --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gamma, expected",
    [
        # F_f = [2, 1, 0, 9, 3], F_r = [1, 4, 0, 9, 0]: ratios 2, 0.25, 0/0, 1, ∞.
        (1.0, [True, False, True, True, True]),
        (2.0, [True, False, True, False, True]),
    ],
)
def test_fisher_difference_mask_and_masked_gradient_match_hand_values(gamma, expected):
    fisher = FisherDifference({"w": torch.Size([5])}, torch.device("cpu"))
    fisher.coef = 1 / 2  # two forget samples
    fisher.add("w", torch.tensor([4.0, 1.0, 0.0, 9.0, 6.0]))
    fisher.add("w", torch.tensor([0.0, 1.0, 0.0, 9.0, 0.0]))
    fisher.coef = -gamma / 1  # one retain sample
    fisher.add("w", torch.tensor([1.0, 4.0, 0.0, 9.0, 0.0]))
    masks = fisher.to_masks()
    assert masks["w"].tolist() == expected
    # Peak: the buffer and its mask side by side for a moment, never a second fp32 buffer.
    assert fisher.buffers == {} and fisher.mask_bytes == 5 and fisher.peak_bytes == 4 * 5 + 5

    layer = nn.Linear(5, 1, bias=False)
    layer.weight.grad = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    apply_saliency_mask(layer, SaliencyMask({"weight": masks["w"].view(1, 5)}, {}))
    kept = [v if keep else 0.0 for v, keep in zip([1.0, 2.0, 3.0, 4.0, 5.0], expected)]
    assert layer.weight.grad.tolist() == [kept]


def test_adaptive_weights_schedule_and_clip_hand_values():
    # ℓ = [1, 4], λ = 0.5: ℓ^−λ = [1, 0.5], mean 0.75 → w = [4/3, 2/3] (mean 1, the better-remembered weighs more).
    assert torch.allclose(adaptive_weights(torch.tensor([1.0, 4.0]), 0.5), torch.tensor([4 / 3, 2 / 3]))
    assert torch.allclose(adaptive_weights(torch.tensor([1.0, 4.0]), 0.0), torch.ones(2))
    assert forget_schedule(0, 10, 2.0) == 2.0
    assert forget_schedule(5, 10, 2.0) == pytest.approx(1.0)
    assert forget_schedule(10, 10, 2.0) == pytest.approx(0.0)
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    assert clip_grads_([a, b], 1.0) == pytest.approx(5.0)
    assert torch.allclose(a.grad, torch.tensor([0.6, 0.0])) and torch.allclose(b.grad, torch.tensor([0.8]))
    assert clip_grads_([a, b], 2.0) == pytest.approx(1.0) and torch.allclose(b.grad, torch.tensor([0.8]))


# --- the Fisher pass against brute force ----------------------------------------------------------------------


def brute_force_fishers(tokenizer, trainer, model, weights: dict[str, torch.Tensor], reduce_rows: bool):
    """F_f and F_r per weight (or per output row) from plain per-sample autograd, kept separately."""
    dataset = trainer.train_dataset
    out = {}
    for name, source in (("forget", dataset.forget), ("retain", dataset.retain)):
        batches = per_sample_batches(tokenizer, source, range(len(source)))
        totals = {
            k: torch.zeros(w.shape[0] if reduce_rows else w.shape, dtype=torch.float64) for k, w in weights.items()
        }
        for batch in batches:
            grads = torch.autograd.grad(trainer.nll(model, batch), list(weights.values()))
            for key, grad in zip(weights, grads):
                squared = grad.double().pow(2)
                totals[key] += squared.sum(1) if reduce_rows else squared
        out[name] = {k: v / len(batches) for k, v in totals.items()}
    return out["forget"], out["retain"]


def assert_mask_matches(mask: torch.Tensor, f_f: torch.Tensor, f_r: torch.Tensor, gamma: float) -> None:
    diff = f_f - gamma * f_r
    decided = diff.abs() > 1e-6 * (f_f + gamma * f_r) + 1e-30  # leave out float ties
    assert torch.equal(mask[decided], (diff >= 0)[decided])
    assert decided.float().mean() > 0.99


def test_full_weight_saliency_matches_brute_force_within_one_fisher_copy(tokenizer, tmp_path):
    model = tiny_llama(len(tokenizer), seed=0)
    trainer = make_trainer("sfron", model, tokenizer, tmp_path, fisher_samples=6)  # all 6 retain rows
    saliency, fisher = compute_saliency(trainer, model, seed=0)
    weights = {n: p for n, p in model.named_parameters() if p.requires_grad}
    f_f, f_r = brute_force_fishers(tokenizer, trainer, model, weights, reduce_rows=False)
    for name in weights:
        assert_mask_matches(saliency.elementwise[name], f_f[name], f_r[name], gamma=1.0)
    assert 0.05 < saliency.fraction() < 0.95  # a real mix, not all or nothing
    trainable = sum(p.numel() for p in weights.values())
    assert fisher.mask_bytes == trainable  # one bool per weight
    assert fisher.peak_bytes <= 4 * trainable + fisher.mask_bytes  # never F_f and F_r side by side


def test_lora_saliency_is_per_base_weight_row_and_matches_brute_force(tokenizer, tmp_path):
    model = lora_model(tokenizer)
    trainer = make_trainer("sfron", model, tokenizer, tmp_path, fisher_samples=6, saliency_gamma=1.0)
    modules = lora_modules(model)
    forwards = []
    handle = model.register_forward_hook(lambda *a: forwards.append(1))
    saliency, fisher = compute_saliency(trainer, model, seed=0)
    handle.remove()
    assert len(forwards) == 4 + 6  # one backward per row: the exact per-sample Fisher
    assert saliency.elementwise == {} and set(saliency.lora_rows) == set(modules)

    bases = {name: m.get_base_layer().weight for name, m in modules.items()}
    for weight in bases.values():
        weight.requires_grad_(True)
    try:
        f_f, f_r = brute_force_fishers(tokenizer, trainer, model, bases, reduce_rows=True)
    finally:
        for weight in bases.values():
            weight.requires_grad_(False)
    for name in modules:
        assert_mask_matches(saliency.lora_rows[name], f_f[name], f_r[name], gamma=1.0)
    assert 0.05 < saliency.fraction() < 0.95
    rows = sum(m.get_base_layer().out_features for m in modules.values())
    assert fisher.mask_bytes == rows and fisher.peak_bytes <= 4 * rows + rows  # one row-sum vector per module


def test_fisher_uses_the_retain_subset_and_batch_size(tokenizer, tmp_path):
    model = lora_model(tokenizer)
    trainer = make_trainer("sfron", model, tokenizer, tmp_path, fisher_samples=3, fisher_batch_size=2)
    sizes = []
    handle = model.register_forward_hook(
        lambda module, args, kwargs, out: sizes.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    compute_saliency(trainer, model, seed=0)
    handle.remove()
    assert sizes == [2, 2, 2, 1]  # forget 4 rows in batches of 2, then 3 of the 6 retain rows


# --- the forget step ------------------------------------------------------------------------------------------


def test_lora_forget_step_moves_only_salient_adapter_rows(tokenizer, tmp_path):
    model = lora_model(tokenizer)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B ≠ 0 so that lora_A has a gradient for the rule to zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    lr, clip = 0.5, 0.05
    trainer = make_trainer(
        "sfron", model, tokenizer, tmp_path, optim="sgd", learning_rate=lr, weight_decay=0.0, forget_clip=clip
    )
    modules = lora_modules(model)
    rows = {name: torch.arange(m.get_base_layer().out_features) % 3 == 0 for name, m in modules.items()}
    trainer.saliency = SaliencyMask({}, rows)
    trainer.create_optimizer()
    trainer.state.max_steps, trainer.state.global_step = 4, 1  # a_1 = (1 + cos(π/4))/2
    batch = PairedCollator(tokenizer.pad_token_id)([paired(tokenizer)[i] for i in range(2)])["forget"]

    # Expected SGD step, by hand: a_t × the weighted-GA gradient, B rows masked, A zeroed, clipped, times lr.
    params = [p for p in model.parameters() if p.requires_grad]
    nll = trainer.stats(model, batch)[0]
    grads = dict(zip(map(id, params), torch.autograd.grad(-(adaptive_weights(nll, 0.5) * nll).mean(), params)))
    for name, module in modules.items():
        lora_a, lora_b = lora_pair(module, "default")
        grads[id(lora_b)] = grads[id(lora_b)] * rows[name].unsqueeze(1)
        grads[id(lora_a)] = torch.zeros_like(lora_a)
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
    a_t = (1 + math.cos(math.pi / 4)) / 2  # scales the loss, so the gradient, before the clip
    assert a_t * norm > clip  # the clip is active
    expected = {i: -lr * (clip / (a_t * norm)) * a_t * g for i, g in grads.items()}
    before = {id(p): p.detach().clone() for p in params}

    trainer.forget_step(model, batch)
    assert all(p.grad is None for p in params)
    assert trainer.optimizer.param_groups[0]["lr"] == lr  # the step is at the current learning rate
    for name, module in modules.items():
        lora_a, lora_b = lora_pair(module, "default")
        delta_b = lora_b.detach() - before[id(lora_b)]
        assert torch.equal(lora_a.detach(), before[id(lora_a)])
        assert (delta_b[~rows[name]] == 0).all() and (delta_b[rows[name]] != 0).any()
        assert torch.allclose(delta_b, expected[id(lora_b)], atol=1e-7)


def test_forget_step_every_forget_freq_steps_with_cosine_scale(tokenizer, tmp_path):
    trainer = make_trainer(
        "sfron", lora_model(tokenizer), tokenizer, tmp_path, forget_freq=2, max_steps=5, fisher_samples=2
    )
    calls = []
    forget_step = trainer.forget_step
    trainer.forget_step = lambda model, batch: (calls.append(trainer.state.global_step), forget_step(model, batch))
    trainer.train()
    assert calls == [0, 2, 4] and trainer.forget_steps == 3
    scales = [r["forget_scale"] for r in trainer.state.log_history if "forget_scale" in r]
    assert scales == pytest.approx([forget_schedule(t, 5, 1.0) for t in (0, 2, 4)], abs=1e-6)
    retain_steps = [r for r in trainer.state.log_history if "retain_nll" in r]
    assert len(retain_steps) == 5  # a retain step every step


def test_forget_step_is_once_per_optimizer_step_under_accumulation(tokenizer, tmp_path):
    settings = dict(forget_freq=1, max_steps=2, gradient_accumulation_steps=2, fisher_samples=2)
    trainer = make_trainer("sfron", lora_model(tokenizer), tokenizer, tmp_path, **settings)
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.forget_steps == 2


def test_saliency_mask_is_saved_and_restored_on_resume(tokenizer, tmp_path):
    settings = dict(max_steps=3, save_strategy="steps", save_steps=2, fisher_samples=2)
    first = make_trainer("sfron", lora_model(tokenizer), tokenizer, tmp_path, **settings)
    first.train()
    assert (tmp_path / "checkpoint-2" / SaliencyCheckpointCallback.FILE).is_file()

    resumed = make_trainer("sfron", lora_model(tokenizer, seed=5), tokenizer, tmp_path, **settings)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    new_rows = [r for r in resumed.state.log_history if r.get("step", 0) > 2]  # the history holds steps 1-2 too
    assert new_rows and not any("fisher_seconds" in r for r in new_rows)  # no second Fisher pass
    for name, rows in first.saliency.lora_rows.items():
        assert torch.equal(resumed.saliency.lora_rows[name], rows)

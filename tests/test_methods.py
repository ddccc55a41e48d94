"""Unlearning trainers on the tiny model: losses against hand computations, KL/momentum invariants, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import make_trainer, paired

from llm_unlearn.data.collate import PairedCollator
from llm_unlearn.methods import METHODS, get_method
from llm_unlearn.methods.base import sequence_stats
from llm_unlearn.models import LoraSettings, tiny_llama, wrap_lora


def fixed_batch(tokenizer):
    dataset = paired(tokenizer)
    return PairedCollator(tokenizer.pad_token_id)([dataset[0], dataset[1]])


def hand_nll(model, batch):
    """Per-sample mean NLL over labelled tokens, written out longhand."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    out, sums = [], []
    for b in range(logits.shape[0]):
        terms = []
        for t in range(1, logits.shape[1]):
            label = int(batch["labels"][b, t])
            if label != -100:
                terms.append(-torch.log_softmax(logits[b, t - 1].float(), -1)[label])
        out.append(torch.stack(terms).mean())
        sums.append(-torch.stack(terms).sum())
    return torch.stack(out), torch.stack(sums)


def lora_model(tokenizer, seed=0):
    return wrap_lora(tiny_llama(len(tokenizer), seed=seed), LoraSettings())


def perturb_lora(model, scale=0.05):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


def test_registry_has_every_method():
    assert {"mox", "ga", "grad_diff", "npo", "simnpo", "idk", "task_vector"} <= set(METHODS)
    with pytest.raises(KeyError, match="unknown method 'gradient_ascent'"):
        get_method("gradient_ascent")


def test_sequence_stats_matches_longhand(tokenizer, tiny_model):
    batch = fixed_batch(tokenizer)["forget"]
    logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll, logp, count = sequence_stats(logits, batch["labels"])
    ref_nll, ref_sum = hand_nll(tiny_model, batch)
    assert torch.allclose(nll, ref_nll, atol=1e-5)
    assert torch.allclose(logp, ref_sum, atol=1e-4)
    assert torch.equal(count, (batch["labels"][:, 1:] != -100).sum(-1))


@pytest.mark.parametrize("method", ["ga", "grad_diff", "npo", "simnpo", "idk", "mox", "task_vector"])
def test_loss_matches_hand_computation(method, tokenizer, tmp_path):
    model = lora_model(tokenizer)
    perturb_lora(model)  # so that θ differs from θ_ref and NPO/KL terms are non-trivial
    trainer = make_trainer(method, model, tokenizer, tmp_path)
    batch = fixed_batch(tokenizer)
    loss = trainer.compute_loss(model, batch)
    f_nll, f_logp = hand_nll(model, batch["forget"])
    r_nll, _ = hand_nll(model, batch["retain"])
    with model.disable_adapter():
        _, ref_logp = hand_nll(model, batch["forget"])
        ref_logits = model(
            input_ids=batch["retain"]["input_ids"], attention_mask=batch["retain"]["attention_mask"]
        ).logits
    logits = model(input_ids=batch["retain"]["input_ids"], attention_mask=batch["retain"]["attention_mask"]).logits
    mask = batch["retain"]["labels"][:, 1:] != -100
    p_ref = torch.softmax(ref_logits[:, :-1], -1)
    kl = (p_ref * (torch.log_softmax(ref_logits[:, :-1], -1) - torch.log_softmax(logits[:, :-1], -1))).sum(-1)
    kl = torch.stack([kl[b][mask[b]].mean() for b in range(kl.shape[0])]).mean()
    if method == "ga":
        expected = -f_nll.mean()
    elif method == "grad_diff":
        expected = -f_nll.mean() + r_nll.mean()
    elif method == "npo":
        beta = 0.1
        expected = -(2 / beta) * F.logsigmoid(-beta * (f_logp - ref_logp)).mean() + r_nll.mean()
    elif method == "simnpo":
        beta, gamma = 2.5, 0.0
        expected = -(2 / beta) * F.logsigmoid(beta * f_nll - gamma).mean() + r_nll.mean()
    elif method == "idk":
        refusal_nll, _ = hand_nll(model, batch["refusal"])
        expected = refusal_nll.mean() + r_nll.mean()
    elif method == "mox":
        expected = f_nll.mean() + kl
    else:  # task_vector fine-tunes on the forget set
        expected = f_nll.mean()
    assert torch.allclose(loss, expected, atol=1e-4), (float(loss), float(expected))


def test_retain_kl_is_zero_at_init_and_positive_after_memorizing(tokenizer, tmp_path):
    model = lora_model(tokenizer)  # LoRA B = 0: θ = θ_ref exactly
    trainer = make_trainer("mox", model, tokenizer, tmp_path, num_train_epochs=6, learning_rate=5e-3)
    batch = fixed_batch(tokenizer)
    assert float(trainer.retain_kl(model, batch["retain"])) == 0.0
    before = float(trainer.nll(model, batch["forget"]))
    trainer.train()
    model.eval()
    after = float(trainer.nll(model, batch["forget"]))
    assert after < before  # memorization loss falls
    assert float(trainer.retain_kl(model, batch["retain"])) > 0
    logged = [row for row in trainer.state.log_history if "retain_kl" in row]
    assert logged and all("forget_nll" in row and "loss" in row for row in logged)


def test_lora_mox_holds_no_second_model(tokenizer, tmp_path):
    model = lora_model(tokenizer)
    params_before = sum(p.numel() for p in model.parameters())
    trainer = make_trainer("mox", model, tokenizer, tmp_path)
    assert trainer.ref_model is None
    assert sum(p.numel() for p in trainer.model.parameters()) == params_before
    modules = [m for m in vars(trainer).values() if isinstance(m, torch.nn.Module)]
    assert all(m is model for m in modules)


def test_full_weight_reference_is_required_and_frozen(tokenizer, tmp_path):
    vocab = len(tokenizer)
    with pytest.raises(ValueError, match="needs the reference model"):
        make_trainer("npo", tiny_llama(vocab), tokenizer, tmp_path)
    with pytest.raises(ValueError, match="needs the reference model"):
        make_trainer("grad_diff", tiny_llama(vocab), tokenizer, tmp_path, retain_loss="kl")
    make_trainer("grad_diff", tiny_llama(vocab), tokenizer, tmp_path, retain_loss="nll")  # no reference needed
    trainer = make_trainer("mox", tiny_llama(vocab), tokenizer, tmp_path, ref_model=tiny_llama(vocab))
    assert all(not p.requires_grad for p in trainer.ref_model.parameters())


@pytest.mark.parametrize("bad", [{"alpha": 0.0}, {"alpha": -2.0}, {"alphas": [1.0, 0.0]}])
def test_mox_config_refuses_non_positive_alpha(bad, tmp_path):
    with pytest.raises(ValueError, match="alpha must be > 0"):
        get_method("mox").config(output_dir=str(tmp_path), use_cpu=True, **bad)


def test_config_refuses_unknown_choices(tmp_path):
    with pytest.raises(ValueError, match="retain_loss must be one of"):
        get_method("grad_diff").config(output_dir=str(tmp_path), use_cpu=True, retain_loss="mse")
    with pytest.raises(ValueError, match="forget_loss must be one of"):
        get_method("mox").config(output_dir=str(tmp_path), use_cpu=True, forget_loss="ga")


def test_momentum_buffer_equals_hand_computed_ema(tokenizer, tmp_path):
    model = lora_model(tokenizer)
    eta = 0.675
    trainer = make_trainer("mox", model, tokenizer, tmp_path, momentum=True, momentum_eta=eta, refresh_steps=1)
    from llm_unlearn import extrapolate as xp

    momentum = trainer.momentum
    expected = None
    for k in range(3):
        perturb = torch.Generator().manual_seed(10 + k)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=perturb) * 0.01)
        delta = {n: -d for n, d in xp.lora_deltas(model).items()}
        expected = delta if expected is None else {n: eta * delta[n] + (1 - eta) * expected[n] for n in delta}
        momentum.refresh(step=k + 1)
    assert momentum.refreshes == 3
    worst = max(float((momentum.buffer[n] - expected[n]).abs().max()) for n in expected)
    assert worst < 1e-7


def test_momentum_export_svd_reports_error(tokenizer, tmp_path):
    model = lora_model(tokenizer)
    trainer = make_trainer(
        "mox",
        model,
        tokenizer,
        tmp_path,
        momentum=True,
        momentum_export="svd",
        momentum_refresh="steps",
        svd_rank=8,
        num_train_epochs=2,
        learning_rate=5e-3,
    )
    trainer.train()
    info = trainer.export_unlearned(str(tmp_path / "unlearned"))
    assert info["kind"] == "adapter" and 0 <= info["svd_relative_error"] < 1
    assert info["refreshes"] == trainer.state.global_step
    assert (tmp_path / "unlearned" / "adapter_model.safetensors").is_file()


def test_non_finite_loss_stops_with_step_and_term(tokenizer, tmp_path):
    from llm_unlearn.methods.base import NonFiniteLossError

    trainer = make_trainer("ga", lora_model(tokenizer), tokenizer, tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"step 0: loss term 'forget_nll' = nan.*Last good checkpoint"):
        trainer.record(forget_nll=torch.tensor(math.nan))

"""idk_dpo, undial, wga, satimp and ce_u on the tiny model: each loss and its gradient against a longhand
computation (position by position, written here, not through the methods' modules), with the LoRA adapter
perturbed so that θ ≠ θ_ref; the reference each one needs (or not) over full weights; bad options.

Every trainable parameter moving over LoRA and over full weights, and 2 processes matching 1, are checked
for every registered method by tests/test_param_movement.py and tests/test_methods_distributed.py.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import make_trainer
from test_methods import fixed_batch, hand_nll, lora_model, perturb_lora

from llm_unlearn.methods import get_method
from llm_unlearn.models import tiny_llama

NEW_METHODS = ("idk_dpo", "undial", "wga", "satimp", "ce_u")


def logits_of(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


def per_row_token_mean(batch, term):
    """Mean over rows of the mean over a row's answer tokens of term(row, position, label); position t - 1
    predicts the label at t."""
    rows = []
    for b in range(batch["labels"].shape[0]):
        terms = [
            term(b, t - 1, int(batch["labels"][b, t]))
            for t in range(1, batch["labels"].shape[1])
            if int(batch["labels"][b, t]) != -100
        ]
        rows.append(torch.stack(terms).mean())
    return torch.stack(rows).mean()


def hand_forget_term(method, options, model, batch):
    forget = batch["forget"]
    if method == "idk_dpo":
        beta = options.get("beta", 0.1)
        _, win = hand_nll(model, batch["refusal"])
        _, lose = hand_nll(model, forget)
        with torch.no_grad(), model.disable_adapter():
            _, ref_win = hand_nll(model, batch["refusal"])
            _, ref_lose = hand_nll(model, forget)
        return -(2 / beta) * F.logsigmoid(beta * ((win - ref_win) - (lose - ref_lose))).mean()
    logits = logits_of(model, forget)
    if method == "undial":
        gamma = options.get("gamma", 10.0)
        with torch.no_grad(), model.disable_adapter():
            ref = logits_of(model, forget)

        def term(b, t, label):
            adjusted = ref[b, t].clone()
            adjusted[label] -= gamma
            return -(torch.softmax(adjusted, -1) * torch.log_softmax(logits[b, t], -1)).sum()

    elif method == "ce_u":

        def term(b, t, label):
            target = torch.softmax(logits[b, t].detach(), -1).clone()
            target[label] = 0.0  # the answer token removed, the rest renormalized
            target = target / target.sum()
            return -(target * torch.log_softmax(logits[b, t], -1)).sum()

    else:
        if method == "wga":
            beta = options.get("beta", 1.0)

            def weight(p):
                return p**beta

        else:  # satimp
            beta1, beta2 = options.get("beta1", 5.0), options.get("beta2", 1.0)

            def weight(p):
                return p**beta1 * (1 - p) ** beta2

        def term(b, t, label):
            logp = torch.log_softmax(logits[b, t], -1)[label]
            return weight(logp.detach().exp()) * logp

    return per_row_token_mean(forget, term)


CASES = [
    ("idk_dpo", {}),
    ("idk_dpo", {"beta": 1.0}),
    ("undial", {}),
    ("undial", {"gamma": 3.0}),
    ("wga", {}),
    ("wga", {"beta": 0.1}),
    ("satimp", {}),  # p ≈ 1/vocab on the tiny model: weights near 1e-24, compared relative to their size
    ("satimp", {"beta1": 0.1, "beta2": 2.0}),
    ("ce_u", {}),
]


def assert_close(actual, expected, rel=1e-4):
    scale = float(expected.detach().abs().max())
    assert float((actual - expected).detach().abs().max()) <= rel * scale + 1e-30, (actual, expected)


@pytest.mark.parametrize(("method", "options"), CASES, ids=[f"{m}-{o}" for m, o in CASES])
def test_forget_loss_and_gradient_match_longhand(method, options, tokenizer, tmp_path):
    model = lora_model(tokenizer)
    perturb_lora(model)  # θ ≠ θ_ref, so log-ratios and distillation targets are not trivial
    has_retain = get_method(method).trainer.needs_retain
    # c = 0 leaves the forget term alone in the loss, for its gradient; the retain term is added below.
    trainer = make_trainer(
        method, model, tokenizer, tmp_path, **options, **({"retain_weight": 0.0} if has_retain else {})
    )
    batch = fixed_batch(tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]

    loss = trainer.compute_loss(model, batch)
    grads = torch.autograd.grad(loss, params)
    expected = hand_forget_term(method, options, model, batch)
    expected_grads = torch.autograd.grad(expected, params)

    assert_close(loss, expected)
    assert float(expected.detach().abs()) > 0
    for grad, expected_grad in zip(grads, expected_grads):
        assert float(expected_grad.abs().max()) > 0
        # Looser: on the tiny model p(y) ≈ 1/vocab, and CE-U's logit gradient p − q cancels to that size.
        assert_close(grad, expected_grad, rel=1e-3)
    if has_retain:  # with the default c = 1, the retain NLL is added
        with_retain = make_trainer(method, model, tokenizer, tmp_path, **options).compute_loss(model, batch)
        r_nll, _ = hand_nll(model, batch["retain"])
        assert torch.allclose(with_retain, expected + r_nll.mean(), rtol=1e-5, atol=1e-5)


def test_every_term_is_logged(tokenizer, tmp_path):
    logged = {}
    for method in NEW_METHODS:
        trainer = make_trainer(method, lora_model(tokenizer), tokenizer, tmp_path / method, max_steps=1)
        trainer.train()
        logged[method] = {key for row in trainer.state.log_history for key in row}
    assert {"forget_dpo", "dpo_margin", "forget_nll", "refusal_nll", "retain_nll", "loss"} <= logged["idk_dpo"]
    assert {"forget_undial", "forget_nll", "retain_nll", "loss"} <= logged["undial"]
    assert {"forget_wga", "forget_nll", "retain_nll", "loss"} <= logged["wga"]
    assert {"forget_satimp", "forget_nll", "retain_nll", "loss"} <= logged["satimp"]
    assert {"forget_ce_u", "forget_nll", "loss"} <= logged["ce_u"] and "retain_nll" not in logged["ce_u"]


def test_idk_dpo_at_the_reference_is_its_closed_form(tokenizer, tmp_path):
    """At θ = θ_ref (LoRA B = 0) every log-ratio is 0: the DPO term is (2/β)·log 2 whatever the data."""
    model = lora_model(tokenizer)  # peft's default init: B = 0
    trainer = make_trainer("idk_dpo", model, tokenizer, tmp_path, beta=0.5, retain_weight=0.0)
    loss = trainer.compute_loss(model, fixed_batch(tokenizer))
    assert abs(loss.item() - (2 / 0.5) * torch.log(torch.tensor(2.0)).item()) < 1e-5


@pytest.mark.parametrize("method", ["idk_dpo", "undial"])
def test_full_weights_need_a_reference_copy(method, tokenizer, tmp_path):
    vocab = len(tokenizer)
    with pytest.raises(ValueError, match="needs the reference model"):
        make_trainer(method, tiny_llama(vocab), tokenizer, tmp_path)
    trainer = make_trainer(method, tiny_llama(vocab), tokenizer, tmp_path, ref_model=tiny_llama(vocab))
    assert trainer.ref_model is not None and all(not p.requires_grad for p in trainer.ref_model.parameters())


@pytest.mark.parametrize("method", ["wga", "satimp", "ce_u"])
def test_reference_free_methods_load_no_reference(method, tokenizer, tmp_path):
    trainer = make_trainer(method, tiny_llama(len(tokenizer)), tokenizer, tmp_path)
    assert not trainer.uses_reference() and trainer.ref_model is None
    spec = get_method(method)
    if spec.trainer.needs_retain:  # a KL retain term is the one setting that brings θ_ref in
        assert spec.trainer.wants_reference(spec.config(output_dir=str(tmp_path), use_cpu=True, retain_loss="kl"))


@pytest.mark.parametrize(
    ("method", "bad", "message"),
    [
        ("idk_dpo", {"beta": 0.0}, "beta must be > 0, not 0.0"),
        ("idk_dpo", {"beta": -0.1}, "beta must be > 0, not -0.1"),
        ("undial", {"gamma": 0.0}, r"gamma must be > 0 \(the logit penalty on the forget-answer token\), not 0.0"),
        ("wga", {"beta": 0.0}, "beta must be > 0, not 0.0"),
        ("satimp", {"beta1": -1.0}, "beta1 must be >= 0, not -1.0"),
        ("satimp", {"beta2": -0.5}, "beta2 must be >= 0, not -0.5"),
        ("idk_dpo", {"retain_loss": "mse"}, "retain_loss must be one of"),
    ],
)
def test_bad_options_are_refused_at_config_parsing(method, bad, message, tmp_path):
    with pytest.raises(ValueError, match=message) as err:
        get_method(method).config(output_dir=str(tmp_path), use_cpu=True, **bad)
    assert "\n" not in str(err.value)


def test_ce_u_takes_no_retain_options(tmp_path):
    with pytest.raises(TypeError, match="retain_weight"):
        get_method("ce_u").config(output_dir=str(tmp_path), use_cpu=True, retain_weight=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["wga", "satimp", "ce_u"])
def test_token_weighted_losses_unlearn_on_smollm2(method, smollm2, tokenizer, tofu_dir, tmp_path):
    """The tiny model's p(y) ≈ 1/vocab leaves these forget terms near zero; on the real model, far from uniform,
    two LoRA steps of the forget term alone (c = 0) raise the forget NLL (printed: pytest -s)."""
    from helpers import paired
    from test_slow_smollm2 import mean_nll

    from llm_unlearn.data.tofu import load_tofu_split
    from llm_unlearn.models import LoraSettings, load_model, wrap_lora

    forget = load_tofu_split(str(tofu_dir), "forget01")[:2]
    retain = load_tofu_split(str(tofu_dir), "retain99")[:2]
    before = mean_nll(smollm2, tokenizer, forget)
    model = wrap_lora(load_model("smollm2-135m-instruct"), LoraSettings())
    no_retain = {"retain_weight": 0.0} if get_method(method).trainer.needs_retain else {}
    trainer = make_trainer(
        method, model, tokenizer, tmp_path, dataset=paired(tokenizer, forget, retain), max_steps=2, **no_retain
    )
    trainer.train()
    after = mean_nll(model, tokenizer, forget)
    print(f"\n{method}: forget NLL {before:.3f} -> {after:.3f}")
    assert after > before + 0.05
